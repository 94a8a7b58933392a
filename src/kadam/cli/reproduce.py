"""``kadam reproduce``: re-measure the paper's claims offline and write one report (see
:mod:`kadam.experiments.reproduce`).

**Interrupts** (:mod:`kadam.cli.interrupts`): SIGINT or SIGTERM ends the run with one line and exit
status 130 or 143, the workers terminated and the cells already finished kept in ``--out/cache``.
"""

from __future__ import annotations

import argparse
import sys

from kadam.cli.compare import executor_option
from kadam.cli.interrupts import signals_stop_workers
from kadam.cli.options import available_cores, command, int_at_least, output_directory
from kadam.experiments.registry import SECTIONS
from kadam.vocabulary import DEVICES, PROFILES


def default_jobs() -> int:
    """The CPU cores this process may use (every cell runs single-threaded, so one job per core)."""
    return available_cores()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="run every experiment (cached) and write report.html, report.md, results.json",
        description="Run the stability, continuous-time, normalization and training experiments (the theory is "
        "docs/theory.md), each cell cached under --out (an interrupted run resumes), and write "
        "report.html, report.md, results.json and figures/*.png there.",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="quick",
        help="smoke (every experiment at a token size: checks that it runs), quick (reduced budgets; default) or "
        "full (the real protocol, for a GPU)",
    )
    parser.add_argument(
        "--out",
        type=output_directory,
        default="kadam-report",
        help="output and cache folder, created if missing (default kadam-report)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="torch device for the training cells (the comparison's runs and the stability-margin runs; "
        "the other cells run on the CPU)",
    )
    parser.add_argument(
        "--seeds",
        type=int_at_least(2),
        default=None,
        help="fresh evaluation seeds (≥ 2: a paired interval needs two pairs; default: the profile's)",
    )
    parser.add_argument(
        "--jobs",
        type=int_at_least(1),
        default=default_jobs(),
        help=f"cells computed in parallel processes (or Dask local workers), one torch thread each (default: the "
        f"{default_jobs()} CPU cores available)",
    )
    executor_option(parser)
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=None,
        metavar="SECTION",
        help=f"run and report only these sections ({', '.join(SECTIONS)}; default: all)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary table still prints)")
    command(parser, run_reproduce, check_reproduce)


def check_reproduce(args: argparse.Namespace) -> None:
    """Each section named at most once."""
    if args.sections and len(set(args.sections)) != len(args.sections):
        raise ValueError(f"argument --sections: each section at most once, got {' '.join(args.sections)}")


EXTRA_MODULES = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "mnist1d": "mnist1d", "rich": "rich"}
"""Module → distribution of the ``kadam[experiments]`` extra that ``kadam reproduce`` needs."""


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def missing_experiment_packages() -> list[str]:
    """The distributions of the ``kadam[experiments]`` extra that are not installed."""
    return [package for module, package in EXTRA_MODULES.items() if _missing(module)]


def run_reproduce(args: argparse.Namespace) -> int:
    missing = missing_experiment_packages()
    if missing:
        raise ValueError(
            f"needs the experiments extra; {', '.join(missing)} not installed: pip install 'kadam[experiments]'"
        )
    if args.executor != "process" and _missing("distributed"):
        raise ValueError("argument --executor: needs the distributed package: pip install 'kadam[distributed]'")
    from kadam.experiments.reproduce import reproduce

    with signals_stop_workers() as interruption:
        try:
            reproduce(
                args.profile,
                str(args.out),
                args.device,
                args.seeds,
                args.jobs,
                show_progress=not args.no_progress,
                executor=args.executor,
                sections=args.sections,
            )
        except KeyboardInterrupt:
            print(
                f"kadam reproduce: interrupted; finished cells are cached in {args.out}/cache, rerun the same command "
                "to resume",
                file=sys.stderr,
            )
            return interruption.exit_status
    return 0
