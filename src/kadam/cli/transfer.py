"""``kadam transfer``: new (β, γ), lr, steps… when the learning rate or the batch size changes (THEORY §6)."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

from kadam.transfer import RATES, Hyperparameters, Transfer, transfer_batch_size, transfer_lr

RULES = {
    "lr-exact": "learning rate, exact rates (THEORY §6): beta -> beta**c, gamma -> gamma**c at every level, "
                "lr -> c lr, steps -> steps / c, weight decay and eps kept",
    "lr-paper": "learning rate, paper rates (THEORY §6): (1 - beta)/beta -> c (1 - beta)/beta at every level, "
                "lr -> c lr, steps -> steps / c, weight decay and eps kept",
    "batch-sqrt": "batch size, square-root rule (Malladi et al. 2022, THEORY §6): lr -> sqrt(k) lr, "
                  "1 - beta -> k (1 - beta), 1 - gamma -> k (1 - gamma), eps -> eps / sqrt(k), steps -> steps / k",
}


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "transfer",
        help="transfer (beta, gamma), lr and steps to a new learning rate or batch size",
        description="Learning rate (--factor or --to-lr): keep the continuous model's trajectory (THEORY §6). "
        "Batch size (--batch-size with --to-batch-size or --factor): the square-root rule of Malladi et al. "
        "(2022). Prints the new hyperparameters, the rule, the alternatives (naive / linear / unchanged) and "
        "whether every new (beta, gamma) stays in the stable region gamma > beta**2.",
    )
    parser.add_argument("--lr", type=_float, required=True, help="current learning rate")
    parser.add_argument("--betas", type=_float, nargs="+", default=[0.9, 0.999], metavar="B",
                        help="current (beta, gamma), or 2k numbers for the k levels of k-Adam (default 0.9 0.999)")
    parser.add_argument("--weight-decay", type=_float, default=0.0, help="current weight decay (default 0)")
    parser.add_argument("--eps", type=_float, default=1e-8, help="current eps (default 1e-8)")
    parser.add_argument("--steps", type=int, help="current number of steps (scaled with the rule)")
    parser.add_argument("--factor", type=_float, help="lr factor c, or batch factor k with --batch-size")
    parser.add_argument("--to-lr", type=_float, help="new learning rate (instead of --factor)")
    parser.add_argument("--batch-size", type=int, help="current batch size: transfer across batch sizes")
    parser.add_argument("--to-batch-size", type=int, help="new batch size (instead of --factor)")
    parser.add_argument("--rates", choices=RATES, default="exact", help="moment rates of the lr rule (default exact)")
    parser.add_argument("--coupled", action="store_true", help="Adam's coupled L2 decay (default: AdamW's decoupled)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _pairs(values: list[float]) -> list[tuple[float, float]]:
    if len(values) % 2:
        raise ValueError(f"--betas takes (beta, gamma) pairs, one per level: an even count of numbers, got {values}")
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def _compute(args: argparse.Namespace) -> Transfer:
    pairs = _pairs(args.betas)
    betas: Any = pairs[0] if len(pairs) == 1 else pairs
    if args.batch_size is not None or args.to_batch_size is not None:
        if args.to_lr is not None:
            raise ValueError("--to-lr cannot be combined with a batch-size transfer (the rule sets the lr)")
        if args.batch_size is None:
            raise ValueError("--to-batch-size needs --batch-size")
        return transfer_batch_size(args.lr, betas, args.batch_size, args.weight_decay, args.steps, args.factor,
                                   to_batch_size=args.to_batch_size, eps=args.eps,
                                   decoupled_weight_decay=not args.coupled)
    return transfer_lr(args.lr, betas, args.weight_decay, args.steps, args.factor, to_lr=args.to_lr,
                       rates=args.rates, eps=args.eps)


def _row(name: str, settings: Hyperparameters) -> str:
    betas = "  ".join(f"({b:.6g}, {g:.6g})" for b, g in settings.betas)
    parts = [f"lr {settings.lr:.6g}", f"betas {betas}", f"eps {settings.eps:.3g}", f"weight decay {settings.weight_decay:.6g}"]
    if settings.steps is not None:
        parts.append(f"steps {settings.steps}")
    if settings.batch_size is not None:
        parts.append(f"batch {settings.batch_size}")
    return f"  {name:<10} " + ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the stability lines below say the same
        result = _compute(args)
    if args.json:
        print(json.dumps({**result.to_dict(), "stable": result.stable, "description": RULES[result.rule]}, indent=2))
        return 0
    print(f"rule: {result.rule} (factor {result.factor:.6g})")
    print(f"  {RULES[result.rule]}")
    print(_row("from", result.source))
    print(_row("to", result.target))
    for name, settings in result.alternatives.items():
        print(_row(name, settings) + "   (for comparison)")
    for note in result.notes:
        print(f"  note: {note}")
    for level in result.stability:
        if level.stable:
            print(f"stability: level {level.level} ({level.beta:.6g}, {level.gamma:.6g}) inside gamma > beta**2 "
                  f"(margin {level.margin:.4g})")
        else:
            beta, gamma = level.nearest_stable
            print(f"stability: WARNING level {level.level} ({level.beta:.6g}, {level.gamma:.6g}) is OUTSIDE gamma > "
                  f"beta**2 (margin {level.margin:.4g}); nearest stable pair ({beta:.6g}, {gamma:.6g})")
    return 0
