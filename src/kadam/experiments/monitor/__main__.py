"""Run the monitor section alone: ``python -m kadam.experiments.monitor [--profile quick] [--out DIR] [--jobs 2]``.

Computes every cell of :func:`kadam.experiments.monitor.section.build_section` (no cache), writes
``results.json`` and the figures to ``--out`` and prints the findings and the recall / lead / false-alarm
table. Until the section is registered with ``kadam reproduce``, this is how its numbers are produced.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path
from typing import Any

from kadam.experiments.monitor.config import PROFILES
from kadam.experiments.monitor.section import compute_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--out", default="monitor-section", help="folder for results.json and the figures")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    args = parser.parse_args()
    from kadam.experiments.monitor.section import build_section

    class Settings:
        profile, device, seeds = args.profile, "cpu", None

    section = build_section(Settings())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calls = [(cell.function, dict(cell.kwargs), cell.key) for cell in section.cells]
    labels = {cell.key: cell.label for cell in section.cells}
    results: dict[str, Any] = {}
    cpu_seconds = 0.0
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            outcomes = list(pool.imap_unordered(compute_call, calls))
    else:
        outcomes = [compute_call(call) for call in calls]
    for key, result, seconds in outcomes:
        results[key] = result
        cpu_seconds += seconds
        print(f"{labels[key]}: {seconds:.1f} s")
    (out / "results.json").write_text(json.dumps(results))
    document = section.finish(results, out)
    print(f"cells: {len(calls)}, summed cell seconds: {cpu_seconds:.0f}")
    for finding in document.findings:
        print(finding)
    for table in document.tables:
        print(table.caption)
        print(" | ".join(table.columns))
        for row in table.rows:
            print(" | ".join(row))


if __name__ == "__main__":
    main()
