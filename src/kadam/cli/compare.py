"""``kadam compare``: the optimizer-comparison protocol on one workload, cached and resumable.

Runs :mod:`kadam.experiments.comparison`'s plan for one ``--task``: ``--trials`` Sobol points of the shared
search space per optimizer, then ``--refine`` multiples of each optimizer's stage-1 best lr (and
``--lr-only-trials`` learning rates at each optimizer's defaults), selection over both stages on validation, ``--seeds`` fresh paired seeds on test, paired t with Holm's correction over the optimizers
compared with AdamW, steps and seconds to AdamW's target. Every run is a cell cached under ``--out/cache``:
an interrupted command resumes where it stopped when rerun with the same arguments. ``--executor dask`` runs
the cells on a Dask cluster (a local one, or the scheduler at an address) with the same cache.

``--json`` prints one JSON object instead of the table (keys: ``task``, ``command``, ``config``,
``budget``, ``rows``, ``analysis``; see :func:`json_output`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from kadam.cli.interrupts import signals_stop_workers
from kadam.cli.options import command, int_at_least, output_directory, positive_float
from kadam.vocabulary import ARMS, WORKLOADS
from kadam.vocabulary import COMPARE_PROFILES as PROFILES

__all__ = ["executor_option", "register", "run_compare", "json_output"]


def _executor(value: str) -> str:
    from kadam.experiments.cells import parse_executor

    try:
        return parse_executor(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def executor_option(parser: argparse.ArgumentParser) -> None:
    """``--executor``: where the cells run (the process pool, a Dask local cluster, or a Dask scheduler)."""
    parser.add_argument(
        "--executor",
        type=_executor,
        default="process",
        metavar="EXECUTOR",
        help="process (default: a process pool of --jobs), dask (a Dask LocalCluster of --jobs single-threaded "
        "workers; needs kadam[distributed]) or a Dask scheduler address such as tcp://host:8786; the same cache "
        "and results either way",
    )


_SHORT_COLUMNS = (
    "arm",
    "lr",
    "β",
    "γ",
    "λ",
    "warmup",
    "test loss",
    "div.",
    "Δ vs AdamW [adj. CI]",
    "p Holm",
    "MDE",
    "steps→target",
    "s→target",
    "ms/step",
)
"""Terminal headers of :data:`kadam.experiments.comparison.section.RESULT_COLUMNS` (same order)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="tune and compare optimizers on one workload under a fixed protocol (cached)",
        description="Equal Sobol tuning budget per optimizer over one shared search space, warmup + cosine schedule, "
        "selection on validation, paired fresh seeds on test, Holm-corrected paired t against AdamW, "
        "steps and seconds to AdamW's target. Resumable: runs are cached under --out.",
    )
    parser.add_argument("--task", choices=sorted(WORKLOADS), help="workload (required unless --study)")
    parser.add_argument(
        "--study",
        action="store_true",
        help="run every workload of --profile (default study, hours on a CPU) and write report.html, "
        "report.md, results.json and figures/ under --out; --task/--optimizers/--trials are ignored",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=["adamw", "kadam1", "kadam2"],
        choices=sorted(ARMS),
        metavar="NAME",
        help=f"arms (adamw is always added as the reference); one of {', '.join(ARMS)}",
    )
    parser.add_argument("--trials", type=int_at_least(1), default=8, help="Sobol trials per optimizer >= 1 (default 8)")
    parser.add_argument(
        "--lr-only-trials",
        type=int_at_least(0),
        default=0,
        help="learning rates per optimizer for the lr-only result, other hyperparameters at defaults "
        "(default 0: skipped)",
    )
    parser.add_argument(
        "--seeds",
        type=int_at_least(2),
        default=None,
        help="fresh paired evaluation seeds (≥ 2; default 5, or the profile's with --study)",
    )
    parser.add_argument(
        "--steps", type=int_at_least(1), default=None, help="training steps per run >= 1 (default: the profile's)"
    )
    parser.add_argument(
        "--batch-size", type=int_at_least(1), default=None, help="mini-batch size >= 1 (default: the profile's)"
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="where the task's model sizes, steps and batch size come from when the task is in that "
        "profile (default quick; otherwise the study profile's, else the builder's defaults); "
        "with --study, the profile to run (default study)",
    )
    parser.add_argument(
        "--refine",
        type=positive_float,
        nargs="*",
        default=[0.25, 0.5, 2.0, 4.0],
        metavar="FACTOR",
        help="second tuning stage: each optimizer's stage-1 best lr times each FACTOR (> 0, not 1), the selection "
        "over both stages (default 0.25 0.5 2 4; none: one stage)",
    )
    parser.add_argument(
        "--sensitivity",
        type=positive_float,
        nargs="*",
        default=[0.1, 10.0],
        metavar="FACTOR",
        help="multiples of each optimizer's best lr for the sensitivity sweep (default 0.1 10; none: skip)",
    )
    parser.add_argument(
        "--out",
        type=output_directory,
        default="kadam-compare",
        help="output and cache folder, created if missing (default kadam-compare)",
    )
    parser.add_argument(
        "--jobs",
        type=int_at_least(1),
        default=1,
        help="runs computed in parallel processes (or Dask local workers) >= 1 (default 1)",
    )
    executor_option(parser)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    command(parser, run_compare, _check)


