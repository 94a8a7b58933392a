"""Score the present default monitor (and the baselines) on the earlier study's held-out runs, which are *seen*.

Those runs' cells are in this directory's history (``git show edd934f:results/monitor-study/cache/<key>.json``;
``git archive edd934f results/monitor-study/cache | tar -x -C /tmp/old`` extracts them). A run's series do not
depend on the monitor (it only reads them), so the present checks replay on them as on fresh runs.

    PYTHONPATH=src .venv/bin/python results/monitor-study/score_seen.py /tmp/old/results/monitor-study/cache
"""

import glob
import json
import sys

from kadam.experiments.monitor import analysis


def main() -> None:
    runs = []
    for path in glob.glob(f"{sys.argv[1]}/*.json"):
        cell = json.load(open(path))
        if cell["function"].endswith("validation_run") and cell["result"]["split"] == "held-out":
            runs.append(cell["result"])
    scores = analysis.score(runs)
    print(f"developing {scores['developing']}, sudden {scores['sudden']}, healthy {scores['healthy']}")
    for detector, entry in scores["detectors"].items():
        low, high = entry["recall_interval"]
        print(
            f"{detector}: recall {entry['caught']}/{scores['developing']} ({low:.0%}–{high:.0%}), "
            f"sudden {entry['sudden_flagged']}/{scores['sudden']}, healthy warned "
            f"{entry['healthy_warned']}/{scores['healthy']} "
            f"({entry['healthy_interval'][0]:.0%}–{entry['healthy_interval'][1]:.0%})"
        )


if __name__ == "__main__":
    main()
