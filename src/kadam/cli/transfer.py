"""``kadam transfer``: new (β, γ), lr, steps… when the learning rate or the batch size changes (THEORY §6).

Every value is checked before the rule runs (:func:`check`): each option's range, the options that go
together, and the result itself, which must stay representable in float64: every new decay below 1 (a
factor too small rounds ``β^c`` or ``1 − κ(1 − β)`` to 1) and every new number finite (a factor too large
overflows the lr). A message names the option and the range it accepts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

from kadam.cli.options import (
    available_cores,
    command,
    decay,
    int_at_least,
    nonnegative_float,
    output_directory,
    positive_float,
)
from kadam.cli.region import ON_BOUNDARY
from kadam.vocabulary import BATCH_RULES, PROFILES
from kadam.vocabulary import FLOW_RATES as RATES

RULES = {
    "lr-exact": "learning rate, exact rates (THEORY §6): beta -> beta**c, gamma -> gamma**c at every level, "
    "lr -> c lr, steps -> steps / c, weight decay and eps kept",
    "lr-paper": "learning rate, paper rates (THEORY §6): (1 - beta)/beta -> c (1 - beta)/beta at every level, "
    "lr -> c lr, steps -> steps / c, weight decay and eps kept",
}
MAX_STEPS = 2**53
"""The largest --steps: steps / factor is computed in float64, exact for integers up to 2**53."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "transfer",
        help="transfer (beta, gamma), lr and steps to a new learning rate or batch size",
        description="Learning rate (--factor or --to-lr): keep the continuous model's trajectory (THEORY §6). "
        "Batch size (--batch-size with --to-batch-size or --factor): the square-root rule of Malladi et al. "
        "(2022). Prints the new hyperparameters, the rule, the alternatives (naive / linear / unchanged) and "
        "whether every new (beta, gamma) lies inside the stable region gamma > beta**2.",
    )
    parser.add_argument("--lr", type=positive_float, help="current learning rate > 0 (required unless --study)")
    parser.add_argument(
        "--betas",
        type=decay,
        nargs="+",
        default=[0.9, 0.999],
        metavar="B",
        help="current (beta, gamma), each in [0, 1), or 2k numbers for the k levels of k-Adam (default 0.9 0.999)",
    )
    parser.add_argument(
        "--weight-decay", type=nonnegative_float, default=0.0, help="current weight decay >= 0 (default 0)"
    )
    parser.add_argument("--eps", type=nonnegative_float, default=1e-8, help="current eps >= 0 (default 1e-8)")
    parser.add_argument("--steps", type=int_at_least(1), help="current number of steps >= 1 (scaled with the rule)")
    parser.add_argument(
        "--factor", type=positive_float, help="lr factor c > 0, or batch factor k > 0 with --batch-size"
    )
    parser.add_argument("--to-lr", type=positive_float, help="new learning rate > 0 (instead of --factor)")
    parser.add_argument(
        "--batch-size", type=int_at_least(1), help="current batch size >= 1: transfer across batch sizes"
    )
    parser.add_argument("--to-batch-size", type=int_at_least(1), help="new batch size >= 1 (instead of --factor)")
    parser.add_argument(
        "--rule",
        choices=tuple(BATCH_RULES),
        help="batch-size rule (default: the one with the lowest measured regret in the committed study)",
    )
    parser.add_argument("--rates", choices=RATES, default="exact", help="moment rates of the lr rule (default exact)")
    parser.add_argument("--coupled", action="store_true", help="Adam's coupled L2 decay (default: AdamW's decoupled)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    study = parser.add_argument_group("the batch-size study (instead of a transfer)")
    study.add_argument(
        "--study",
        action="store_true",
        help="run the batch-size study (every rule's regret against the tuned optimum; cached, resumable) and "
        "write its report under --out",
    )
    study.add_argument("--out", type=output_directory, metavar="DIR", help="the study's output folder (cache inside)")
    study.add_argument("--profile", choices=PROFILES, default="full", help="the study's sizes (default full)")
    study.add_argument("--jobs", type=int_at_least(1), default=available_cores(), help="worker processes")
    command(parser, run, check)


def _pairs(values: list[float]) -> list[tuple[float, float]]:
    if len(values) % 2:
        raise ValueError(
            f"argument --betas: takes (beta, gamma) pairs, one per level: an even count of numbers, got {len(values)}"
        )
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def _batch_mode(args: argparse.Namespace) -> bool:
    return args.batch_size is not None or args.to_batch_size is not None


def _smallest_factor(new_decay: Callable[[float], float]) -> float:
    """The smallest factor whose ``new_decay(factor)`` is below 1 in float64 (``new_decay`` falls as the
    factor grows and is below 1 at factor 1), to three significant digits, rounded up."""
    low, high = math.log(sys.float_info.min), 0.0  # new_decay(e**low) rounds to 1 whenever the bound matters
    if new_decay(math.exp(low)) < 1.0:
        return 0.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (low, middle) if new_decay(math.exp(middle)) < 1.0 else (middle, high)
    exponent = math.floor(math.log10(math.exp(high))) - 2
    return float(f"{math.ceil(math.exp(high) / 10.0**exponent)}e{exponent}")  # up to three significant digits


def _factor(args: argparse.Namespace) -> tuple[float, str]:
    """The rule's factor and the option it comes from; both/neither of the two ways to give it is an error."""
    if _batch_mode(args):
        if args.to_lr is not None:
            raise ValueError("argument --to-lr: not allowed with a batch-size transfer (the batch rule sets the lr)")
        if args.batch_size is None:
            raise ValueError("argument --to-batch-size: needs --batch-size (the current batch size)")
        if (args.factor is None) == (args.to_batch_size is None):
            raise ValueError("argument --factor: give exactly one of --factor and --to-batch-size")
        if args.factor is not None:
            return args.factor, "--factor"
        return args.to_batch_size / args.batch_size, "--to-batch-size"
    if (args.factor is None) == (args.to_lr is None):
        raise ValueError(
            "argument --factor: give exactly one of --factor and --to-lr (or --batch-size for a batch-size transfer)"
        )
    if args.factor is not None:
        return args.factor, "--factor"
    factor = args.to_lr / args.lr
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(
            f"argument --to-lr: --to-lr / --lr must be a positive finite number in float64, "
            f"got {args.to_lr:g} / {args.lr:g} = {factor:g}"
        )
    return factor, "--to-lr"


def _new_decay(args: argparse.Namespace, decay_value: float, factor: float, name: str = "gamma") -> float:
    """The rule's new decay (:mod:`kadam.transfer`'s formulas)."""
    if _batch_mode(args):
        if args.resolved_rule == "sqrt":
            return 1.0 - factor * (1.0 - decay_value)
        if args.resolved_rule.endswith("+half-life") and name == "gamma":
            return decay_value**factor
        return decay_value
    if args.rates == "exact":
        return decay_value**factor
    return decay_value / (decay_value + factor * (1.0 - decay_value))


def _resolve_rule(args: argparse.Namespace, pairs: list[tuple[float, float]], factor: float) -> None:
    """``args.resolved_rule``: ``--rule``, or the rule with the lowest measured regret (``args.recommendation``)."""
    args.recommendation = None
    args.resolved_rule = args.rule
    if not _batch_mode(args) or args.rule is not None:
        return
    from kadam.transfer import recommend_batch_rule

    sqrt_invalid = any(d != 0.0 and factor * (1.0 - d) > 1.0 for pair in pairs for d in pair)
    try:
        args.recommendation = recommend_batch_rule(factor, exclude=("sqrt",) if sqrt_invalid else ())
    except ValueError as error:
        raise ValueError(f"argument --rule: {error}") from None
    args.resolved_rule = args.recommendation.rule


def check(args: argparse.Namespace) -> None:
    """Every condition the rule needs, with the option to change and its accepted range; then the result
    itself (every number finite), so that a command that passes prints only usable values."""
    if args.study:
        if args.out is None:
            raise ValueError("argument --out: required with --study (the study's output folder)")
        return
    if args.lr is None:
        raise ValueError("argument --lr: required (the current learning rate), unless --study")
    if args.rule is not None and not _batch_mode(args):
        raise ValueError("argument --rule: only for a batch-size transfer (give --batch-size)")
    pairs = _pairs(args.betas)
    factor, source = _factor(args)
    _resolve_rule(args, pairs, factor)
    if args.steps is not None and args.steps > MAX_STEPS:
        raise ValueError(f"argument --steps: must be an integer in [1, 2**53], got {args.steps}")
    what = (
        "--to-batch-size / --batch-size"
        if source == "--to-batch-size"
        else ("--to-lr / --lr" if source == "--to-lr" else "--factor")
    )
    decays = [
        (level, name, value)
        for level, pair in enumerate(pairs, start=1)
        for name, value in zip(("beta", "gamma"), pair)
        if value != 0.0
    ]  # 0 stays 0 under every rule
    for level, name, value in decays:
        if _batch_mode(args) and args.resolved_rule == "sqrt" and factor * (1.0 - value) > 1.0:
            raise ValueError(
                f"argument {source}: the square-root rule needs factor * (1 - {name}) <= 1 at every level; "
                f"level {level} has {name} = {value:g}, so {what} must be <= {1.0 / (1.0 - value):.6g}, "
                f"got {factor:.6g}"
            )
    if any(not _new_decay(args, value, factor, name) < 1.0 for _, name, value in decays):
        smallest, level, name, value = max(
            (_smallest_factor(lambda c, v=value, n=name: _new_decay(args, v, c, n)), level, name, value)
            for level, name, value in decays
        )
        formula = (
            "1 - factor * (1 - {0})"
            if _batch_mode(args) and args.resolved_rule == "sqrt"
            else "{0}**factor"
            if _batch_mode(args) or args.rates == "exact"
            else "{0} / ({0} + factor * (1 - {0}))"
        ).format(name)
        raise ValueError(
            f"argument {source}: too small for float64: below {smallest:g}, level {level}'s {formula} ({name} = "
            f"{value:g}) rounds to 1; {what} must be >= {smallest:g} for these betas, got {factor:.6g}"
        )
    largest = _largest_factor(args)
    if factor > largest:
        raise ValueError(
            f"argument {source}: too large for float64: a new lr would overflow; {what} must be <= "
            f"{largest:.3g} with --lr {args.lr:g}"
            + (f" and --weight-decay {args.weight_decay:g}" if args.weight_decay else "")
            + f", got {factor:g}"
        )
    if args.steps is not None and not args.steps / factor <= MAX_STEPS:
        raise ValueError(
            f"argument {source}: too small for --steps {args.steps}: steps / factor must stay <= 2**53, so "
            f"{what} must be >= {args.steps / MAX_STEPS:.3g}, got {factor:g}"
        )
    if _batch_mode(args):
        new_batch = args.batch_size * factor
        if abs(new_batch - round(new_batch)) > 1e-9 or not 1 <= round(new_batch) <= MAX_STEPS:
            raise ValueError(
                f"argument {source}: --batch-size * {what} must be a whole number in [1, 2**53], got "
                f"{args.batch_size} * {factor:.6g} = {new_batch:.6g}"
            )
    result = _compute(args)
    for name, settings in (("new", result.target), *([] if _batch_mode(args) else result.alternatives.items())):
        for quantity, value in (("lr", settings.lr), ("eps", settings.eps), ("weight decay", settings.weight_decay)):
            if not math.isfinite(value) or (quantity == "lr" and value <= 0.0):
                label = "new" if name == "new" else f"{name} alternative's"
                raise ValueError(
                    f"argument {source}: {what} = {factor:g} makes the {label} {quantity} {value:g} "
                    f"in float64; it must stay {'positive and ' if quantity == 'lr' else ''}finite"
                )


def _largest_factor(args: argparse.Namespace) -> float:
    """The largest factor whose new lr (and the alternatives' lr, and the new weight decay) stay finite."""
    largest = sys.float_info.max / args.lr  # lr * c (lr rule, naive, linear)
    if _batch_mode(args) and args.weight_decay > 0:  # weight_decay * sqrt(k) (sqrt) or * k (power-lines)
        root = sys.float_info.max / args.weight_decay
        largest = min(
            largest, root if args.resolved_rule == "power-lines" else root * root if root < 1e154 else math.inf
        )
    return largest * (1 - 1e-12)


def _compute(args: argparse.Namespace) -> Any:
    from kadam.transfer import transfer_batch_size, transfer_lr

    pairs = _pairs(args.betas)
    betas: Any = pairs[0] if len(pairs) == 1 else pairs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the stability lines of the output say the same
        if _batch_mode(args):
            return transfer_batch_size(
                args.lr,
                betas,
                args.batch_size,
                args.weight_decay,
                args.steps,
                args.factor,
                to_batch_size=args.to_batch_size,
                rule=args.resolved_rule,
                eps=args.eps,
                decoupled_weight_decay=not args.coupled,
            )
        return transfer_lr(
            args.lr, betas, args.weight_decay, args.steps, args.factor, to_lr=args.to_lr, rates=args.rates, eps=args.eps
        )


def _decay(value: float) -> str:
    """A decay to 6 significant digits, or to as many as it takes not to read as 1."""
    text = f"{value:.6g}"
    return text if text != "1" else f"{value:.17g}"


def _row(name: str, settings: Any) -> str:
    betas = "  ".join(f"({_decay(b)}, {_decay(g)})" for b, g in settings.betas)
    parts = [
        f"lr {settings.lr:.6g}",
        f"betas {betas}",
        f"eps {settings.eps:.3g}",
        f"weight decay {settings.weight_decay:.6g}",
    ]
    if settings.steps is not None:
        parts.append(f"steps {settings.steps}")
    if settings.batch_size is not None:
        parts.append(f"batch {settings.batch_size}")
    return f"  {name:<17} " + ", ".join(parts)


def stability_line(level: Any) -> str:
    """One level's place with respect to the stable region γ > β² (strict: the boundary is not inside)."""
    pair = f"({_decay(level.beta)}, {_decay(level.gamma)})"
    if abs(level.margin) <= ON_BOUNDARY:
        if level.beta == 0.0 and level.gamma == 0.0:
            return (
                f"stability: level {level.level} {pair} on the boundary gamma = beta**2 (margin {level.margin:.4g}): "
                "with beta = gamma = 0 the update is sign(gradient), bounded by 1"
            )
        nearest = (
            ""
            if level.nearest_stable is None
            else f"; nearest stable pair ({level.nearest_stable[0]:.6g}, {level.nearest_stable[1]:.6g})"
        )
        return (
            f"stability: WARNING level {level.level} {pair} is ON the boundary gamma = beta**2 (margin "
            f"{level.margin:.4g}), not inside: the worst-case update grows without bound{nearest}"
        )
    if level.stable:
        return f"stability: level {level.level} {pair} inside gamma > beta**2 (margin {level.margin:.4g})"
    beta, gamma = level.nearest_stable
    return (
        f"stability: WARNING level {level.level} {pair} is OUTSIDE gamma > beta**2 (margin {level.margin:.4g}); "
        f"nearest stable pair ({beta:.6g}, {gamma:.6g})"
    )


def _evidence(args: argparse.Namespace, factor: float) -> Any:
    """The committed study's evidence at the studied factor nearest to ``factor`` (batch mode), else ``None``."""
    if not _batch_mode(args):
        return None
    if args.recommendation is not None:
        return args.recommendation
    from kadam.transfer import recommend_batch_rule

    try:
        return recommend_batch_rule(factor)
    except ValueError:  # no packaged evidence: the named rule is printed without it
        return None


def _evidence_lines(args: argparse.Namespace, evidence: Any, rule: str) -> list[str]:
    """Why this rule, and every rule's measured regret at the nearest studied factor, with intervals."""
    studied = f"×{evidence.studied_factor:g}"
    why = (
        f"  why: the lowest measured regret at {studied} in the committed study"
        if args.rule is None
        else f"  why: chosen with --rule (the lowest measured regret at {studied} is {evidence.rule})"
    )
    lines = [
        why,
        f"  evidence: {evidence.source}; equal {evidence.regime} seen; {', '.join(evidence.workloads)}; "
        f"{evidence.seeds} paired seeds",
        f"  regret at {studied}: final test loss at the rule's hyperparameters minus at the tuned optimum at the new "
        "batch size, mean [95% interval] per workload; relative: over the loss the optimum removes",
    ]
    for item in evidence.ranked:
        marker = "->" if item.rule == rule else "  "
        rows = ", ".join(
            f"{row['workload']} {row['regret']:+.3g} [{row['low']:+.3g}, {row['high']:+.3g}] {row['verdict']}"
            for row in item.rows
        )
        lines.append(f"  {marker} {item.rule:<18} relative {item.relative:+.1%}: {rows}")
    if evidence.indistinguishable:
        lines.append(
            f"  note: at this budget {evidence.rule} is not distinguishable from "
            f"{', '.join(evidence.indistinguishable)} (their regret intervals overlap its own on every workload)"
        )
    if not evidence.inside:
        lines.append(
            f"  WARNING: factor {evidence.factor:g} lies outside the studied factors; the evidence is from {studied}, "
            "the nearest: no rule's regret was measured this far"
        )
    elif evidence.factor != evidence.studied_factor:
        lines.append(f"  note: factor {evidence.factor:g} was not studied; the evidence is from {studied}, the nearest")
    return lines


def run_study(args: argparse.Namespace) -> int:
    from kadam.cli.interrupts import signals_stop_workers
    from kadam.experiments.transfer.section import run_batch_study

    with signals_stop_workers():
        run_batch_study(args.profile, args.out, args.jobs, "kadam " + " ".join(sys.argv[1:]))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.study:
        return run_study(args)
    result = _compute(args)
    description = RULES.get(result.rule) or BATCH_RULES[result.rule.removeprefix("batch-")]
    evidence = _evidence(args, result.factor)
    if args.json:
        printed = {**result.to_dict(), "stable": result.stable, "description": description}
        if evidence is not None:
            printed["evidence"] = evidence.to_dict()
        print(json.dumps(printed, indent=2))
        return 0
    print(f"rule: {result.rule} (factor {result.factor:.6g})")
    print(f"  {description}")
    print(_row("from", result.source))
    print(_row("to", result.target))
    for name, settings in result.alternatives.items():
        print(_row(name, settings) + "   (for comparison)")
    for note in result.notes:
        print(f"  note: {note}")
    if evidence is not None:
        for line in _evidence_lines(args, evidence, result.rule.removeprefix("batch-")):
            print(line)
    for level in result.stability:
        print(stability_line(level))
    return 0
