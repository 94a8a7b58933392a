"""The training effect of bfloat16 optimizer state: float32 moments against bfloat16 moments (rounded to
nearest, and rounded stochastically) for AdamW (KAdam k = 1) and the default KAdam k = 2.

A control-style paired comparison, not a tuning race: under the comparison protocol's one training loop
(:func:`kadam.experiments.comparison.protocol.train_trial`: warmup-cosine schedule, same seed = same
initialisation and data order), the three storage precisions of one optimizer run at the *same*
hyperparameters, those the committed comparison study selected for that optimizer on that workload
(``results/comparison-study/results.json``, read at run time and recorded in the output). Only the storage
of the moments differs. For digits-cnn the sizes, steps and batch are the comparison study's; its gpt was larger
(width 64, context 64, 200k characters), so on this smaller gpt the points are sensible, not tuned.

Criterion, fixed before the runs: per (workload, optimizer, low-precision variant) the paired differences
d_i = test loss(bf16 variant, seed i) − test loss(float32, seed i); their mean with a 95% t-interval; the
smallest detectable difference 2.8 · sd(d) / √n (a two-sided 5% test with 80% power). Verdict: "bf16 worse"
/ "bf16 better" when the interval excludes 0, otherwise "no difference resolved (smallest detectable ±X)".
A pair where either run diverged is excluded and counted. The float32 arm's seed-to-seed standard deviation
of the test loss is printed beside as the scale of the control.

    python benchmarks/precision_study.py --seeds 20 --jobs 2 --out results/precision-study
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

import kadam
from kadam.experiments.cells import Cell, CellCache, CellRunner
from kadam.experiments.comparison.protocol import train_trial

WORKLOADS: dict[str, dict[str, Any]] = {
    "gpt": {"corpus_chars": 60_000, "context": 16, "width": 32, "heads": 2, "layers": 2},
    "digits-cnn": {"channels": 8},
}
OPTIMIZERS = {"kadam1": "AdamW (KAdam k=1)", "kadam2": "KAdam k=2 (default)"}
VARIANTS = {"": "float32", "-bf16": "bf16, nearest", "-bf16-sr": "bf16, stochastic rounding"}
STEPS, BATCH = 1000, 32  # the comparison study's steps and batch for both workloads
COMPARISON_RESULTS = Path(__file__).resolve().parents[1] / "results" / "comparison-study" / "results.json"
CONFIDENCE, DETECTABLE_FACTOR = 0.95, 2.8


def selected_hyperparameters() -> dict[str, dict[str, dict[str, float]]]:
    """workload → optimizer → the comparison study's selected point (its search stage)."""
    data = json.loads(COMPARISON_RESULTS.read_text())
    workloads = data["sections"]["comparison"]["data"]["analysis"]["workloads"]
    return {
        workload: {arm: dict(workloads[workload]["search"]["selection"][arm]["hyperparameters"]) for arm in OPTIMIZERS}
        for workload in WORKLOADS
    }


def cells(seeds: range, points: dict[str, dict[str, dict[str, float]]]) -> list[Cell]:
    """Seed-major, so that an interrupted run leaves whole paired sets."""
    return [
        Cell(
            "precision",
            f"{workload} {arm}{variant} seed {seed}",
            train_trial,
            {
                "workload": workload,
                "arm": arm + variant,
                "hyperparameters": points[workload][arm],
                "steps": STEPS,
                "batch_size": BATCH,
                "seed": seed,
                "sizes": WORKLOADS[workload],
                "curve_points": 50,
            },
            cost=10.0 if workload == "gpt" else 4.0,
        )
        for seed in seeds
        for workload in WORKLOADS
        for arm in OPTIMIZERS
        for variant in VARIANTS
    ]


def paired(base: list[float | None], other: list[float | None]) -> dict[str, Any]:
    """The paired comparison of ``other`` − ``base`` (see the module docstring)."""
    pairs = [(b, o) for b, o in zip(base, other) if b is not None and o is not None]
    d = np.array([o - b for b, o in pairs])
    n = len(d)
    result: dict[str, Any] = {"pairs": n, "excluded_pairs": len(base) - n}
    if n < 3:
        return {**result, "verdict": "too few pairs"}
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    detectable = DETECTABLE_FACTOR * sd / math.sqrt(n)
    if mean - half > 0:
        verdict = "bf16 worse"
    elif mean + half < 0:
        verdict = "bf16 better"
    else:
        verdict = f"no difference resolved (smallest detectable ±{detectable:.4f})"
    return {
        **result,
        "mean": mean,
        "sd": sd,
        "interval": [mean - half, mean + half],
        "smallest_detectable": detectable,
        "verdict": verdict,
    }


