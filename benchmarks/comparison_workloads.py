"""Seconds per run of each workload of the comparison's study profile, on one core, against the estimate the
profile budgets with (``WorkloadConfig.seconds_per_run``).

Each workload trains AdamW and 2-Adam for ``--fraction`` of its study steps (the per-step cost is constant
under the schedule), the time is scaled to the full run and one evaluation pass is included. "CPU s/run" is the
wall time times the share of it this process was on a CPU (``time.process_time``), i.e. what an idle core
would take; on a machine shared with other jobs the wall time is larger.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/comparison_workloads.py [--fraction 0.2] [--profile study]
"""

from __future__ import annotations

import argparse
import time

import torch

from kadam.experiments.comparison.config import PROFILES, estimated_runs
from kadam.experiments.comparison.protocol import train_trial

HYPERPARAMETERS = {"lr": 1e-3, "beta": 0.9, "gamma": 0.999, "weight_decay": 0.01, "warmup_fraction": 0.05}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fraction", type=float, default=0.2, help="share of the study steps actually run")
    parser.add_argument("--profile", default="study", choices=sorted(PROFILES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = PROFILES[args.profile]
    print(
        f"{'workload':<16} {'arm':<7} {'steps run':>9} {'wall ms/step':>12} {'wall s/run':>10} {'CPU s/run':>10} "
        f"{'budgeted s/run':>15} {'CPU/budget':>10}"
    )
    measured = {}
    for workload in config.workloads:
        steps = max(1, round(workload.steps * args.fraction))
        for arm in ("adamw", "kadam2"):
            cpu_started = time.process_time()
            run = train_trial(
                workload.name,
                arm,
                HYPERPARAMETERS,
                steps,
                workload.batch_size,
                seed=0,
                sizes=workload.size_kwargs,
                curve_points=min(100, steps),
            )
            cpu_share = (time.process_time() - cpu_started) / run["seconds"]  # < 1 when other jobs share the core
            scaled = run["seconds_per_step"] * workload.steps + (run["seconds"] - run["training_seconds"])
            cpu_scaled = scaled * cpu_share
            measured.setdefault(workload.name, []).append(cpu_scaled)
            print(
                f"{workload.name:<16} {arm:<7} {steps:>9} {1e3 * run['seconds_per_step']:>12.2f} {scaled:>10.1f} "
                f"{cpu_scaled:>10.1f} {workload.seconds_per_run:>15.1f} {cpu_scaled / workload.seconds_per_run:>10.2f}"
            )
    total = sum(runs * max(measured[name]) for name, runs, _ in estimated_runs(config))
    budget = sum(seconds for _, _, seconds in estimated_runs(config))
    print(
        f"profile {args.profile}: budgeted {budget:,.0f} CPU-s; with the measured CPU seconds per run (slower arm) "
        f"{total:,.0f} CPU-s ≈ {total / 2 / 3600:.2f} h on 2 idle cores"
    )


if __name__ == "__main__":
    main()
