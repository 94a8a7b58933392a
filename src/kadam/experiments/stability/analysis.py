"""Summaries of the stability protocols' cells, computed over every cell together (THEORY §2, §3, §5).

The training protocol runs one cell per (learning rate, seed); :func:`summarize_training_protocol` summarizes
the rows of all of them at once: per learning rate, the agreement of each boundary with the measured class
(:data:`~kadam.experiments.stability.protocol.CRITERION`) with an interval over seeds, the measured-unstable
fraction per region, and the η trend. :func:`growth_rates` sets the measured late-phase slopes against the
predicted rate ρ = ln β − ½ ln γ (THEORY §2). :func:`margin_analysis` tests the paper's margin claim within β
over the runs that trained, with Holm's correction over the family. Every verdict rule the section uses
reads these numbers; none reads a point estimate alone where an interval over seeds exists.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal

import numpy as np
from scipy import stats

from kadam.experiments.stability.protocol import (
    CRITERION,
    DIVERGENCE_FACTOR,
    REGIONS,
    TrainingSizes,
    loss_diverged,
    training_protocol,
)

__all__ = [
    "AGREEMENT_BAR",
    "CONFIDENCE",
    "EtaTrend",
    "RATE_FACTOR",
    "agreement_verdict",
    "eta_trend",
    "growth_rates",
    "growth_verdict",
    "holm",
    "margin_analysis",
    "margin_verdict_rule",
    "mean_interval",
    "proportion_interval",
    "region_versus_harm",
    "summarize_training_protocol",
    "training_experiment",
]

EtaTrend = Literal["none", "widens", "narrows", "not monotone"]
CONFIDENCE = 0.95
"""Confidence of every interval over seeds (Student t)."""
AGREEMENT_BAR = 0.9
"""A boundary describes the measured region at η when its agreement's interval lies at or above this."""
RATE_FACTOR = 2.0
"""A measured growth rate matches the predicted ρ when its interval lies within [ρ/RATE_FACTOR, ρ·RATE_FACTOR]."""
BOUNDARIES = (("exact", "stable_exact"), ("paper", "stable_paper"))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean of ``values`` (over seeds) and its Student-t interval; ``low``/``high`` are None with < 2 values.

    Non-finite values are dropped first; ``n`` counts the values kept."""
    kept = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if kept.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(kept.mean())
    if kept.size < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = float(stats.t.ppf(0.5 + confidence / 2.0, kept.size - 1)) * float(kept.std(ddof=1)) / math.sqrt(kept.size)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(kept.size)}


def eta_trend(unstable_by_learning_rate: Mapping[float, float]) -> EtaTrend:
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


def _by(rows: Sequence[Mapping[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    grouped: dict[tuple[Any, ...], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[tuple(row[key] for key in keys)].append(row)
    return dict(grouped)


def proportion_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper–Pearson (exact binomial) interval for a proportion; (0, 1) for no trials."""
    if trials == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1.0 - tail, successes + 1, trials - successes))
    return low, high


def _agreement(rows: Sequence[Mapping[str, Any]], measured: str, predicted_stable: str) -> dict[str, Any]:
    """The fraction of runs (points × seeds) whose measured class equals the boundary's prediction, with its
    Clopper–Pearson interval over those runs (``low``/``high`` None with fewer than two seeds, where a
    verdict needs more seeds), and the fraction per seed."""
    agree = [row[measured] == (not row[predicted_stable]) for row in rows]
    seeds = _by(rows, "seed")
    low, high = proportion_interval(sum(agree), len(agree))
    two = len(seeds) >= 2
    return {
        "mean": float(np.mean(agree)) if agree else None,
        "low": low if two else None,
        "high": high if two else None,
        "n": len(agree),
        "per_seed": [
            float(np.mean([r[measured] == (not r[predicted_stable]) for r in subset]))
            for _, subset in sorted(seeds.items())
        ],
    }


