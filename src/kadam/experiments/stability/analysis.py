"""Summaries of the stability protocols' cells, computed over every cell together (THEORY §2, §5).

The training protocol runs one cell per learning rate; :func:`summarize_training_protocol` summarizes the
rows of all of them at once, so every number (per-η counts, the η-widening trend, CPU seconds) covers every
learning rate. :func:`eta_trend` is the one rule for "does the measured stable region widen as η shrinks";
``results.json`` and the report's prose both read its verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal

import numpy as np
from scipy import stats

from kadam.experiments.stability.protocol import CRITERION, TrainingSizes, training_protocol

__all__ = [
    "EtaTrend",
    "bound_versus_harm",
    "eta_trend",
    "margin_correlation_without_diverged",
    "stability_margin_correlation",
    "summarize_training_protocol",
    "training_experiment",
    "widening",
]

EtaTrend = Literal["none", "widens", "narrows", "not monotone"]


def eta_trend(unstable_by_learning_rate: Mapping[float, int]) -> EtaTrend:
    """How the count of measured-unstable points moves as η shrinks, over every learning rate given.

    Counts read from the largest η to the smallest: all equal → "none"; never increasing (and not all
    equal) → "widens" (the measured stable region widens as η shrinks, as the paper's reviewers observed);
    never decreasing → "narrows"; otherwise "not monotone". Needs at least one learning rate.
    """
    if not unstable_by_learning_rate:
        raise ValueError("unstable_by_learning_rate must hold at least one learning rate")
    counts = [unstable_by_learning_rate[lr] for lr in sorted(unstable_by_learning_rate, reverse=True)]
    pairs = list(zip(counts, counts[1:]))
    if len(set(counts)) == 1:
        return "none"
    if all(a >= b for a, b in pairs):
        return "widens"
    if all(a <= b for a, b in pairs):
        return "narrows"
    return "not monotone"


def _agreement(rows: Sequence[Mapping[str, Any]], measured: str, predicted_stable: str) -> float:
    return float(np.mean([row[measured] == (not row[predicted_stable]) for row in rows]))


def widening(rows: Sequence[Mapping[str, Any]], per_learning_rate: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The η-widening verdict over every learning rate (:func:`eta_trend` of the whole-run and late counts).

    ``widens``/``widens_late`` are ``trend == "widens"`` / ``late_trend == "widens"``; ``excess_shrinks``:
    every point outside γ = β² has a smaller excess at the smallest η than at the largest (None with one η).
    """
    largest = max(per_learning_rate, key=lambda summary: summary["learning_rate"])
    smallest = min(per_learning_rate, key=lambda summary: summary["learning_rate"])
    trend = eta_trend({s["learning_rate"]: s["measured_unstable"] for s in per_learning_rate})
    late_trend = eta_trend({s["learning_rate"]: s["measured_late_unstable"] for s in per_learning_rate})
    unstable_points = {(row["beta"], row["gamma"]) for row in rows if not row["stable_exact"]}
    excess = {(row["beta"], row["gamma"], row["learning_rate"]): row["excess"] for row in rows}
    return {
        "largest_learning_rate": largest["learning_rate"],
        "smallest_learning_rate": smallest["learning_rate"],
        "trend": trend,
        "late_trend": late_trend,
        "widens": trend == "widens",
        "widens_late": late_trend == "widens",
        "excess_shrinks": all(
            excess[(b, g, smallest["learning_rate"])] < excess[(b, g, largest["learning_rate"])] for b, g in unstable_points
        ) if unstable_points and largest is not smallest else None,
    }


def summarize_training_protocol(
    rows: Sequence[Mapping[str, Any]], betas: Sequence[float], gammas: Sequence[float],
    learning_rates: Sequence[float], sizes: Mapping[str, int],
) -> dict[str, Any]:
    """Per learning rate: points measured unstable, agreement of the measured class with γ = β² and with
    γ = β/(2−β), and per β the measured boundary (the largest γ of the grid classified unstable); then the
    η-widening verdict (:func:`widening`) over all of them. ``rows`` are the training-protocol rows of every
    learning rate."""
    per_learning_rate = []
    for lr in learning_rates:
        subset = [row for row in rows if row["learning_rate"] == float(lr)]
        measured_boundary = {}
        for beta in betas:
            unstable_gammas = [row["gamma"] for row in subset if row["beta"] == float(beta) and row["unstable"]]
            measured_boundary[str(float(beta))] = max(unstable_gammas) if unstable_gammas else None
        per_learning_rate.append({
            "learning_rate": float(lr),
            "points": len(subset),
            "measured_unstable": sum(row["unstable"] for row in subset),
            "predicted_unstable_exact": sum(not row["stable_exact"] for row in subset),
            "predicted_unstable_paper": sum(not row["stable_paper"] for row in subset),
            "measured_late_unstable": sum(row["late_unstable"] for row in subset),
            "agreement_exact": _agreement(subset, "unstable", "stable_exact"),
            "agreement_paper": _agreement(subset, "unstable", "stable_paper"),
            "late_agreement_exact": _agreement(subset, "late_unstable", "stable_exact"),
            "late_agreement_paper": _agreement(subset, "late_unstable", "stable_paper"),
            "median_excess_of_unstable_exact": float(np.median([row["excess"] for row in subset if not row["stable_exact"]]))
            if any(not row["stable_exact"] for row in subset) else None,
            "largest_unstable_gamma_per_beta": measured_boundary,
        })
    return {"protocol": "training", "criterion": CRITERION, "sizes": asdict(TrainingSizes(**sizes)), "betas": [float(b) for b in betas],
            "gammas": [float(g) for g in gammas], "learning_rates": [float(lr) for lr in learning_rates],
            "cpu_seconds": sum(row["cpu_seconds"] for row in rows), "per_learning_rate": per_learning_rate,
            "widening": widening(rows, per_learning_rate), "rows": list(rows)}


def training_experiment(
    betas: Sequence[float], gammas: Sequence[float], learning_rates: Sequence[float],
    sizes: TrainingSizes = TrainingSizes(),
) -> dict[str, Any]:
    """The training protocol over ``betas × gammas × learning_rates`` in this process, summarized."""
    rows = [row for lr in learning_rates for row in training_protocol(betas, gammas, lr, asdict(sizes))["rows"]]
    return summarize_training_protocol(rows, betas, gammas, learning_rates, asdict(sizes))


def stability_margin_correlation(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Does validation loss fall as the margin to the stable boundary grows? (THEORY §5, the paper's claim.)

    ``runs`` are :func:`kadam.experiments.training.protocol.train_run` results with ``betas`` = (β, γ) set. The margin is −ρ = ½ ln γ − ln β, the
    per-step decay rate of a past gradient's influence on the update (THEORY §2; positive inside the region
    γ > β², negative outside). Per learning rate: Spearman's rank correlation between margin and final
    validation loss (a diverged run ranks worst; None when either is constant), its two-sided p-value, and the
    points. The paper's claim
    predicts a negative correlation; it is claimed only at p < 0.05.
    """
    by_rate: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        beta, gamma = run["betas"]
        margin = 0.5 * math.log(gamma) - math.log(beta)
        by_rate.setdefault(run["lr"], []).append(
            {"beta": beta, "gamma": gamma, "margin": margin, "validation_loss": run["validation_loss"],
             "diverged": run["diverged"]}
        )
    per_rate = []
    for lr, points in sorted(by_rate.items()):
        losses = [math.inf if p["validation_loss"] is None else p["validation_loss"] for p in points]
        margins = [p["margin"] for p in points]
        defined = len(points) > 2 and len(set(losses)) > 1 and len(set(margins)) > 1  # else ρ is undefined
        correlation = stats.spearmanr(margins, losses) if defined else None
        rho = None if correlation is None or not math.isfinite(correlation.statistic) else float(correlation.statistic)
        p_value = None if rho is None else float(correlation.pvalue)
        per_rate.append({
            "lr": lr, "points": points, "spearman_rho": rho, "p_value": p_value,
            "claimed": bool(p_value is not None and p_value < 0.05),
        })
    return {"per_learning_rate": per_rate}




def bound_versus_harm(rows: Sequence[Mapping[str, Any]], tolerance: float = 0.1) -> dict[str, Any]:
    """Separate "the update bound is exceeded" from "training is harmed" in the training-protocol rows.

    Per learning rate: the range of final training loss of the runs measured stable and of those measured
    unstable that did not diverge, and which unstable runs are *harmed*: diverged, or a final loss above the
    stable runs' largest by more than ``tolerance`` (relative). ``unstable_unharmed`` counts the rest: runs
    whose updates exceeded the bound but which trained as well as the stable ones. ``diverged`` lists every
    (β, γ, η) whose loss became non-finite.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    per_rate = []
    for lr in sorted({row["learning_rate"] for row in rows}, reverse=True):
        subset = [row for row in rows if row["learning_rate"] == lr]
        stable = [row["final_loss"] for row in subset if not row["unstable"] and _finite(row["final_loss"])]
        unstable = [row for row in subset if row["unstable"]]
        ceiling = max(stable) * (1 + tolerance) if stable else None
        harmed = [row for row in unstable if row["diverged"] or not _finite(row["final_loss"])
                  or (ceiling is not None and row["final_loss"] > ceiling)]
        trained = [row["final_loss"] for row in unstable if not row["diverged"] and _finite(row["final_loss"])]
        per_rate.append({
            "learning_rate": lr, "stable": len(subset) - len(unstable), "unstable": len(unstable),
            "unstable_unharmed": len(unstable) - len(harmed) if ceiling is not None else None,
            "harmed": [{"beta": row["beta"], "gamma": row["gamma"], "diverged": bool(row["diverged"]),
                        "final_loss": row["final_loss"]} for row in harmed],
            "stable_loss_range": [min(stable), max(stable)] if stable else None,
            "unstable_loss_range": [min(trained), max(trained)] if trained else None,
        })
    return {
        "tolerance": tolerance,
        "per_learning_rate": per_rate,
        "unstable": sum(entry["unstable"] for entry in per_rate),
        "unstable_unharmed": sum(entry["unstable_unharmed"] or 0 for entry in per_rate),
        "diverged": [{"beta": row["beta"], "gamma": row["gamma"], "learning_rate": row["learning_rate"]}
                     for row in rows if row["diverged"]],
    }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def margin_correlation_without_diverged(correlation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per learning rate: Spearman ρ of validation loss with the margin again, without the diverged runs.

    ``correlation`` is :func:`stability_margin_correlation`'s result. A correlation that is significant with
    the diverged runs and not without them rests on the divergences (``rests_on_divergence``). ρ is None
    where fewer than 3 runs remain or either variable is constant.
    """
    out = []
    for entry in correlation["per_learning_rate"]:
        kept = [p for p in entry["points"] if not p["diverged"] and _finite(p["validation_loss"])]
        losses, margins = [p["validation_loss"] for p in kept], [p["margin"] for p in kept]
        rho = p_value = None
        if len(kept) > 2 and len(set(losses)) > 1 and len(set(margins)) > 1:
            result = stats.spearmanr(margins, losses)
            if math.isfinite(result.statistic):
                rho, p_value = float(result.statistic), float(result.pvalue)
        diverged = len(entry["points"]) - len(kept)
        out.append({"lr": entry["lr"], "diverged": diverged, "runs": len(kept), "spearman_rho": rho,
                    "p_value": p_value, "claimed": bool(p_value is not None and p_value < 0.05),
                    "rests_on_divergence": bool(entry["claimed"] and diverged > 0
                                                and not (p_value is not None and p_value < 0.05))})
    return out
