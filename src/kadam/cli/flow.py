"""``kadam flow``: the continuous model (THEORY §3) against the discrete optimizer on one problem."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kadam.cli.options import (
    Stages,
    add_threads_option,
    command,
    int_at_least,
    output_figure,
    positive_float,
    torch_threads,
)
from kadam.vocabulary import FLOW_PROBLEMS as PROBLEMS
from kadam.vocabulary import FLOW_RATES as RATES
from kadam.vocabulary import MODIFIED_ORDERS as ORDERS

COORDINATES_SHOWN = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "flow",
        help="simulate the continuous-time model and compare it with discrete Adam/AdamW/k-Adam",
        description="Integrate the ODE of THEORY §3 (docs/theory.md) for KAdam's hyperparameters and compare it, "
        "step by step, with the real optimizer run from the same start on a full-batch problem.",
    )
    parser.add_argument("--problem", choices=PROBLEMS, default="quadratic")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate η > 0 (default 1e-3)")
    parser.add_argument("--steps", type=int_at_least(1), default=2000, help="optimizer steps >= 1 (default 2000)")
    parser.add_argument("--k", type=int_at_least(1), default=1, help="levels of k-Adam >= 1 (default 1: AdamW)")
    parser.add_argument("--rates", choices=RATES, default="exact", help="moment rates (default exact)")
    parser.add_argument("--order", type=int, choices=ORDERS, default=1, help="parameter equation order (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="problem seed (default 0)")
    parser.add_argument(
        "--warm-start",
        type=int_at_least(0),
        default=0,
        metavar="S",
        help="run S discrete steps first, then integrate from that state (0 <= S < --steps; default 0)",
    )
    parser.add_argument(
        "--modified",
        action="store_true",
        help="integrate the O(lr^2) modified equations (docs/flow_second_order.md; needs --rates exact and --order 1)",
    )
    parser.add_argument(
        "--plot",
        type=output_figure,
        metavar="PNG",
        help="write loss curves, coordinates and the error to this figure (.png, .pdf, .svg, …)",
    )
    parser.add_argument("--json", action="store_true", help="print the error table as JSON on stdout")
    add_threads_option(parser)
    command(parser, run, check)


def check(args: argparse.Namespace) -> None:
    """The combinations :func:`kadam.flow.simulate` accepts, checked before anything runs."""
    if args.warm_start >= args.steps:
        raise ValueError(
            f"argument --warm-start: must be an integer in [0, --steps - 1 = {args.steps - 1}], got {args.warm_start}"
        )
    if args.modified and args.order != 1:
        raise ValueError(
            f"argument --order: --modified corrects the first-order model: --order must be 1, got {args.order}"
        )
    if args.modified and args.rates != "exact":
        raise ValueError(
            f"argument --rates: --modified needs --rates exact (the paper's rates differ at O(lr)), got {args.rates!r}"
        )


def _plot(path: Path, continuous: Any, discrete_run: Any, errors: Any, title: str) -> None:
    from kadam.experiments.figures import panels, save_figure

    figure, [[loss_axis, coordinate_axis, error_axis]] = panels(1, 3, (5, 4))
    steps = discrete_run.steps.numpy()
    loss_axis.semilogy(steps, discrete_run.loss.numpy(), label="discrete")
    loss_axis.semilogy(steps, continuous.loss.numpy(), "--", label="continuous")
    loss_axis.set(xlabel="step n", ylabel="loss", title="loss")
    loss_axis.legend()
    moved = (discrete_run.theta[-1] - discrete_run.theta[0]).abs().argsort(descending=True)[:COORDINATES_SHOWN]
    for index in moved.tolist():
        (line,) = coordinate_axis.plot(steps, discrete_run.theta[:, index].numpy(), label=f"θ[{index}] discrete")
        coordinate_axis.plot(
            steps, continuous.theta[:, index].numpy(), "--", color=line.get_color(), label="continuous"
        )
    coordinate_axis.set(xlabel="step n", title="the coordinates that moved most")
    coordinate_axis.legend(fontsize=7)
    error_axis.semilogy(errors.steps.numpy(), errors.relative_error.numpy())
    error_axis.set(xlabel="step n", title="‖θ_cont − θ_disc‖ / ‖θ_disc − θ₀‖")
    figure.suptitle(title)
    save_figure(figure, path)


def run(args: argparse.Namespace) -> int:
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    stages = Stages("flow", 3 if args.plot is None else 4)
    stages.start("importing torch and building the problem")
    from kadam.experiments.flow.extra import make_flow_problem
    from kadam.flow import FlowSolveError, compare, discrete, simulate
    from kadam.flow.run import DiscreteRunError

    loss = make_flow_problem(args.problem, args.seed)
    hyperparameters = {"lr": args.lr, "k": args.k}
    progress = not args.json and sys.stderr.isatty()
    stages.start(f"discrete KAdam, {args.steps} steps")
    try:
        reference = discrete(loss, args.steps, progress=progress, **hyperparameters)
    except DiscreteRunError as failure:
        print(
            f"kadam flow: {failure} (nothing to compare the continuous model with; try a smaller --lr)", file=sys.stderr
        )
        return 1
    stages.start(f"continuous model ({args.rates} rates, order {args.order}), {args.steps} steps")
    try:
        continuous = simulate(
            loss,
            args.steps,
            rates=args.rates,
            order=args.order,
            progress=progress,
            warm_start=args.warm_start,
            modified=args.modified,
            **hyperparameters,
        )
    except FlowSolveError as failure:
        print(f"kadam flow: the continuous model failed (the discrete run finished): {failure}", file=sys.stderr)
        return 1
    errors = compare(continuous, reference)
    table = {
        "problem": args.problem,
        "lr": args.lr,
        "steps": args.steps,
        "k": args.k,
        "rates": args.rates,
        "order": args.order,
        "warm_start": args.warm_start,
        "modified": args.modified,
        **errors.summary(),
        "final_loss_discrete": float(reference.loss[-1]),
        "final_loss_continuous": float(continuous.loss[-1]),
        "gradient_evaluations": continuous.gradient_evaluations,
        "seconds_discrete": reference.seconds,
        "seconds_continuous": continuous.seconds,
    }
    title = (
        f"{args.problem}: lr {args.lr}, k = {args.k}, {args.rates} rates, order {args.order}"
        + (f", warm start {args.warm_start}" if args.warm_start else "")
        + (", modified" if args.modified else "")
    )
    if args.plot is not None:
        stages.start(f"drawing {args.plot}")
        _plot(args.plot, continuous, reference, errors, title)
    stages.done()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(title)
    for step in sorted({max(1, args.steps // 10 * i) for i in range(1, 11)} | {args.steps}):
        index = int((reference.steps == step).nonzero()[0, 0])
        print(
            f"  step {step:>7}: loss discrete {float(reference.loss[index]):.6g}  continuous "
            f"{float(continuous.loss[index]):.6g}  rel. error {float(errors.relative_error[index - 1]):.3e}"
        )
    width = max(len(key) for key in table)
    for key, value in table.items():
        print(f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.plot is not None:
        print(f"figure: {args.plot}")
    return 0