def summarize_training_protocol(
    rows: Sequence[Mapping[str, Any]],
    learning_rates: Sequence[float],
    sizes: Mapping[str, int],
) -> dict[str, Any]:
    """Every training-protocol row of every (η, seed) cell, summarized.

    Per learning rate: points, seeds, mean count (over seeds) measured unstable in the whole run and in the
    late phase, predicted unstable by γ = β² and by γ = β/(2−β), the agreement of each boundary with the
    measured class in both windows (``agreement_exact``, ``late_agreement_paper``, ...: the fraction of runs;
    under ``intervals`` the same keys with an exact binomial interval and the fraction per seed), and per
    region of :data:`~kadam.experiments.stability.protocol.REGIONS` the fraction of runs measured unstable.
    Then the η trend (:func:`eta_trend`) of the mean counts, whole run and late phase.
    """
    per_learning_rate = []
    for lr in learning_rates:
        subset = [row for row in rows if row["learning_rate"] == float(lr)]
        seeds = sorted({row["seed"] for row in subset})
        points = len({(row["beta"], row["gamma"]) for row in subset})
        entry: dict[str, Any] = {
            "learning_rate": float(lr),
            "points": points,
            "seeds": seeds,
            "measured_unstable": sum(row["unstable"] for row in subset) / max(len(seeds), 1),
            "measured_late_unstable": sum(row["late_unstable"] for row in subset) / max(len(seeds), 1),
            "diverged": sum(row["diverged"] for row in subset),
            "predicted_unstable_exact": points - len({(r["beta"], r["gamma"]) for r in subset if r["stable_exact"]}),
            "predicted_unstable_paper": points - len({(r["beta"], r["gamma"]) for r in subset if r["stable_paper"]}),
        }
        entry["intervals"] = {}
        for name, predicted in BOUNDARIES:
            for window, measured in (("", "unstable"), ("late_", "late_unstable")):
                agreement = _agreement(subset, measured, predicted)
                entry[f"{window}agreement_{name}"] = agreement["mean"]
                entry["intervals"][f"{window}agreement_{name}"] = agreement
        entry["late_unstable_by_region"] = {
            region: (
                float(np.mean([row["late_unstable"] for row in subset if row["region"] == region]))
                if any(row["region"] == region for row in subset)
                else None
            )
            for region in REGIONS
        }
        per_learning_rate.append(entry)
    trend = (
        eta_trend({e["learning_rate"]: e["measured_unstable"] for e in per_learning_rate})
        if per_learning_rate
        else "none"
    )
    late_trend = (
        eta_trend({e["learning_rate"]: e["measured_late_unstable"] for e in per_learning_rate})
        if per_learning_rate
        else "none"
    )
    return {
        "protocol": "training",
        "criterion": CRITERION,
        "sizes": asdict(TrainingSizes(**sizes)),
        "learning_rates": [float(lr) for lr in learning_rates],
        "seeds": sorted({row["seed"] for row in rows}),
        "points": sorted({(row["beta"], row["gamma"]) for row in rows}),
        "cpu_seconds": sum(row["cpu_seconds"] for row in rows),
        "per_learning_rate": per_learning_rate,
        "trend": trend,
        "late_trend": late_trend,
        "rows": list(rows),
    }


def training_experiment(
    points: Sequence[tuple[float, float]],
    learning_rates: Sequence[float],
    seeds: Sequence[int] = (0,),
    sizes: TrainingSizes | None = None,
) -> dict[str, Any]:
    """The training protocol over ``points × learning_rates × seeds`` in this process, summarized (``sizes``:
    :class:`TrainingSizes`' defaults when None)."""
    sizes = sizes or TrainingSizes()
    rows = [
        row
        for lr in learning_rates
        for seed in seeds
        for row in training_protocol([], [], lr, {**asdict(sizes), "seed": seed}, points)["rows"]
    ]
    return summarize_training_protocol(rows, learning_rates, asdict(sizes))


def agreement_verdict(per_learning_rate: Sequence[Mapping[str, Any]], key: str, bar: float = AGREEMENT_BAR) -> str:
    """The verdict on "this boundary separates measured-stable from measured-unstable runs" from
    ``entry["intervals"][key]`` (an agreement with its interval, :func:`summarize_training_protocol`) at every η: "confirmed" if every interval's lower end is
    ≥ ``bar``; "refuted" if some interval's upper end is below ``bar``; "not resolved at this budget"
    otherwise, and whenever an η has no interval (fewer than two seeds)."""
    agreements = [entry["intervals"][key] for entry in per_learning_rate]
    if not agreements or any(a["low"] is None for a in agreements):
        return "not resolved at this budget"
    if all(a["low"] >= bar for a in agreements):
        return "confirmed"
    if any(a["high"] < bar for a in agreements):
        return "refuted"
    return "not resolved at this budget"


