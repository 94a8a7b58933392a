"""``kadam reproduce``: re-measure the paper's claims offline and write one report (see
:mod:`kadam.experiments.reproduce`).

**Interrupts.** SIGINT, whether from a terminal's Ctrl-C (sent to the whole process group) or from a
scheduler (sent to this process only), ends the run the same way: one line, exit status 130, the cells
already finished kept in ``--out/cache``. While the run lasts, SIGINT is blocked in every thread of this
process, so the worker processes it starts inherit a mask that blocks it (they never see it and print
nothing). A listener thread takes it with ``sigwait``, interrupts the main thread (``KeyboardInterrupt``)
and terminates the workers (cells in flight are lost, as the cache format allows). The handler and the
mask are put back afterwards.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import multiprocessing
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from kadam.cli.options import available_cores, int_at_least, output_directory

PROFILES = ("smoke", "quick", "full")
"""``kadam.experiments.reproduce.PROFILES`` (kept here so that ``--help`` imports no torch; a test checks they agree)."""
DEVICES = ("cpu", "cuda")
"""``kadam.experiments.reproduce.DEVICES`` (same reason)."""


def default_jobs() -> int:
    """The CPU cores this process may use (every cell runs single-threaded, so one job per core)."""
    return available_cores()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="run every experiment (cached) and write report.html, report.md, results.json",
        description="Run the stability, continuous-time, normalization and training experiments (the theory is "
                    "docs/theory.md), each cell cached under --out (an interrupted run resumes), and write "
                    "report.html, report.md, results.json and figures/*.png there.",
    )
    parser.add_argument("--profile", choices=PROFILES, default="quick",
                        help="smoke (≤ 60 s), quick (≤ 10 min on 2 cores; default) or full (the real protocol, for a GPU)")
    parser.add_argument("--out", type=output_directory, default="kadam-report",
                        help="output and cache folder, created if missing (default kadam-report)")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="torch device for the training cells (the comparison's runs and the stability-margin runs; "
                             "the other cells run on the CPU)")
    parser.add_argument("--seeds", type=int_at_least(2), default=None,
                        help="fresh evaluation seeds (≥ 2: a paired interval needs two pairs; default: the profile's)")
    parser.add_argument("--jobs", type=int_at_least(1), default=default_jobs(),
                        help=f"cells computed in parallel processes, one torch thread each (default: the {default_jobs()} "
                             "CPU cores available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary table still prints)")
    parser.set_defaults(func=run_reproduce)


def _terminate_workers() -> None:
    """End this process's multiprocessing children (the cell workers and their message manager)."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=5)


@contextlib.contextmanager
def _interrupts_stop_workers() -> Iterator[None]:
    """SIGINT reaches this process only, terminates the workers and raises ``KeyboardInterrupt`` in the main
    thread (module docstring). Outside the main thread, or without ``pthread_sigmask`` (Windows), it
    changes nothing."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    # Starting multiprocessing's resource tracker unblocks SIGINT in the calling thread afterwards (the
    # standard library blocks it only while the tracker is launched): start it first, so that the mask
    # below still holds when the runner spawns its workers.
    resource_tracker.ensure_running()
    closing = threading.Event()

    def listen() -> None:  # SIGINT is blocked in every thread; this one takes it with sigwait
        while True:
            signal.sigwait({signal.SIGINT})
            if closing.is_set():
                return
            _thread.interrupt_main(signal.SIGINT)  # the main thread raises at its next instruction
            _terminate_workers()  # ... and wakes up if it was waiting for them

    def interrupted(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while cleaning up changes nothing
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGINT, interrupted)
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    listener = threading.Thread(target=listen, name="kadam-sigint-listener", daemon=True)
    listener.start()  # inherits the mask, as do the threads and processes the runner starts
    try:
        yield
    finally:
        closing.set()
        signal.pthread_kill(listener.ident, signal.SIGINT)  # wakes its sigwait
        listener.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        signal.signal(signal.SIGINT, previous_handler)


EXTRA_MODULES = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "mnist1d": "mnist1d", "rich": "rich"}
"""Module → distribution of the ``kadam[experiments]`` extra that ``kadam reproduce`` needs."""


def missing_experiment_packages() -> list[str]:
    """The distributions of the ``kadam[experiments]`` extra that are not installed."""
    import importlib.util

    return [package for module, package in EXTRA_MODULES.items() if importlib.util.find_spec(module) is None]


def run_reproduce(args: argparse.Namespace) -> int:
    missing = missing_experiment_packages()
    if missing:
        raise ValueError(f"needs the experiments extra; {', '.join(missing)} not installed: "
                         "pip install 'kadam[experiments]'")
    from kadam.experiments.reproduce import reproduce

    try:
        with _interrupts_stop_workers():
            reproduce(args.profile, str(args.out), args.device, args.seeds, args.jobs, show_progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"kadam reproduce: interrupted; finished cells are cached in {args.out}/cache, rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0
