"""Section 4's statistics from the raw runs: learning-rate selection, paired comparisons, the summary."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from kadam.experiments.workloads import OPTIMIZERS

__all__ = ["CENTRAL_PAIRING", "REFERENCE", "paired_comparison", "select_learning_rates", "summarize_training"]

REFERENCE = "adamw"
CENTRAL_PAIRING = (("digits-cnn-bn", "adam"), ("digits-cnn", "kadam2"))
"""(task, optimizer) of the two arms of THEORY §4's pairing: Adam with BatchNorm vs 2-Adam without."""


def _loss_or_infinity(run: Mapping[str, Any], split: str) -> float:
    value = run[f"{split}_loss"]
    return math.inf if value is None else float(value)


def select_learning_rates(tuning_runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Best learning rate per (task, optimizer): the lowest mean validation loss over the tuning seeds.

    Returns ``{task: {optimizer: {"lr", "validation_loss", "grid": {lr: mean validation loss or None}}}}``.
    A diverged run counts as +∞; ties keep the smaller rate. ``at_grid_edge`` flags a best rate on the
    boundary of the grid (the optimum may lie outside it).
    """
    grouped: dict[tuple[str, str], dict[float, list[float]]] = {}
    for run in tuning_runs:
        grouped.setdefault((run["task"], run["optimizer"]), {}).setdefault(run["lr"], []).append(
            _loss_or_infinity(run, "validation")
        )
    selection: dict[str, dict[str, dict[str, Any]]] = {}
    for (task, optimizer), by_rate in sorted(grouped.items()):
        means = {lr: float(np.mean(losses)) for lr, losses in sorted(by_rate.items())}
        best = min(means, key=lambda lr: (means[lr], lr))
        rates = sorted(means)
        selection.setdefault(task, {})[optimizer] = {
            "lr": best,
            "validation_loss": means[best] if math.isfinite(means[best]) else None,
            "at_grid_edge": best in (rates[0], rates[-1]) and len(rates) > 1,
            "grid": {repr(lr): (loss if math.isfinite(loss) else None) for lr, loss in means.items()},
        }
    return selection


def paired_comparison(first: Sequence[float], second: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired Student-t comparison of ``first − second`` (e.g. test losses of two optimizers, seed by seed).

    Differences d_i = first_i − second_i; mean d̄, sample std s, interval d̄ ± t_{(1+c)/2, n−1} · s/√n.
    ``significant`` is True only when the interval excludes zero. Needs n ≥ 2 pairs.
    """
    if len(first) != len(second):
        raise ValueError(f"first and second must pair up, got {len(first)} and {len(second)} values")
    if len(first) < 2:
        raise ValueError(f"a paired comparison needs at least 2 pairs, got {len(first)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    differences = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    n = len(differences)
    if not np.all(np.isfinite(differences)):
        return {"n": n, "mean_difference": None, "ci_low": None, "ci_high": None, "confidence": confidence,
                "significant": False, "note": "a run diverged"}
    mean = float(differences.mean())
    half_width = float(stats.t.ppf((1 + confidence) / 2, n - 1) * differences.std(ddof=1) / math.sqrt(n))
    low, high = mean - half_width, mean + half_width
    return {"n": n, "mean_difference": mean, "ci_low": low, "ci_high": high, "confidence": confidence,
            "significant": bool(low > 0 or high < 0)}


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "n": len(finite),
        "diverged": len(values) - len(finite),
    }


def _test_losses(runs: Sequence[Mapping[str, Any]]) -> list[float]:
    return [_loss_or_infinity(run, "test") for run in sorted(runs, key=lambda run: run["seed"])]


def summarize_training(
    tuning_runs: Sequence[Mapping[str, Any]], evaluation_runs: Sequence[Mapping[str, Any]], confidence: float = 0.95
) -> dict[str, Any]:
    """Everything section 4 reports, from the raw runs (all numbers JSON-serialisable).

    Keys: ``selection`` (see :func:`select_learning_rates`), ``lr_ratio_to_adamw`` ({task: {optimizer:
    ratio}}), ``evaluation`` ({task: {optimizer: {"test_loss", "test_accuracy": mean/std, "lr"}}}),
    ``versus_adamw`` ({task: {optimizer: paired comparison}}), ``central_pairing`` and ``curves`` ({task:
    {optimizer: {"steps", "loss"}}}: mean training loss over the evaluation seeds that did not diverge).
    """
    selection = select_learning_rates(tuning_runs)
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for run in evaluation_runs:
        grouped.setdefault(run["task"], {}).setdefault(run["optimizer"], []).append(run)

    evaluation: dict[str, dict[str, Any]] = {}
    versus: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, dict[str, list[float]]]] = {}
    for task, by_optimizer in sorted(grouped.items()):
        for optimizer, runs in sorted(by_optimizer.items()):
            evaluation.setdefault(task, {})[optimizer] = {
                "lr": selection[task][optimizer]["lr"],
                "test_loss": _mean_std([run["test_loss"] for run in runs]),
                "test_accuracy": _mean_std([run["test_accuracy"] for run in runs]),
                "seeds": sorted(run["seed"] for run in runs),
            }
            finished = [run for run in runs if not run["diverged"]]
            if finished:
                length = min(len(run["train_loss_curve"]) for run in finished)
                window = finished[0]["curve_window"]
                curves.setdefault(task, {})[optimizer] = {
                    "steps": [window * (i + 1) for i in range(length)],
                    "loss": np.mean([run["train_loss_curve"][:length] for run in finished], axis=0).tolist(),
                }
            if REFERENCE in by_optimizer:
                ratios.setdefault(task, {})[optimizer] = selection[task][optimizer]["lr"] / selection[task][REFERENCE]["lr"]
                if optimizer != REFERENCE:
                    versus.setdefault(task, {})[optimizer] = paired_comparison(
                        _test_losses(runs), _test_losses(by_optimizer[REFERENCE]), confidence
                    )
    (task_a, optimizer_a), (task_b, optimizer_b) = CENTRAL_PAIRING
    central = None
    if optimizer_a in grouped.get(task_a, {}) and optimizer_b in grouped.get(task_b, {}):
        central = {
            "first": {"task": task_a, "optimizer": optimizer_a, **evaluation[task_a][optimizer_a]},
            "second": {"task": task_b, "optimizer": optimizer_b, **evaluation[task_b][optimizer_b]},
            "difference": paired_comparison(
                _test_losses(grouped[task_a][optimizer_a]), _test_losses(grouped[task_b][optimizer_b]), confidence
            ),
        }
    return {
        "optimizers": {name: OPTIMIZERS[name].description for name in sorted({r["optimizer"] for r in evaluation_runs})},
        "selection": selection,
        "lr_ratio_to_adamw": ratios,
        "evaluation": evaluation,
        "versus_adamw": versus,
        "central_pairing": central,
        "curves": curves,
        "confidence": confidence,
    }


