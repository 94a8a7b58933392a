"""``kadam norms``: find a network's scale-invariant tensors, train it, and compare their norms with THEORY §4.

Lists the tensors that :func:`kadam.normalization.find_scale_invariant` measures scale-invariant, trains
the MLP of the task on digits with mini-batches while a :class:`kadam.normalization.NormTracker` follows
the invariant hidden weights, and prints per layer the measured norm and angular update after the
transient against the corrected (momentum-correlation) and orthogonal (the paper's) predictions.
``--plot`` draws both over training; ``--json`` prints everything as JSON instead.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kadam.cli.options import (
    Stages,
    add_threads_option,
    command,
    decay,
    int_at_least,
    nonnegative_float,
    output_figure,
    positive_float,
    torch_threads,
)

TASKS = {"digits-bn": "batch", "digits-ln": "layer"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "norms",
        help="scale-invariant tensors: measured norms and angular updates against THEORY §4's predictions",
        description=(
            "Find the scale-invariant tensors of an MLP with BatchNorm (digits-bn) or LayerNorm (digits-ln), "
            "train it on scikit-learn's digits, and compare per-layer norms and angular updates with the "
            "corrected and the orthogonal predictions (THEORY §4 in docs/theory.md)."
        ),
    )
    parser.add_argument("--task", choices=sorted(TASKS), default="digits-bn", help="model and data (default digits-bn)")
    parser.add_argument(
        "--optimizer",
        choices=("adamw", "adam"),
        default="adamw",
        help="torch AdamW or Adam (Adam: no weight decay; default adamw)",
    )
    parser.add_argument("--lr", type=positive_float, default=1e-2, help="learning rate eta > 0 (default 1e-2)")
    parser.add_argument(
        "--weight-decay",
        type=nonnegative_float,
        default=0.1,
        help="AdamW's lambda >= 0 with lr * weight_decay < 1 (default 0.1; ignored by adam)",
    )
    parser.add_argument("--beta", type=decay, default=0.9, help="first-moment decay in [0, 1) (default 0.9)")
    parser.add_argument("--steps", type=int_at_least(10), default=3000, help="training steps >= 10 (default 3000)")
    parser.add_argument("--batch-size", type=int_at_least(2), default=32, help="mini-batch size >= 2 (default 32)")
    parser.add_argument("--hidden", type=int_at_least(1), default=64, help="hidden width >= 1 (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order (default 0)")
    parser.add_argument(
        "--plot",
        type=output_figure,
        metavar="PNG",
        help="draw per-layer norms and angular updates to this figure (.png, .pdf, .svg, …)",
    )
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_threads_option(parser)
    command(parser, run, _check)


def _check(args: argparse.Namespace) -> None:
    """What argparse's per-option types cannot see: conditions on two options together."""
    if not args.lr * args.weight_decay < 1:
        raise ValueError(
            f"argument --weight-decay: must satisfy --lr * --weight-decay < 1, got {args.lr} * {args.weight_decay}"
        )
    if args.optimizer == "adamw" and args.weight_decay == 0:
        raise ValueError("argument --weight-decay: must be > 0 for adamw (use --optimizer adam for no decay)")


def _percent(value: float) -> str:
    return f"{100 * value:+.1f}%"


def _print_tables(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from kadam.normalization.detection import ScaleInvarianceReport

    console = Console()
    console.print(ScaleInvarianceReport.from_dict(result["detection"]))
    console.print(f"tracked (invariant, explained by structure): {', '.join(result['tracked']) or 'none'}")
    tau = result["relaxation_steps"]
    console.print(
        f"{result['task']}, {result['optimizer']}, lr {result['lr']}, weight decay {result['weight_decay']}, "
        f"{result['steps']} steps; relaxation time {'none (no decay)' if tau is None else f'{tau:.0f} steps'}; "
        f"compared after step {result['window_start']:.0f}; test accuracy {result['test_accuracy']:.3f}"
    )
    table = Table(title="RMS after the transient: measured vs predicted (relative error)")
    for column in ("layer", "quantity", "measured", "corrected", "orthogonal", "equilibrium corr. / orth."):
        table.add_column(column)
    for layer in result["layers"]:
        for quantity, label, error in (
            ("norm", "|W|", "norm_error"),
            ("angular_update", "angle/step", "angular_error"),
        ):
            equilibrium = [
                layer.get(f"{assumption}_equilibrium_{quantity}") for assumption in ("corrected", "orthogonal")
            ]
            table.add_row(
                f"{layer['name']} (d={layer['d']})",
                label,
                f"{layer[f'measured_{quantity}']:.4g}",
                *(
                    f"{layer[f'{a}_{quantity}']:.4g} ({_percent(layer[f'{a}_{error}'])})"
                    for a in ("corrected", "orthogonal")
                ),
                "—" if equilibrium[0] is None else f"{equilibrium[0]:.4g} / {equilibrium[1]:.4g}",
            )
    console.print(table)


def run(args: argparse.Namespace) -> int:
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    stages = Stages("norms", 1 if args.plot is None else 2)
    stages.start(f"finding the scale-invariant tensors and training {args.task}, {args.steps} steps")
    from kadam.experiments.normalization.plots import plot_digits_norms
    from kadam.experiments.normalization.protocol import digits_norms

    with Progress(transient=True, disable=args.json) as progress:
        task = progress.add_task(f"training {args.task}", total=args.steps)
        result = digits_norms(
            norm=TASKS[args.task],
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=args.weight_decay,
            steps=args.steps,
            batch_size=args.batch_size,
            hidden=args.hidden,
            betas=(args.beta, 0.999),
            seed=args.seed,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    if args.plot:
        stages.start(f"drawing {args.plot}")
        plot_digits_norms([result], str(args.plot))
    stages.done()
    if args.json:
        print(json.dumps(result))
    else:
        _print_tables(result)
        if args.plot:
            print(f"figure: {args.plot}")
    return 0
