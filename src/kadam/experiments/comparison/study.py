"""Run one section alone at one profile and write its report (``report.html``, ``report.md``, ``results.json``,
``figures/``), cached under ``out/cache`` like ``kadam reproduce``: ``kadam compare --study`` (the comparison)
and ``kadam monitor study`` (the monitor's validation).
"""

from __future__ import annotations

import datetime
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import kadam
from kadam.experiments.cells import CellCache, CellRunner
from kadam.experiments.profiles import Settings
from kadam.experiments.report import write_report
from kadam.experiments.sections import Section

__all__ = ["run_section_study", "run_study"]

TITLES = {
    "comparison": "Does k-Adam train better? The comparison protocol",
    "monitor": "The stability monitor and its guard: the validation protocol",
    "transfer": "Hyperparameter transfer across batch sizes: each rule's regret against the tuned optimum",
}


def run_study(
    profile: str = "study",
    out: str | Path = "kadam-compare-study",
    jobs: int = 1,
    seeds: int | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    command: str = "",
    executor: str = "process",
) -> dict[str, Path]:
    """The comparison section alone (``kadam compare --study``): :func:`run_section_study`."""
    from kadam.experiments.comparison.section import build_section

    return run_section_study(
        build_section,
        "comparison",
        profile,
        out,
        jobs,
        seeds,
        console,
        show_progress,
        command or f"kadam compare --study --profile {profile} --jobs {jobs}",
        executor,
    )


def run_section_study(
    build_section: Callable[[Settings], Section],
    name: str,
    profile: str,
    out: str | Path,
    jobs: int = 1,
    seeds: int | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    command: str = "",
    executor: str = "process",
) -> dict[str, Path]:
    """Compute (or fetch from the cache) every run of section ``name`` at ``profile`` and write its report
    (cells on ``executor``: :class:`~kadam.experiments.cells.CellRunner`)."""
    if jobs < 1:
        raise ValueError(f"jobs must be ≥ 1, got {jobs}")
    if seeds is not None and seeds < 2:
        raise ValueError(f"seeds must be ≥ 2, got {seeds}")
    console = console or Console()
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    section = build_section(Settings(profile=profile, device="cpu", seeds=seeds))
    runner = CellRunner(
        CellCache(out / "cache"), jobs=jobs, executor=executor, console=console, show_progress=show_progress
    )
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.perf_counter()
    with runner.session(runner.pending_cost(section.cells) + section.followup_cost):
        results, _ = runner.run_phases(section.cells, section.followup, section.followup_cost)
    for stale in figures.glob(f"{name}_*.png"):
        stale.unlink()
    document = section.finish(results, figures)
    elapsed = time.perf_counter() - started
    metadata: dict[str, Any] = {
        "kadam_version": kadam.__version__,
        "command": command,
        "profile": profile,
        "jobs": jobs,
        "executor": executor,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "started_utc": started_at.isoformat(timespec="seconds"),
        "wall_seconds": elapsed,
        "cells_computed": len(runner.computed),
        "cells_from_cache": len(runner.cached),
        "cell_seconds": sum(runner.seconds.values()),
    }
    preamble = (
        f"Produced by kadam {kadam.__version__} (torch {torch.__version__}, Python {platform.python_version()}) "
        f"with `{command}` on "
        f"{started_at:%Y-%m-%d %H:%M} UTC: {len(runner.computed)} runs computed, {len(runner.cached)} from the "
        f"cache, {elapsed:.0f} s wall."
    )
    paths = write_report(out, TITLES[name], preamble, [document], metadata)
    for label, value in document.headline:
        console.print(f"{label}: {value}")
    for finding in document.findings:
        console.print(f"- {finding}")
    console.print(f"Report: {paths['html']}")
    return paths
