"""The confirmatory study's budget arithmetic: runs, CPU-seconds and the smallest detectable difference.

Run from a checkout: ``python results/confirmatory-study/budget.py`` prints the table of PREREGISTRATION.md.
``--measure`` re-times one step of every arm on every workload (one torch thread, process CPU time over
80 − 20 steps, so another process's load does not count) instead of using the recorded costs.
"""

from __future__ import annotations

import argparse
import math
import time

from kadam.experiments.comparison.analysis import minimum_detectable_effect
from kadam.experiments.comparison.confirmatory import CONFIRMATORY

MEASURED_MS_PER_STEP = {
    # CPU milliseconds per training step, one thread, measured 2026-12-06 on the 2-core development machine
    # (torch 2.13.0+cpu, Python 3.11.7) with ``--measure``, while other sessions loaded the machine (load
    # average 9-11 on 2 cores: wall time per step was 2-10x these CPU times).
    "docs-gpt-wide": {
        "adamw": 36.0,
        "kadam2": 36.7,
        "muon-adamw": 40.3,
        "schedulefree-adamw": 32.5,
        "adamw-equal-betas": 31.1,
    },
    "docs-gpt-deep": {
        "adamw": 36.2,
        "kadam2": 37.3,
        "muon-adamw": 54.2,
        "schedulefree-adamw": 40.0,
        "adamw-equal-betas": 39.4,
    },
    "docs-gpt-long": {
        "adamw": 35.2,
        "kadam2": 35.4,
        "muon-adamw": 38.2,
        "schedulefree-adamw": 30.0,
        "adamw-equal-betas": 38.6,
    },
}
SETUP_SECONDS = {"docs-gpt-wide": 2.2, "docs-gpt-deep": 2.1, "docs-gpt-long": 5.1}
"""CPU-seconds per run outside the training steps (model, evaluations), measured with the costs above."""
PLANNING_STD = (0.0145, 0.025)
"""Seed-to-seed std of the paired difference kadam2 − AdamW assumed for the power arithmetic: the exploratory
study's on its pre-LN GPT (0.0145, 5 seeds), and a pessimistic value."""
CORES = 2


def measure() -> dict[str, dict[str, float]]:
    import torch

    from kadam.experiments.comparison.protocol import arm_hyperparameters, train_trial

    torch.set_num_threads(1)
    point = {"lr": 2e-3, "beta": 0.9, "gamma": 0.99, "weight_decay": 0.01, "warmup_fraction": 0.1}
    table: dict[str, dict[str, float]] = {}
    for workload in CONFIRMATORY.workloads:
        table[workload.name] = {}
        for arm in workload.arms:
            seconds = []
            for steps in (20, 80):
                started = time.process_time()
                train_trial(
                    workload.name,
                    arm,
                    arm_hyperparameters(arm, point),
                    steps,
                    workload.batch_size,
                    seed=0,
                    sizes=workload.size_kwargs,
                    curve_points=5,
                )
                seconds.append(time.process_time() - started)
            table[workload.name][arm] = 1e3 * (seconds[1] - seconds[0]) / 60
            print(workload.name, arm, f"{table[workload.name][arm]:.1f} ms/step", flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--measure", action="store_true")
    costs = measure() if parser.parse_args().measure else MEASURED_MS_PER_STEP
    config = CONFIRMATORY
    per_arm = len(config.tuning_seeds) * (config.trials + len(config.refinement_factors)) + config.seeds
    total_runs, total_seconds = 0, 0.0
    print(
        f"runs per arm and workload: {config.trials} Sobol + {len(config.refinement_factors)} refinement "
        f"(tuning seed {list(config.tuning_seeds)}) + {config.seeds} evaluation seeds = {per_arm}"
    )
    for workload in config.workloads:
        seconds = sum(
            per_arm * (workload.steps * costs[workload.name][arm] / 1e3 + SETUP_SECONDS[workload.name])
            for arm in workload.arms
        )
        runs = per_arm * len(workload.arms)
        total_runs += runs
        total_seconds += seconds
        print(
            f"{workload.name}: {runs} runs × {workload.steps} steps, "
            + ", ".join(f"{arm} {costs[workload.name][arm]:.1f}" for arm in workload.arms)
            + f" ms/step: {seconds:,.0f} CPU-s"
        )
    print(
        f"total: {total_runs} runs, {total_seconds:,.0f} CPU-s = {total_seconds / 3600:.2f} CPU-hours = "
        f"{total_seconds / 3600 / CORES:.2f} h on {CORES} cores"
    )
    m = len(config.workloads)
    for std in PLANNING_STD:
        mde = minimum_detectable_effect(std, config.seeds, config.alpha, config.power, m, one_sided=True)
        print(
            f"smallest detectable difference (one-sided paired t, α = {config.alpha}/{m}, power {config.power}, "
            f"n = {config.seeds}, s = {std}): {mde['exact']:.4f} nats (approximation {mde['approximate']:.4f})"
        )
    for n in range(4, config.seeds + 1):
        mde = minimum_detectable_effect(PLANNING_STD[0], n, config.alpha, config.power, m, one_sided=True)["exact"]
        print(f"  n = {n}: {mde:.4f}")
    assert math.isfinite(total_seconds)


if __name__ == "__main__":
    main()
