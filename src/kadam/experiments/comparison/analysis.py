r"""The comparison's analysis: selection on validation, outcomes, paired statistics with Holm's correction,
the smallest detectable difference, cost to target, and :func:`analyse`, which turns the tagged runs of
:func:`kadam.experiments.comparison.protocol.train_trial` into every number the report shows.

Kept apart from the training protocol so that a change here re-analyses the cached runs instead of
recomputing them (a cell's key hashes the module that defines its function).

**Selection and reporting.** Each arm's best configuration is the trial with the lowest validation loss on
the tuning seed(s) over both tuning stages (a diverged trial counts as +∞; ties keep the earlier trial;
:func:`two_stage_change` records what the second stage changed). The best configuration is
retrained on ``seeds`` fresh seeds (never used in tuning) and reported on the *test* split. A seed fixes the
initialisation (the model is built under ``torch.random.fork_rng`` with that seed, so the global generator
is left as it was) and the batch order (a local ``torch.Generator``), so runs of different arms with one
seed are paired; architectures that agree (e.g. the GPT with and without LayerNorm) get the same initial
weights wherever they agree.

**Divergence as an outcome.** A run diverges when a training-loss window mean or a held-out loss is not
finite. It is never dropped: its outcome in every statistic is the test loss of the *untrained* model of
the same seed (``initial_test_loss``, measured before the first step), i.e. "as good as not training";
the number of diverged seeds is reported beside every mean, and a diverged run never reaches the target.

**Statistics.** For arm A against the reference R (AdamW) on one workload, paired differences
d_i = loss_A,i − loss_R,i over n seeds, mean d̄, sample standard deviation s: the paired t statistic
t = d̄ / (s/√n) on n − 1 degrees of freedom, its two-sided p-value, and Holm's step-down adjustment
(Holm 1979) over the *family* of all comparisons reported together: with the m p-values sorted
p_(1) ≤ … ≤ p_(m), p̃_(j) = max_{i ≤ j} min(1, (m − i + 1) p_(i)); a difference is significant when
p̃ ≤ α. Intervals are Bonferroni-adjusted, d̄ ± t_{1 − α/(2m), n−1} s/√n, which hold simultaneously for
the family (Holm's decisions can be sharper than these intervals, never weaker).

**Smallest detectable difference** (:func:`minimum_detectable_effect`): the smallest true mean difference
δ that the paired t test at Holm's strictest level α/m detects with probability ``power`` (0.8), given the
measured spread s: the root of P(|T| > t_{1 − α/(2m), n−1}) = power with T noncentral t (n − 1 degrees of
freedom, noncentrality δ√n / s); the textbook approximation is δ ≈ (t_{1 − α/(2m), n−1} + t_{power, n−1}) · s/√n.

**Cost per step.** The target is the worst final training loss (mean of the last curve window) among AdamW's
evaluation seeds, so every AdamW seed that did not diverge reaches it. For every run we report the first
step at which its training-loss window mean is at or below the target and the wall-clock seconds of
training up to that point, measured in the run (so a slower step is charged).

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import optimize, stats

from kadam.experiments.comparison.protocol import CONTROL, REFERENCE

__all__ = [
    "check_control_ties",
    "holm_adjust",
    "minimum_detectable_effect",
    "one_sided_family",
    "paired_t",
    "performance_profile",
    "performance_ratios",
    "select_best",
    "two_stage_change",
    "summarize_workload",
    "compare_to_reference",
    "adjust_family",
    "outcome",
    "summarize_arm",
    "analyse",
    "PHASES",
]

# --------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------


def paired_t(differences: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired t test of mean(differences) = 0: n, mean d̄, sample std s, t = d̄/(s/√n), df = n − 1, the
    two-sided p-value and the ``confidence`` interval d̄ ± t_{(1+c)/2, n−1} s/√n. With s = 0 the test is
    degenerate: p = 1 if d̄ = 0 (an exact tie), else 0; the interval is [d̄, d̄]."""
    values = np.asarray(differences, dtype=float)
    n = len(values)
    if n < 2:
        raise ValueError(f"differences must hold at least 2 pairs, got {n}")
    if not np.all(np.isfinite(values)):
        raise ValueError("differences must be finite (map a diverged run to its outcome first)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean, std = float(values.mean()), float(values.std(ddof=1))
    if std == 0:
        return {
            "n": n,
            "mean": mean,
            "std": 0.0,
            "t": None,
            "df": n - 1,
            "p_value": 1.0 if mean == 0 else 0.0,
            "confidence": confidence,
            "ci_low": mean,
            "ci_high": mean,
        }
    standard_error = std / math.sqrt(n)
    t = mean / standard_error
    p = float(2 * stats.t.sf(abs(t), n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * standard_error)
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "t": t,
        "df": n - 1,
        "p_value": p,
        "confidence": confidence,
        "ci_low": mean - half,
        "ci_high": mean + half,
    }


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order:
    p̃_(j) = max_{i ≤ j} min(1, (m − i + 1) p_(i)) over the ascending order. Rejecting p̃ ≤ α is Holm's
    procedure at family-wise error α."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p_values must be a sequence of numbers in [0, 1], got {list(p_values)}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def minimum_detectable_effect(
    std: float, n: int, alpha: float = 0.05, power: float = 0.8, family_size: int = 1, one_sided: bool = False
) -> dict[str, float]:
    """Smallest true mean paired difference the two-sided paired t test at level ``alpha / family_size``
    (Holm's strictest step) detects with probability ``power``, given the seed-to-seed std ``std`` of the
    differences and ``n`` pairs. ``exact``: the root δ of P(|T| > t_{1−α'/2, n−1}) = power, T ~ noncentral
    t(n − 1, δ√n/std); ``approximate``: (t_{1−α'/2, n−1} + t_{power, n−1}) · std/√n. 0 when std = 0.
    ``one_sided``: the one-sided test in the direction of δ, P(T > t_{1−α', n−1}) = power (α' not halved)."""
    if n < 2:
        raise ValueError(f"n must be ≥ 2, got {n}")
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std must be a finite number ≥ 0, got {std}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha}, power={power}")
    if family_size < 1:
        raise ValueError(f"family_size must be ≥ 1, got {family_size}")
    level = alpha / family_size
    df = n - 1
    critical = float(stats.t.ppf(1 - (level if one_sided else level / 2), df))
    approximate = (critical + float(stats.t.ppf(power, df))) * std / math.sqrt(n)
    if std == 0:
        return {"exact": 0.0, "approximate": 0.0, "level": level, "power": power, "n": n, "std": std}

    def power_at(noncentrality: float) -> float:
        if one_sided:
            return float(stats.nct.sf(critical, df, noncentrality))
        lower_tail = float(stats.nct.cdf(-critical, df, noncentrality))  # NaN far in the tail, where it is ≈ 0
        return float(stats.nct.sf(critical, df, noncentrality)) + (lower_tail if math.isfinite(lower_tail) else 0.0)

    upper = max(1.0, critical + float(stats.t.ppf(power, df)))
    while power_at(upper) < power:  # the approximation can undershoot for few degrees of freedom
        upper *= 2
    noncentrality = optimize.brentq(lambda nc: power_at(nc) - power, 0.0, upper)
    return {
        "exact": noncentrality * std / math.sqrt(n),
        "approximate": approximate,
        "level": level,
        "power": power,
        "n": n,
        "std": std,
    }


