"""``kadam reproduce``: re-measure the paper's claims offline and write one report (see
:mod:`kadam.experiments.reproduce`). Needs the ``kadam[experiments]`` extra."""

from __future__ import annotations

import argparse
import importlib.util
import os

from kadam.experiments.profiles import DEVICES, PROFILES

EXTRA_MODULES = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "mnist1d": "mnist1d", "rich": "rich"}
"""Module → distribution of the ``kadam[experiments]`` extra that ``kadam reproduce`` needs."""


def missing_experiment_packages() -> list[str]:
    """The distributions of the ``kadam[experiments]`` extra that are not installed."""
    return [package for module, package in EXTRA_MODULES.items() if importlib.util.find_spec(module) is None]


def default_jobs() -> int:
    """The CPU cores this process may use (every cell runs single-threaded, so one job per core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="run every experiment (cached) and write report.html, report.md, results.json",
        description="Run the stability, continuous-time, normalization and training experiments, each cell cached "
                    "under --out (an interrupted run resumes), and write report.html, report.md, results.json and "
                    "figures/*.png there. Needs the kadam[experiments] extra.",
    )
    parser.add_argument("--profile", choices=PROFILES, default="quick",
                        help="smoke (≤ 60 s), quick (≤ 10 min on 2 cores; default) or full (the real protocol, for a GPU)")
    parser.add_argument("--out", default="kadam-report", help="output and cache folder (default kadam-report)")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="torch device for the training cells (section 4 and the stability-margin runs; sections 1–3 "
                             "run on the CPU)")
    parser.add_argument("--seeds", type=int, default=None, help="fresh evaluation seeds (≥ 2; default: the profile's)")
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help=f"cells computed in parallel processes, one torch thread each (default: the {default_jobs()} "
                             "CPU cores available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary table still prints)")
    parser.set_defaults(func=run_reproduce)


def reproduce(*args: object, **kwargs: object) -> object:
    """:func:`kadam.experiments.reproduce.reproduce`, imported on first use (it needs the extra)."""
    from kadam.experiments.reproduce import reproduce as run

    return run(*args, **kwargs)


def run_reproduce(args: argparse.Namespace) -> int:
    missing = missing_experiment_packages()
    if missing:
        raise ValueError(f"needs the experiments extra; {', '.join(missing)} not installed: "
                         "pip install 'kadam[experiments]'")
    try:
        reproduce(args.profile, args.out, args.device, args.seeds, args.jobs, show_progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"kadam reproduce: interrupted; finished cells are cached in {args.out}/cache, rerun the same command to resume")
        return 130
    return 0