def _workload_config(args: argparse.Namespace) -> Any:
    from kadam.experiments.comparison.config import WorkloadConfig
    from kadam.experiments.comparison.section import comparison_config

    found = None
    for profile in (args.profile or "quick", "study", "confirmatory"):
        found = next((w for w in comparison_config(profile).workloads if w.name == args.task), None)
        if found is not None:
            break
    base = found or WorkloadConfig(args.task, 500, 32, ())
    arms = tuple(dict.fromkeys(["adamw", *args.optimizers]))
    steps = base.steps if args.steps is None else args.steps
    batch_size = base.batch_size if args.batch_size is None else args.batch_size
    seconds = base.seconds_per_run * steps / base.steps
    return dataclasses.replace(
        base, arms=arms, steps=steps, batch_size=batch_size, seconds_per_run=seconds, lr_only=args.lr_only_trials > 0
    )


def _check(args: argparse.Namespace) -> None:
    """What the option types cannot see: a workload to run, distinct refinement factors other than 1, and the
    package a Dask executor needs."""
    if args.task is None and not args.study:
        raise ValueError("argument --task: required (or --study for every workload of the profile)")
    if 1.0 in args.refine or len(set(args.refine)) != len(args.refine):
        raise ValueError(f"argument --refine: factors must be distinct and not 1, got {args.refine}")
    if args.executor != "process":
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise ValueError("argument --executor: needs the distributed package: pip install 'kadam[distributed]'")