# --------------------------------------------------------------------------------------------------------
# Selection, outcomes and the summary of one workload
# --------------------------------------------------------------------------------------------------------


def _validation(run: Mapping[str, Any]) -> float:
    value = run["validation_loss"]
    return math.inf if run["diverged"] or value is None else float(value)


def outcome(run: Mapping[str, Any]) -> float:
    """A run's test loss for the statistics: its test loss, or for a diverged run the test loss of the
    untrained model of the same seed (see the module docstring)."""
    if run["diverged"] or run["test_loss"] is None:
        return float(run["initial_test_loss"])
    return float(run["test_loss"])


def select_best(trials: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The best trial of one arm: lowest mean validation loss over the tuning seeds (diverged = +∞; ties keep
    the earlier trial). ``trials`` are runs with a ``trial`` index. Returns ``{"trial", "hyperparameters",
    "validation_loss" (None if every trial diverged), "diverged_trials", "trials"}``."""
    if not trials:
        raise ValueError("trials must not be empty")
    by_trial: dict[int, list[Mapping[str, Any]]] = {}
    for run in trials:
        by_trial.setdefault(int(run["trial"]), []).append(run)
    means = {index: float(np.mean([_validation(run) for run in runs])) for index, runs in by_trial.items()}
    best = min(means, key=lambda index: (means[index], index))
    return {
        "trial": best,
        "hyperparameters": dict(by_trial[best][0]["hyperparameters"]),
        "validation_loss": means[best] if math.isfinite(means[best]) else None,
        "diverged_trials": sum(1 for value in means.values() if not math.isfinite(value)),
        "trials": len(means),
    }


def two_stage_change(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the second tuning stage changed for one arm: the selection over stage 1 alone (runs with
    ``stage`` 1) against the selection over both stages. Returns ``{"stage1_trial", "stage1_validation_loss",
    "trial", "validation_loss", "moved"}``, ``moved`` true when the selection is a stage-2 point."""
    stage1 = select_best([run for run in runs if run.get("stage", 1) == 1])
    both = select_best(runs)
    return {
        "stage1_trial": stage1["trial"],
        "stage1_validation_loss": stage1["validation_loss"],
        "stage1_lr": stage1["hyperparameters"]["lr"],
        "trial": both["trial"],
        "validation_loss": both["validation_loss"],
        "lr": both["hyperparameters"]["lr"],
        "moved": both["trial"] != stage1["trial"],
    }


def check_control_ties(control_runs: Sequence[Mapping[str, Any]], reference_runs: Sequence[Mapping[str, Any]]) -> int:
    """Assert that the k = 1 control reproduces the reference run for run (same hyperparameters and seed):
    identical validation and test losses and training curves. Returns the number of pairs checked; raises
    ``AssertionError`` naming the first mismatch (a mismatch means the pairing is broken)."""
    reference = {(canonical(run["hyperparameters"]), run["seed"]): run for run in reference_runs}
    checked = 0
    for run in control_runs:
        key = (canonical(run["hyperparameters"]), run["seed"])
        if key not in reference:
            continue
        other = reference[key]
        for field in ("validation_loss", "test_loss", "curve", "diverged"):
            if run[field] != other[field]:
                raise AssertionError(
                    f"control {run['arm']} differs from {other['arm']} on {run['workload']} seed {run['seed']} "
                    f"({field}: {run[field]!r} vs {other[field]!r}): the pairing is broken"
                )
        checked += 1
    return checked


def canonical(hyperparameters: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((name, float(value)) for name, value in hyperparameters.items()))


def _first_at_or_below(run: Mapping[str, Any], target: float) -> tuple[int | None, float | None]:
    for step, seconds, value in zip(run["curve_steps"], run["curve_seconds"], run["curve"]):
        if value is not None and value <= target:
            return step, seconds
    return None, None


def _spread(values: Sequence[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else None,
        "median": float(np.median(array)),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": len(array),
    }


def summarize_arm(runs: Sequence[Mapping[str, Any]], target: float | None) -> dict[str, Any]:
    """Test-loss outcome (mean/std/median/range over seeds, diverged counted), accuracy, steps and seconds to
    ``target``, seconds per step, and the median/min/max training curve over the seeds that did not diverge."""
    runs = sorted(runs, key=lambda run: run["seed"])
    finished = [run for run in runs if not run["diverged"]]
    accuracies = [run["test_accuracy"] for run in finished if run["test_accuracy"] is not None]
    reached = [_first_at_or_below(run, target) for run in runs] if target is not None else []
    steps_to = [step for step, _ in reached if step is not None]
    seconds_to = [seconds for _, seconds in reached if seconds is not None]
    curve: dict[str, Any] | None = None
    if finished:
        length = min(len(run["curve"]) for run in finished)
        stacked = np.asarray([run["curve"][:length] for run in finished], dtype=float)
        curve = {
            "steps": finished[0]["curve_steps"][:length],
            "median": np.median(stacked, axis=0).tolist(),
            "min": stacked.min(axis=0).tolist(),
            "max": stacked.max(axis=0).tolist(),
        }
    return {
        "seeds": [run["seed"] for run in runs],
        "test_loss": _spread([outcome(run) for run in runs]),
        "test_accuracy": _spread(accuracies) if accuracies else None,
        "diverged": len(runs) - len(finished),
        "target_reached": len(steps_to),
        "steps_to_target": _spread(steps_to) if steps_to else None,
        "seconds_to_target": _spread(seconds_to) if seconds_to else None,
        "seconds_per_step": float(np.median([run["seconds_per_step"] for run in runs])),
        "curve": curve,
    }


def compare_to_reference(
    runs_by_arm: Mapping[str, Sequence[Mapping[str, Any]]], reference: str = REFERENCE, confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Paired t of each arm's outcome minus the reference's, seed by seed (unadjusted; see
    :func:`adjust_family` for Holm). Only seeds present in both arms are paired."""
    reference_by_seed = {run["seed"]: outcome(run) for run in runs_by_arm[reference]}
    comparisons: dict[str, dict[str, Any]] = {}
    for arm, runs in runs_by_arm.items():
        if arm == reference:
            continue
        pairs = [
            (outcome(run), reference_by_seed[run["seed"]])
            for run in sorted(runs, key=lambda r: r["seed"])
            if run["seed"] in reference_by_seed
        ]
        comparisons[arm] = paired_t([a - b for a, b in pairs], confidence)
    return comparisons


def adjust_family(comparisons: Sequence[dict[str, Any]], alpha: float = 0.05, power: float = 0.8) -> None:
    """Add Holm-adjusted p-values (``p_holm``), ``significant`` (p_holm ≤ alpha), Bonferroni-adjusted
    simultaneous intervals (``ci_adjusted_low/high``) and the smallest detectable difference at Holm's
    strictest level (``mde``) to each comparison of one family, in place."""
    m = len(comparisons)
    if m == 0:
        return
    adjusted = holm_adjust([c["p_value"] for c in comparisons])
    for comparison, p_holm in zip(comparisons, adjusted):
        n, std, mean = comparison["n"], comparison["std"], comparison["mean"]
        half = float(stats.t.ppf(1 - alpha / (2 * m), n - 1) * std / math.sqrt(n))
        comparison.update(
            {
                "p_holm": p_holm,
                "significant": bool(p_holm <= alpha),
                "family_size": m,
                "alpha": alpha,
                "ci_adjusted_low": mean - half,
                "ci_adjusted_high": mean + half,
                "mde": minimum_detectable_effect(std, n, alpha, power, m)["exact"],
            }
        )


def one_sided_family(
    analysis: Mapping[str, Any], arm: str, alpha: float = 0.05, power: float = 0.8, result: str = "search"
) -> dict[str, Any]:
    """The preregistered test: on every workload of ``analysis`` where ``arm`` was compared with the reference,
    the one-sided paired t test of H0: mean(loss_arm − loss_reference) ≥ 0 against H1: < 0 (p = P(T ≤ t),
    T ~ t(n − 1); with s = 0, p = 0 for a negative mean and 1 otherwise), Holm's adjustment over those
    workloads (the family), the one-sided Bonferroni upper bound d̄ + t_{1−α/m, n−1} s/√n (simultaneous over
    the family), the two-sided Bonferroni interval at the same level, and the smallest difference the
    one-sided test at α/m detects with ``power`` given the measured s (:func:`minimum_detectable_effect`).
    ``verdict``: "confirmed" when every workload rejects H0 (at least one workload), "partly supported" when
    some do, "not confirmed" when none does; ``worse`` per workload: the two-sided interval lies above 0."""
    rows = []
    for workload, entry in analysis["workloads"].items():
        comparison = entry.get(result, {}).get("versus_reference", {}).get(arm)
        if comparison is not None:
            rows.append((workload, comparison))
    m = len(rows)
    tests = []
    for workload, comparison in rows:
        n, mean, std = comparison["n"], comparison["mean"], comparison["std"]
        df = n - 1
        if std == 0:
            p = 0.0 if mean < 0 else 1.0
            upper = low = high = mean
        else:
            error = std / math.sqrt(n)
            p = float(stats.t.cdf(mean / error, df))
            upper = mean + float(stats.t.ppf(1 - alpha / m, df)) * error
            half = float(stats.t.ppf(1 - alpha / (2 * m), df)) * error
            low, high = mean - half, mean + half
        tests.append(
            {
                "workload": workload,
                "n": n,
                "mean": mean,
                "std": std,
                "p_one_sided": p,
                "upper_bound": upper,
                "ci_low": low,
                "ci_high": high,
                "worse": bool(low > 0),
                "mde": minimum_detectable_effect(std, n, alpha, power, m, one_sided=True)["exact"],
            }
        )
    for test, p_holm in zip(tests, holm_adjust([t["p_one_sided"] for t in tests]) if tests else []):
        test["p_holm"] = p_holm
        test["rejects"] = bool(p_holm <= alpha)
    rejected = sum(t["rejects"] for t in tests)
    verdict = "confirmed" if tests and rejected == len(tests) else "partly supported" if rejected else "not confirmed"
    return {"arm": arm, "alpha": alpha, "power": power, "family_size": m, "tests": tests, "verdict": verdict}


def summarize_workload(
    evaluation_runs: Sequence[Mapping[str, Any]], confidence: float = 0.95, reference: str = REFERENCE
) -> dict[str, Any]:
    """Per-arm summaries and unadjusted paired comparisons with ``reference`` on one workload, from the
    evaluation runs of every arm. The target is the worst final training loss among the reference's seeds that
    did not diverge (None if all diverged). If the k = 1 control ran, :func:`check_control_ties` must pass."""
    by_arm: dict[str, list[Mapping[str, Any]]] = {}
    for run in evaluation_runs:
        by_arm.setdefault(run["arm"], []).append(run)
    if reference not in by_arm:
        raise ValueError(f"the reference arm {reference!r} has no evaluation runs")
    finals = [run["curve"][-1] for run in by_arm[reference] if not run["diverged"] and run["curve"]]
    target = max(finals) if finals else None
    control_pairs = check_control_ties(by_arm[CONTROL], by_arm[reference]) if CONTROL in by_arm else 0
    return {
        "target_train_loss": target,
        "arms": {
            arm: summarize_arm(by_arm[arm], target)
            for arm in sorted(by_arm, key=lambda name: (name != reference, name != CONTROL, name))
        },
        "versus_reference": compare_to_reference(by_arm, reference, confidence),
        "control_pairs_checked": control_pairs,
    }


def performance_ratios(metric: Mapping[str, Mapping[str, float | None]]) -> dict[str, list[float]]:
    """Dolan–Moré ratios: ``metric[workload][arm]`` (lower is better; None = ran and failed; an arm absent from a
    workload did not run there) divided by the best arm's value on that workload. Per arm, its ratios on the
    workloads it ran, ascending, a failure as +∞ (also every arm's ratio where no arm succeeded)."""
    ratios: dict[str, list[float]] = {}
    for values in metric.values():
        finite = [v for v in values.values() if v is not None and math.isfinite(v) and v > 0]
        best = min(finite) if finite else None
        for arm, value in values.items():
            ok = best is not None and value is not None and math.isfinite(value) and value > 0
            ratios.setdefault(arm, []).append(value / best if ok else math.inf)
    return {arm: sorted(values) for arm, values in sorted(ratios.items())}


def performance_profile(
    metric: Mapping[str, Mapping[str, float | None]], taus: Sequence[float]
) -> dict[str, list[float]]:
    """Dolan–Moré performance profile at ``taus``: ρ_arm(τ) = share of the workloads an arm ran on where its
    ratio to the best arm (:func:`performance_ratios`) is ≤ τ. A workload the arm did not run on is not in its
    denominator; one where it ran and failed counts as a ratio of +∞."""
    return {
        arm: [sum(r <= tau for r in values) / len(values) for tau in taus]
        for arm, values in performance_ratios(metric).items()
    }


# --------------------------------------------------------------------------------------------------------
# The whole analysis, from tagged runs
# --------------------------------------------------------------------------------------------------------

CENTRAL_PAIRINGS = ((("gpt", "adam"), ("gpt-noln", "kadam2")), (("digits-cnn-bn", "adam"), ("digits-cnn", "kadam2")))
"""THEORY §4's question as paired comparisons: Adam on the model *with* normalization against 2-Adam (default
strategy) on the same model *without* it, paired by seed (same data order; the same initial weights wherever
the architectures agree). Reported as second − first and included in the full search's Holm family."""

PHASES = ("search", "refine", "lr_only", "evaluate_search", "evaluate_lr_only", "sensitivity")
"""Phases a run belongs to: tuning over the full space (stage 1, ``search``; stage 2, ``refine``: the lr
refinement around each arm's stage-1 best point) or lr only, evaluation of each result's best configuration
on fresh seeds, and the lr sensitivity sweep around the full search's best configuration."""


def analyse(
    records: Sequence[Mapping[str, Any]],
    reference: str = REFERENCE,
    confidence: float = 0.95,
    alpha: float = 0.05,
    power: float = 0.8,
    profile_taus: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Everything the comparison reports, from ``records`` (dicts with ``phase`` in :data:`PHASES`,
    ``workload``, ``arm``, ``trial`` (tuning phases) or ``factor`` (sensitivity) and the ``run`` returned by
    :func:`train_trial`).

    Per workload and result (``search``, ``lr_only``): each arm's selection, summary, paired comparison with
    ``reference`` and best-lr ratio to it. The family of comparisons of each result is every (workload, arm)
    pair except the reference and the control; Holm's adjustment, adjusted intervals and the smallest
    detectable difference are computed over that family (:func:`adjust_family`). The control's tuning and
    evaluation runs are checked against the reference (:func:`check_control_ties`); a mismatch raises.
    Also the sensitivity curves and a performance profile of median steps to target.
    """
    by_phase: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for record in records:
        if record["phase"] not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {record['phase']!r}")
        run = {**record["run"], "trial": record.get("trial"), "factor": record.get("factor")}
        phase = record["phase"]
        if phase in ("search", "refine"):  # the full search's selection is over both stages
            run["stage"] = 2 if phase == "refine" else 1
            phase = "search"
        by_phase.setdefault(phase, {}).setdefault(record["workload"], {}).setdefault(record["arm"], []).append(run)
    workloads = sorted({record["workload"] for record in records})
    output: dict[str, Any] = {
        "reference": reference,
        "control": CONTROL,
        "confidence": confidence,
        "alpha": alpha,
        "power": power,
        "workloads": {},
        "families": {},
    }
    control_pairs = 0
    for workload in workloads:
        entry: dict[str, Any] = {}
        for result, tuning_phase, evaluation_phase in (
            ("search", "search", "evaluate_search"),
            ("lr_only", "lr_only", "evaluate_lr_only"),
        ):
            tuning = by_phase.get(tuning_phase, {}).get(workload, {})
            evaluation = by_phase.get(evaluation_phase, {}).get(workload, {})
            if not tuning:
                continue
            if CONTROL in tuning and reference in tuning:
                control_pairs += check_control_ties(tuning[CONTROL], tuning[reference])
            selection = {arm: select_best(runs) for arm, runs in sorted(tuning.items())}
            trials = {
                arm: [
                    {
                        "trial": run["trial"],
                        "stage": run.get("stage", 1),
                        "seed": run["seed"],
                        "hyperparameters": run["hyperparameters"],
                        "validation_loss": run["validation_loss"],
                        "diverged": run["diverged"],
                    }
                    for run in sorted(runs, key=lambda r: (r["trial"], r["seed"]))
                ]
                for arm, runs in sorted(tuning.items())
            }
            block: dict[str, Any] = {"selection": selection, "trials": trials}
            if any(run.get("stage") == 2 for runs in tuning.values() for run in runs):
                block["two_stage"] = {arm: two_stage_change(runs) for arm, runs in sorted(tuning.items())}
            reference_lr = selection[reference]["hyperparameters"]["lr"] if reference in selection else None
            block["lr_ratio_to_reference"] = (
                {arm: chosen["hyperparameters"]["lr"] / reference_lr for arm, chosen in selection.items()}
                if reference_lr
                else {}
            )
            if evaluation and reference in evaluation:
                summary = summarize_workload(
                    [run for runs in evaluation.values() for run in runs], confidence, reference
                )
                control_pairs += summary["control_pairs_checked"]
                block.update(summary)
            entry[result] = block
        sweep = by_phase.get("sensitivity", {}).get(workload, {})
        search_trials = by_phase.get("search", {}).get(workload, {})
        if sweep:
            curves: dict[str, Any] = {}
            for arm, runs in sorted(sweep.items()):
                best = entry["search"]["selection"][arm]
                points = [(1.0, best["hyperparameters"]["lr"], best["validation_loss"])]
                best_runs = [run for run in search_trials.get(arm, []) if run["trial"] == best["trial"]]
                grouped: dict[float, list[float]] = {}
                for run in runs:
                    grouped.setdefault(float(run["factor"]), []).append(_validation(run))
                for factor, values in grouped.items():
                    mean = float(np.mean(values))
                    points.append(
                        (factor, best["hyperparameters"]["lr"] * factor, mean if math.isfinite(mean) else None)
                    )
                points.sort()
                curves[arm] = {
                    "factor": [p[0] for p in points],
                    "lr": [p[1] for p in points],
                    "validation_loss": [p[2] for p in points],
                    "best_runs": len(best_runs),
                }
            entry["sensitivity"] = curves
        output["workloads"][workload] = entry
    output["central_pairings"] = []
    for (with_norm, first_arm), (without_norm, second_arm) in CENTRAL_PAIRINGS:
        runs = by_phase.get("evaluate_search", {})
        first = {run["seed"]: outcome(run) for run in runs.get(with_norm, {}).get(first_arm, [])}
        second = {run["seed"]: outcome(run) for run in runs.get(without_norm, {}).get(second_arm, [])}
        seeds = sorted(set(first) & set(second))
        if len(seeds) >= 2:
            comparison = paired_t([second[seed] - first[seed] for seed in seeds], confidence)
            output["central_pairings"].append(
                {"first": [with_norm, first_arm], "second": [without_norm, second_arm], "comparison": comparison}
            )
    for result in ("search", "lr_only"):
        family = [
            (workload, arm, comparison, None)
            for workload, entry in output["workloads"].items()
            if result in entry
            for arm, comparison in entry[result].get("versus_reference", {}).items()
            if arm != CONTROL
        ]
        if result == "search":
            family += [
                (
                    f"{p['second'][0]} vs {p['first'][0]}",
                    f"{p['second'][1]} vs {p['first'][1]}",
                    p["comparison"],
                    {"first": p["first"], "second": p["second"]},
                )
                for p in output["central_pairings"]
            ]
        adjust_family([comparison for _, _, comparison, _ in family], alpha, power)
        # "pairing": None for an arm against AdamW on one workload; the two (workload, arm) runs of a THEORY §4 pairing
        output["families"][result] = [
            {"workload": workload, "arm": arm, "comparison": comparison, "pairing": pairing}
            for workload, arm, comparison, pairing in family
        ]
    output["control_pairs_checked"] = control_pairs
    taus = list(profile_taus) if profile_taus is not None else [1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0]
    steps_metric = {}
    for workload, entry in output["workloads"].items():
        arms = entry.get("search", {}).get("arms", {})
        steps_metric[workload] = {
            arm: (
                summary["steps_to_target"]["median"]
                if summary["steps_to_target"] and 2 * summary["target_reached"] > len(summary["seeds"])
                else None
            )
            for arm, summary in arms.items()
        }
    output["performance_profile"] = {
        "metric": "median steps to the AdamW target (None: fewer than half the seeds reached it)",
        "taus": taus,
        "values": steps_metric,
        "ratios": {
            arm: [r if math.isfinite(r) else None for r in values]
            for arm, values in performance_ratios(steps_metric).items()
        },
        "rho": performance_profile(steps_metric, taus) if steps_metric else {},
    }
    return output
