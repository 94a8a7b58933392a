"""Compute the monitor study's cells in an order that puts the headline first (fresh held-out runs without
intervention, then the development runs without intervention, then the held-out interventions, then the
development guard), into the study's cache; `kadam monitor study` then assembles the report from the cache."""

import sys
from pathlib import Path

from rich.console import Console

from kadam.experiments.cells import CellCache, CellRunner
from kadam.experiments.monitor import protocol, section
from kadam.experiments.profiles import profile_sizes


def main():
    config = profile_sizes("full").monitor
    cells = section.run_cells(config, "cpu")

    def split(c):
        return protocol.split_of(c.kwargs["workload"], c.kwargs["family"], c.kwargs["seed"])

    phases = [
        [c for c in cells if split(c) == "held-out" and c.kwargs["intervention"] == "none"],
        [c for c in cells if split(c) == "development" and c.kwargs["intervention"] == "none"],
        [c for c in cells if split(c) == "held-out" and c.kwargs["intervention"] != "none"],
        [c for c in cells if split(c) == "development" and c.kwargs["intervention"] != "none"],
    ]
    assert sum(map(len, phases)) == len(cells)
    runner = CellRunner(CellCache(Path(sys.argv[1]) / "cache"), jobs=2, console=Console(), show_progress=False)
    with runner.session(sum(runner.pending_cost(p) for p in phases)):
        for i, phase in enumerate(phases):
            runner.run(phase)
            print(f"phase {i} done: {len(phase)} cells", flush=True)


if __name__ == "__main__":
    main()