def analyse(results: list[dict[str, Any]], seeds: range) -> list[dict[str, Any]]:
    by = {(r["workload"], r["arm"], r["seed"]): r for r in results}
    rows = []
    for workload in WORKLOADS:
        for arm in OPTIMIZERS:
            base = [by[(workload, arm, s)]["test_loss"] for s in seeds if (workload, arm, s) in by]
            control_sd = float(np.std([b for b in base if b is not None], ddof=1)) if len(base) > 1 else None
            for variant in list(VARIANTS)[1:]:
                keys = [s for s in seeds if (workload, arm, s) in by and (workload, arm + variant, s) in by]
                row = paired(
                    [by[(workload, arm, s)]["test_loss"] for s in keys],
                    [by[(workload, arm + variant, s)]["test_loss"] for s in keys],
                )
                rows.append(
                    {
                        "workload": workload,
                        "optimizer": arm,
                        "variant": VARIANTS[variant],
                        "float32_test_loss_mean": float(np.mean([b for b in base if b is not None])),
                        "float32_test_loss_sd_across_seeds": control_sd,
                        "seeds": keys,
                        **row,
                    }
                )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | optimizer | variant | float32 test loss (sd over seeds) | bf16 − float32 [95% CI] "
        "| smallest detectable | pairs | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "mean" not in r:
            lines.append(
                f"| {r['workload']} | {OPTIMIZERS[r['optimizer']]} | {r['variant']} | | | | {r['pairs']} | "
                f"{r['verdict']} |"
            )
            continue
        lo, hi = r["interval"]
        lines.append(
            f"| {r['workload']} | {OPTIMIZERS[r['optimizer']]} | {r['variant']} | "
            f"{r['float32_test_loss_mean']:.4f} ({r['float32_test_loss_sd_across_seeds']:.4f}) | "
            f"{r['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] | ±{r['smallest_detectable']:.4f} | {r['pairs']} | "
            f"{r['verdict']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="paired seeds 0..N-1 (≥ 3)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/precision-study"))
    args = parser.parse_args()
    if args.seeds < 3:
        parser.error(f"--seeds must be ≥ 3, got {args.seeds}")
    torch.set_num_threads(1)
    started, started_utc = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = list(os.getloadavg())
    points = selected_hyperparameters()
    seeds = range(args.seeds)
    runner = CellRunner(CellCache(args.out / "cache"), jobs=args.jobs)
    todo = cells(seeds, points)
    results: list[dict[str, Any]] = []
    with runner.session(sum(c.cost for c in todo)):
        for seed in seeds:  # one seed's cells at a time: an interrupted run leaves whole paired sets cached
            batch = [c for c in todo if c.kwargs["seed"] == seed]
            found = runner.run(batch)
            results += [found[c.key] for c in batch]
    rows = analyse(results, seeds)
    output = {
        "command": "python " + " ".join(sys.argv),
        "kadam_version": kadam.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started_utc": started_utc,
        "wall_seconds": time.perf_counter() - started,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "cells_computed": len(runner.computed),
        "cells_from_cache": len(runner.cached),
        "design": {
            "workloads": WORKLOADS,
            "steps": STEPS,
            "batch_size": BATCH,
            "hyperparameters": points,
            "hyperparameters_source": "results/comparison-study/results.json: the search stage's selection",
            "confidence": CONFIDENCE,
            "smallest_detectable": f"{DETECTABLE_FACTOR} * sd(d) / sqrt(n)",
        },
        "rows": rows,
        "runs": [
            {
                k: r[k]
                for k in (
                    "workload",
                    "arm",
                    "seed",
                    "test_loss",
                    "validation_loss",
                    "diverged",
                    "seconds_per_step",
                    "unstable_warnings",
                )
            }
            for r in results
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(output, indent=1))
    print(table(rows))
    print(f"wall {output['wall_seconds']:.0f} s; load {load_before} → {output['load_average_after']}")


if __name__ == "__main__":
    main()
