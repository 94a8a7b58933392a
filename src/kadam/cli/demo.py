"""``kadam demo``: train one small model with Adam, AdamW and 2-Adam and print the losses.

A one-minute look at the optimizer, not evidence: ``kadam reproduce`` runs the tuned, multi-seed
comparison. Every optimizer trains the same model from the same seed on the same batches
(:func:`kadam.experiments.training.protocol.train_run`), at one shared learning rate.
"""

from __future__ import annotations

import argparse

from kadam.cli.options import Stages, add_threads_option, command, int_at_least, positive_float, torch_threads

DEMO_OPTIMIZERS = ("adam", "adamw", "kadam2")
DEMO_TASKS = {
    "digits-cnn-bn": {"channels": 8},
    "digits-cnn": {"channels": 8},
    "mnist1d-mlp": {"hidden": 64, "depth": 2},
    "char-transformer": {"corpus_chars": 60_000, "context": 32, "width": 32, "heads": 2, "layers": 2},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train a small model with Adam, AdamW and 2-Adam and print the losses",
        description="Train one small model with Adam, AdamW and 2-Adam (same seed, same batches, one shared learning "
        "rate) and print the losses. A demo, not evidence: `kadam reproduce` runs the tuned comparison.",
    )
    parser.add_argument("--task", choices=sorted(DEMO_TASKS), default="mnist1d-mlp", help="model and data (offline)")
    parser.add_argument("--steps", type=int_at_least(1), default=500, help="training steps >= 1 (default 500)")
    parser.add_argument(
        "--lr", type=positive_float, default=1e-3, help="learning rate > 0 shared by all three (default 1e-3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    add_threads_option(parser)
    command(parser, run_demo)


def run_demo(args: argparse.Namespace) -> int:
    with torch_threads(args.threads):
        return _run_demo(args)


def _run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kadam.experiments.training.protocol import train_run
    from kadam.experiments.workloads import OPTIMIZERS

    stages = Stages("demo", len(DEMO_OPTIMIZERS))
    console = Console()
    table = Table(title=f"kadam demo: {args.task}, {args.steps} steps, lr {args.lr:g}, seed {args.seed}")
    for column in (
        "optimizer",
        "first train loss",
        "last train loss",
        "validation loss",
        "validation accuracy",
        "seconds",
    ):
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    with console.status("training…"):
        for name in DEMO_OPTIMIZERS:
            stages.start(f"training {args.task} with {name}, {args.steps} steps")
            run = train_run(args.task, name, args.lr, args.steps, 32, args.seed, DEMO_TASKS[args.task], curve_points=10)
            cells = [
                run["train_loss_curve"][0],
                run["train_loss_curve"][-1],
                run["validation_loss"],
                run["validation_accuracy"],
            ]
            table.add_row(
                name,
                *("diverged" if value is None else f"{value:.4f}" for value in cells),
                f"{run['seconds']:.1f}",
            )
    stages.done()
    console.print(table)
    for name in DEMO_OPTIMIZERS:
        console.print(f"  {name}: {OPTIMIZERS[name].description}")
    console.print("One seed, one learning rate: a demo, not a comparison. `kadam reproduce` tunes and tests properly.")
    return 0