def json_output(task: str, command: str, config: Any, analysis: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` object: ``task``; ``command`` (argv); ``config`` (the protocol's configuration);
    ``budget`` (the runs × seconds arithmetic); ``rows`` (one per optimizer of the full search: ``arm``,
    ``hyperparameters`` (best), ``validation_loss`` (best trial), ``test_loss`` {mean, std, median, min, max, n},
    ``test_accuracy`` (or None), ``diverged`` (seeds), ``difference`` (paired test-loss difference to AdamW:
    ``mean``, ``std``, ``ci_low``/``ci_high`` (unadjusted), ``ci_adjusted_low``/``ci_adjusted_high``
    (Bonferroni), ``p_value``, ``p_holm``, ``significant``, ``mde`` (smallest detectable difference); None for
    AdamW), ``lr_ratio_to_adamw``, ``steps_to_target`` and ``seconds_to_target`` ({median, ...} or None),
    ``target_reached``, ``seconds_per_step``); ``lr_only_rows`` (the same for the lr-only result, or []);
    ``target_train_loss``; ``control_pairs_checked``; and ``analysis`` (everything, curves included)."""
    from kadam.experiments.comparison.section import _budget_lines, json_config

    entry = analysis["workloads"][task]

    def rows(result: str) -> list[dict[str, Any]]:
        block = entry.get(result)
        if not block or "arms" not in block:
            return []
        return [
            {
                "arm": arm,
                "hyperparameters": block["selection"][arm]["hyperparameters"],
                "validation_loss": block["selection"][arm]["validation_loss"],
                "test_loss": summary["test_loss"],
                "test_accuracy": summary["test_accuracy"],
                "diverged": summary["diverged"],
                "difference": block["versus_reference"].get(arm),
                "lr_ratio_to_adamw": block["lr_ratio_to_reference"].get(arm),
                "steps_to_target": summary["steps_to_target"],
                "seconds_to_target": summary["seconds_to_target"],
                "target_reached": summary["target_reached"],
                "seconds_per_step": summary["seconds_per_step"],
            }
            for arm, summary in block["arms"].items()
        ]

    return {
        "task": task,
        "command": command,
        "config": json_config(config),
        "budget": _budget_lines(config),
        "rows": rows("search"),
        "lr_only_rows": rows("lr_only"),
        "target_train_loss": entry["search"].get("target_train_loss"),
        "control_pairs_checked": analysis["control_pairs_checked"],
        "analysis": analysis,
    }


def run_compare(args: argparse.Namespace) -> int:
    from kadam.experiments.cells import CellCache, CellRunner
    from kadam.experiments.comparison.analysis import analyse
    from kadam.experiments.comparison.config import ComparisonConfig
    from kadam.experiments.comparison.section import (
        comparison_config,
        followup_cells,
        result_rows,
        tagged_records,
        tuning_plan,
    )
    from kadam.experiments.report import json_safe

    if args.study:  # every workload of the profile, written as a report
        from kadam.experiments.comparison.study import run_study

        with signals_stop_workers() as interruption:
            try:
                run_study(
                    args.profile or "study",
                    str(args.out),
                    args.jobs,
                    args.seeds,
                    show_progress=not args.no_progress,
                    command="kadam " + " ".join(sys.argv[1:]),
                    executor=args.executor,
                )
            except KeyboardInterrupt:
                print(
                    f"kadam compare: interrupted; finished runs are cached in {args.out}/cache, rerun to resume",
                    file=sys.stderr,
                )
                return interruption.exit_status
        return 0
    seeds = 5 if args.seeds is None else args.seeds
    workload = _workload_config(args)
    base = comparison_config("quick")
    config = ComparisonConfig(
        workloads=(workload,),
        trials=args.trials,
        lr_only_trials=args.lr_only_trials,
        seeds=seeds,
        sensitivity_factors=tuple(args.sensitivity),
        refinement_factors=tuple(args.refine),
        space=base.space,
        curve_points=base.curve_points,
    )
    out = Path(args.out)
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(stderr=args.json, width=None if sys.stdout.isatty() else 220)
    runner = CellRunner(
        CellCache(out / "cache"),
        jobs=args.jobs,
        executor=args.executor,
        console=console,
        show_progress=not args.no_progress,
    )
    tuning = tuning_plan(config)
    followup_estimate = (
        len(workload.arms)
        * (seeds * (1 + workload.lr_only) + len(args.sensitivity) + len(config.refinement_factors))
        * workload.seconds_per_run
    )
    started = time.perf_counter()
    with signals_stop_workers() as interruption:
        try:
            with runner.session(runner.pending_cost([p.cell for p in tuning]) + followup_estimate):
                results, _ = runner.run_phases(
                    [p.cell for p in tuning],
                    lambda done: [p.cell for p in followup_cells(config, done)],
                    followup_estimate,
                )
                followup = followup_cells(config, results)
        except KeyboardInterrupt:
            print(
                f"kadam compare: interrupted; finished runs are cached in {out}/cache, rerun the same command to "
                "resume",
                file=sys.stderr,
            )
            return interruption.exit_status
    analysis = analyse(
        tagged_records(tuning + followup, results), confidence=config.confidence, alpha=config.alpha, power=config.power
    )
    command = "kadam " + " ".join(sys.argv[1:])
    output = json_safe(json_output(args.task, command, config, analysis))
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(output, indent=1, sort_keys=True), encoding="utf-8")
    if args.json:
        print(json.dumps(output, sort_keys=True))
        return 0
    elapsed = time.perf_counter() - started
    for result, name in (("search", "full search"), ("lr_only", "lr-only tuning")):
        block = analysis["workloads"][args.task].get(result)
        if not block or "arms" not in block:
            continue
        table = RichTable(
            title=f"kadam compare --task {args.task}: {name} ("
            + (
                f"{args.trials} + {len(args.refine)} refinement trials"
                if result == "search"
                else f"{args.lr_only_trials} trials"
            )
            + f" per optimizer, {seeds} fresh seeds)",
            caption=f"target training loss {block['target_train_loss']}; * significant after Holm; "
            f"{len(runner.computed)} runs computed, {len(runner.cached)} cached, {elapsed:.1f} s",
        )
        for column in _SHORT_COLUMNS:
            table.add_column(column)
        for row in result_rows(block):
            table.add_row(*row)
        console.print(table)
    control = (
        f"k = 1 control: {analysis['control_pairs_checked']} paired runs tied AdamW exactly. "
        if analysis["control_pairs_checked"]
        else "No k = 1 control (add kadam1 to --optimizers to check the pairing). "
    )
    console.print(f"{control}Results: {out / 'compare.json'}")
    return 0