def growth_rates(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (β, γ, η): the predicted rate ρ = ln β − ½ ln γ (THEORY §2) and the measured late-phase slope of
    ln ‖u_n‖_∞ per step over seeds (mean and interval, :func:`mean_interval`), with the whole-run slope's
    mean, for every point of the grid (the claim concerns the points with ρ > 0)."""
    out = []
    for (beta, gamma, lr), subset in sorted(_by(rows, "beta", "gamma", "learning_rate").items()):
        late = mean_interval([row["late_phase_slope"] for row in subset])
        out.append(
            {
                "beta": beta,
                "gamma": gamma,
                "learning_rate": lr,
                "region": subset[0]["region"],
                "predicted_rate": subset[0]["predicted_rate"],
                "late_slope": late,
                "slope_mean": mean_interval([row["slope"] for row in subset])["mean"],
                "diverged": sum(row["diverged"] for row in subset),
                "runs": len(subset),
            }
        )
    return out


def growth_verdict(rates: Sequence[Mapping[str, Any]], factor: float = RATE_FACTOR) -> dict[str, Any]:
    """The verdict on the paper's growth claim over the points with ρ > 0 (outside γ > β²).

    A point *matches* when its late-slope interval lies within [ρ/``factor``, ρ·``factor``]; it is *too slow*
    when the interval's upper end is below ρ/``factor``; a wider interval decides neither. "confirmed": every point matches; "refuted": at least
    half are too slow; otherwise, or when a point has no interval (fewer than two seeds), "not resolved at
    this budget". Returns the verdict and the counts.
    """
    outside = [r for r in rates if r["predicted_rate"] > 0]
    slow = [
        r
        for r in outside
        if r["late_slope"]["high"] is not None and r["late_slope"]["high"] < r["predicted_rate"] / factor
    ]
    match = [
        r
        for r in outside
        if r["late_slope"]["high"] is not None
        and r["late_slope"]["low"] >= r["predicted_rate"] / factor
        and r["late_slope"]["high"] <= r["predicted_rate"] * factor
    ]
    resolved = bool(outside) and all(r["late_slope"]["low"] is not None for r in outside)
    if resolved and len(match) == len(outside):
        verdict = "confirmed"
    elif resolved and 2 * len(slow) >= len(outside):
        verdict = "refuted"
    else:
        verdict = "not resolved at this budget"
    ratios = [r["late_slope"]["mean"] / r["predicted_rate"] for r in outside if r["late_slope"]["mean"] is not None]
    return {
        "verdict": verdict,
        "points": len(outside),
        "too_slow": len(slow),
        "match": len(match),
        "largest_ratio": max(ratios) if ratios else None,
        "median_ratio": float(np.median(ratios)) if ratios else None,
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sorted ascending, p_(i) × (m − i + 1) (i from 1),
    made non-decreasing, capped at 1. Rejecting where the adjusted value is < α controls the family-wise
    error at α."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def margin_analysis(
    cells: Sequence[Mapping[str, Any]],
    alpha: float = 0.05,
    divergence_factor: float = DIVERGENCE_FACTOR,
    minimum_runs: int = 4,
) -> dict[str, Any]:
    """The paper's margin claim (THEORY §5), tested within β over the runs that trained.

    ``cells`` are :func:`~kadam.experiments.stability.protocol.margin_runs` results. The margin is
    −ρ = ½ ln γ − ln β (THEORY §2). Rules, per run: **diverged** iff its validation loss is missing or
    non-finite or above ``divergence_factor`` × the untrained model's validation loss
    (:func:`~kadam.experiments.stability.protocol.loss_diverged`); **trained** iff not diverged and its
    validation loss is below the constant predictor's. Per (η, β) stratum with at least ``minimum_runs``
    trained runs and more than one margin and loss: Spearman's ρ of margin against validation loss (γ is the
    only thing that varies within β, so β cannot confound it) and its two-sided p-value; Holm's correction
    (:func:`holm`) over every tested stratum; a stratum is significant iff its adjusted p < ``alpha``. Per η:
    runs, trained, diverged (with β, γ, seed and loss), and the median validation loss of the trained runs
    (the η-dependence).
    """
    runs = []
    for cell in cells:
        for run in cell["runs"]:
            beta, gamma = run["betas"]
            loss = run["validation_loss"]
            diverged = bool(
                run["diverged"] or loss_diverged(loss, cell["untrained_validation_loss"], divergence_factor)
            )
            runs.append(
                {
                    "lr": cell["lr"],
                    "seed": cell["seed"],
                    "beta": beta,
                    "gamma": gamma,
                    "margin": 0.5 * math.log(gamma) - math.log(beta),
                    "validation_loss": loss,
                    "diverged": diverged,
                    "trained": bool(not diverged and loss < cell["constant_predictor_loss"]),
                    "untrained_loss": cell["untrained_validation_loss"],
                    "constant_predictor_loss": cell["constant_predictor_loss"],
                }
            )
    strata = []
    for (lr, beta), subset in sorted(_by(runs, "lr", "beta").items()):
        trained = [r for r in subset if r["trained"]]
        margins, losses = [r["margin"] for r in trained], [r["validation_loss"] for r in trained]
        tested = len(trained) >= minimum_runs and len(set(margins)) > 1 and len(set(losses)) > 1
        result = stats.spearmanr(margins, losses) if tested else None
        rho = float(result.statistic) if result is not None and math.isfinite(result.statistic) else None
        strata.append(
            {
                "lr": lr,
                "beta": beta,
                "runs": len(subset),
                "trained": len(trained),
                "spearman_rho": rho,
                "p_value": None if rho is None else float(result.pvalue),
            }
        )
    tested = [s for s in strata if s["p_value"] is not None]
    for stratum, adjusted in zip(tested, holm([s["p_value"] for s in tested])):
        stratum["holm_p"] = adjusted
    for stratum in strata:
        stratum.setdefault("holm_p", None)
        stratum["significant"] = bool(stratum["holm_p"] is not None and stratum["holm_p"] < alpha)
    per_learning_rate = []
    for (lr,), subset in sorted(_by(runs, "lr").items()):
        trained = [r["validation_loss"] for r in subset if r["trained"]]
        per_learning_rate.append(
            {
                "lr": lr,
                "runs": len(subset),
                "trained": len(trained),
                "diverged": sum(r["diverged"] for r in subset),
                "median_trained_loss": float(np.median(trained)) if trained else None,
                "constant_predictor_loss": subset[0]["constant_predictor_loss"],
                "untrained_loss": float(np.median([r["untrained_loss"] for r in subset])),
            }
        )
    return {
        "alpha": alpha,
        "divergence_factor": divergence_factor,
        "minimum_runs": minimum_runs,
        "runs": runs,
        "strata": strata,
        "tests": len(tested),
        "per_learning_rate": per_learning_rate,
        "diverged": [
            {k: r[k] for k in ("lr", "seed", "beta", "gamma", "validation_loss")} for r in runs if r["diverged"]
        ],
    }


def margin_verdict_rule(analysis: Mapping[str, Any]) -> str:
    """The verdict on "a larger margin gives a lower validation loss" from :func:`margin_analysis`:
    "refuted" if some stratum is significantly positive (after Holm) and none significantly negative;
    "confirmed" if at least half of the tested strata are significantly negative and none positive;
    "not resolved at this budget" otherwise (also when no stratum could be tested)."""
    significant = [s for s in analysis["strata"] if s["significant"]]
    negative = [s for s in significant if s["spearman_rho"] < 0]
    positive = [s for s in significant if s["spearman_rho"] > 0]
    if positive and not negative:
        return "refuted"
    if analysis["tests"] and not positive and 2 * len(negative) >= analysis["tests"]:
        return "confirmed"
    return "not resolved at this budget"


def region_versus_harm(rows: Sequence[Mapping[str, Any]], tolerance: float = 0.1) -> dict[str, Any]:
    """Does leaving γ > β² cost training loss? Per learning rate, each point outside γ > β² against the
    points inside both regions.

    Reference: the largest mean (over seeds) final training loss among the inside-both points at that η.
    An outside point is **harmed** if a seed's run diverged or the lower end of its final-loss interval over
    seeds is above (1 + ``tolerance``) × the reference; **unharmed** if the upper end is at or below it;
    otherwise unresolved (also with one seed, where there is no interval).
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    per_rate = []
    for lr in sorted({row["learning_rate"] for row in rows}, reverse=True):
        subset = [row for row in rows if row["learning_rate"] == lr]
        inside = [
            mean_interval([r["final_loss"] for r in group])["mean"]
            for (_, _), group in _by([r for r in subset if r["region"] == REGIONS[2]], "beta", "gamma").items()
        ]
        inside = [value for value in inside if value is not None]
        reference = max(inside) * (1 + tolerance) if inside else None
        points = []
        for (beta, gamma), group in sorted(_by([r for r in subset if not r["stable_exact"]], "beta", "gamma").items()):
            loss = mean_interval([r["final_loss"] for r in group])
            if any(r["diverged"] for r in group) or (
                reference is not None and loss["low"] is not None and loss["low"] > reference
            ):
                state = "harmed"
            elif reference is not None and loss["high"] is not None and loss["high"] <= reference:
                state = "unharmed"
            else:
                state = "unresolved"
            points.append({"beta": beta, "gamma": gamma, "final_loss": loss, "state": state})
        per_rate.append({"learning_rate": lr, "reference": reference, "points": points})
    states = [p["state"] for e in per_rate for p in e["points"]]
    return {
        "tolerance": tolerance,
        "per_learning_rate": per_rate,
        "outside": len(states),
        "harmed": states.count("harmed"),
        "unharmed": states.count("unharmed"),
        "unresolved": states.count("unresolved"),
    }
