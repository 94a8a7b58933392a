r"""How the monitor's validation runs are read: detectors replayed on each run's series, their scores with exact
intervals, the development runs' choice of the monitor's thresholds, and what the interventions did.

The runs themselves are :mod:`kadam.experiments.monitor.protocol`'s (the cell cache keys them by that module's
code), so a change here re-reads the cached runs instead of recomputing them.

**Detectors** (:func:`warning_steps`), each replayed on the recorded series:

- ``monitor``: the running checks of the monitor at ``protocol.MONITOR_THRESHOLDS`` (each of non-finite values,
  growth of the gradient norm and of the loss, the update/parameter ratio and its rise, the secant curvature
  against the edge of stability, where on; :mod:`kadam.monitor.rules`), the same state machines it runs live, at
  its default ``every``, with the loss handed over. Its attach-time configuration check (the region) is reported apart (:func:`configuration_flags`);
- ``loss_spike``: llm-foundry's ``KillLossSpike`` as it is configured there: a loss above 2× the mean of
  the last 100 losses for 5 consecutive steps;
- ``grad_norm_spike``: the global gradient norm above 5× the median of the previous 20 steps (or non-finite);
- ``update_param_ratio``: the largest per-tensor :math:`|\Delta\theta|/|\theta|` above 0.05 (Composer's
  ``OptimizerMonitor`` quantity);
- ``stableadamw_rms``: StableAdamW's clipping indicator (Wortsman et al. 2023), the largest per-tensor
  :math:`\mathrm{RMS}(g^2/\hat v)` above 1.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kadam.experiments.monitor.protocol import INTERVENTIONS, LEAD, MONITOR_THRESHOLDS, final_loss, outcome
from kadam.monitor import Thresholds, rules
from kadam.monitor.monitor import DEFAULT_EVERY

__all__ = [
    "CHECKS",
    "DETECTORS",
    "SELECTION_GRID",
    "check_steps",
    "choose_thresholds",
    "configuration_flags",
    "guard_scores",
    "monitor_checks",
    "monitor_warnings",
    "proportion_interval",
    "score",
    "warning_steps",
]

DETECTORS = ("monitor", "loss_spike", "grad_norm_spike", "update_param_ratio", "stableadamw_rms")
LOSS_SPIKE = {"window": 100, "multiplier": 2.0, "patience": 4}
"""llm-foundry's ``KillLossSpike`` defaults: window_size, outlier_multiplier, patience (it fires at the
patience + 1-th consecutive outlier)."""
GRAD_SPIKE_FACTOR, GRAD_WINDOW = 5.0, 20
UPDATE_RATIO = 0.05
STABLEADAMW_RMS = 1.0


# ----------------------------------------------------------------------------------------------------
# detectors


CHECKS = ("nonfinite", "grad_norm", "loss", "update_param_ratio", "update_rise", "curvature")
"""The monitor's running checks, in the order :func:`monitor_checks` reports them."""


def check_steps(
    run: Mapping[str, Any], check: str, thresholds: Thresholds = MONITOR_THRESHOLDS, every: int = DEFAULT_EVERY
) -> list[int]:
    """Steps at which one running check of the monitor (one of :data:`CHECKS`), attached with ``every`` and
    ``thresholds``, fires, replayed from the run's series with the monitor's own state machines
    (:mod:`kadam.monitor.rules`): the non-finite and growth checks every step, the update-ratio and edge checks
    at recorded steps (every ``every``-th, and the update checks from ``thresholds.update_after`` on). The checks
    keep no state in common, so each replays alone."""
    fired: list[int] = []
    if check == "nonfinite":
        if thresholds.nonfinite:
            fired = [
                n
                for n, (loss, grad) in enumerate(zip(run["losses"], run["grad_norms"]), start=1)
                if rules.non_finite(grad) or rules.non_finite(loss)
            ]
    elif check in ("grad_norm", "loss"):
        factor, window = (
            (thresholds.grad_growth, thresholds.grad_window)
            if check == "grad_norm"
            else (thresholds.loss_growth, thresholds.loss_window)
        )
        if factor:
            series = run["grad_norms"] if check == "grad_norm" else run["losses"]
            growth = rules.GrowthCheck(factor, window)
            fired = [n for n, value in enumerate(series, start=1) if growth.update(value)]
    elif check in ("update_param_ratio", "update_rise"):
        limit = thresholds.update_ratio if check == "update_param_ratio" else thresholds.update_rise
        if limit:
            rise = rules.RiseCheck(limit, thresholds.update_rise_after) if check == "update_rise" else None
            for n in range(every, len(run["losses"]) + 1, every):
                ratio = run["monitor_update_ratio"][n - 1] if n >= thresholds.update_after else None
                if rise is not None:
                    if rise.update(math.nan if ratio is None else ratio):
                        fired.append(n)
                elif ratio is not None and ratio > limit:
                    fired.append(n)
    elif check == "curvature":
        if thresholds.edge_ratio is not None:
            edge = rules.EdgeCheck(thresholds.edge_ratio, thresholds.edge_patience, thresholds.edge_after)
            for n in range(every, len(run["losses"]) + 1, every):
                curvature, limit = run["curvature"][n - 1], run["edge"][n - 1]
                if edge.update(n, math.nan if curvature is None else curvature, math.nan if limit is None else limit):
                    fired.append(n)
    else:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    return fired


def monitor_checks(
    run: Mapping[str, Any], thresholds: Thresholds = MONITOR_THRESHOLDS, every: int = DEFAULT_EVERY
) -> dict[str, list[int]]:
    """Steps at which each running check of the monitor fires (:func:`check_steps`)."""
    return {check: check_steps(run, check, thresholds, every) for check in CHECKS}


def monitor_warnings(
    run: Mapping[str, Any], thresholds: Thresholds = MONITOR_THRESHOLDS, every: int = DEFAULT_EVERY
) -> list[int]:
    """Steps at which any running check of :func:`monitor_checks` fires."""
    return sorted({n for steps in monitor_checks(run, thresholds, every).values() for n in steps})


def configuration_flags(run: Mapping[str, Any]) -> bool:
    """Whether the monitor flagged the run's configuration when attached (the region check)."""
    return any(e["kind"] == "configuration" for e in run["monitor_events"])


def _loss_spike(losses: Sequence[float]) -> list[int]:
    window, multiplier, patience = LOSS_SPIKE["window"], LOSS_SPIKE["multiplier"], LOSS_SPIKE["patience"]
    warned, streak, recent = [], 0, []
    for n, loss in enumerate(losses, start=1):
        if len(recent) == window:
            if not math.isfinite(loss) or loss > multiplier * float(np.mean(recent)):
                streak += 1
                if streak > patience:
                    warned.append(n)
            else:
                streak = 0
        if math.isfinite(loss):
            recent.append(loss)
            if len(recent) > window:
                recent.pop(0)
    return warned


def _grad_spike(grad_norms: Sequence[float]) -> list[int]:
    warned = []
    for n in range(GRAD_WINDOW + 1, len(grad_norms) + 1):
        history = [g for g in grad_norms[n - 1 - GRAD_WINDOW : n - 1] if math.isfinite(g)]
        current = grad_norms[n - 1]
        if history and (not math.isfinite(current) or current > GRAD_SPIKE_FACTOR * float(np.median(history))):
            warned.append(n)
    return warned


def warning_steps(run: Mapping[str, Any], thresholds: Thresholds = MONITOR_THRESHOLDS) -> dict[str, list[int]]:
    """Warning steps of every detector of :data:`DETECTORS` (module docstring)."""
    clip = run["clip_rms"]
    return {
        "monitor": monitor_warnings(run, thresholds),
        "loss_spike": _loss_spike(run["losses"]),
        "grad_norm_spike": _grad_spike(run["grad_norms"]),
        "update_param_ratio": [
            n for n, r in enumerate(run["update_ratios"], start=1) if not math.isfinite(r) or r > UPDATE_RATIO
        ],
        "stableadamw_rms": [n for n, r in enumerate(clip, start=1) if r is not None and r > STABLEADAMW_RMS],
    }


# ----------------------------------------------------------------------------------------------------
# scores


def proportion_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """The exact (Clopper–Pearson) interval of a binomial proportion (``scipy.stats.binomtest``'s)."""
    if trials == 0:
        return None
    from scipy import stats

    interval = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


def score(
    runs: Sequence[Mapping[str, Any]],
    thresholds: Thresholds = MONITOR_THRESHOLDS,
    lead: int = LEAD,
    detectors: Sequence[str] = DETECTORS,
    warnings: Mapping[int, Mapping[str, Sequence[int]]] | None = None,
) -> dict[str, Any]:
    """Recall at ``lead`` on developing failures, sudden failures flagged within one step, lead quartiles and
    the share of healthy runs warned, per detector of ``detectors``, with exact 95% intervals (runs without
    intervention). ``warnings`` (``id(run)`` → detector → steps) replaces :func:`warning_steps` where given."""
    runs = [r for r in runs if r["spec"]["intervention"] == "none"]
    failed = [r for r in runs if outcome(r) == "failed"]
    early = [r for r in failed if (r["onset_step"] or math.inf) <= lead]
    developing = [r for r in failed if r not in early and not r["sudden"]]
    sudden = [r for r in failed if r not in early and r["sudden"]]
    healthy = [r for r in runs if outcome(r) == "healthy"]
    result: dict[str, Any] = {
        "runs": len(runs),
        "developing": len(developing),
        "sudden": len(sudden),
        "early": len(early),
        "healthy": len(healthy),
        "untrained": sum(1 for r in runs if outcome(r) == "untrained"),
        "configuration_flagged": {
            "failed": sum(configuration_flags(r) for r in failed),
            "healthy": sum(configuration_flags(r) for r in healthy),
        },
        "lead": lead,
        "detectors": {},
    }
    if warnings is None:
        warnings = {id(r): warning_steps(r, thresholds) for r in runs}
    for detector in detectors:
        leads, caught = [], 0
        for run in developing:
            event = run["instability_step"]
            warned = [s for s in warnings[id(run)][detector] if s <= event]
            lead_time = event - warned[0] if warned else None
            caught += lead_time is not None and lead_time >= lead
            if lead_time is not None:
                leads.append(lead_time)
        flagged = sum(
            1
            for run in sudden
            if any(run["onset_step"] <= s <= run["onset_step"] + 1 for s in warnings[id(run)][detector])
        )
        warned_healthy = sum(1 for run in healthy if warnings[id(run)][detector])
        result["detectors"][detector] = {
            "recall": caught / len(developing) if developing else None,
            "caught": caught,
            "recall_interval": proportion_interval(caught, len(developing)),
            "lead_quartiles": [float(q) for q in np.percentile(leads, [25, 50, 75])] if leads else None,
            "sudden_flagged": flagged,
            "sudden_interval": proportion_interval(flagged, len(sudden)),
            "healthy_warned": warned_healthy,
            "healthy_share": warned_healthy / len(healthy) if healthy else None,
            "healthy_interval": proportion_interval(warned_healthy, len(healthy)),
        }
    return result


SELECTION_GRID: Mapping[str, tuple[Any, ...]] = {
    "edge_ratio": (None, 1.0),
    "grad_growth": (None, 10.0, 100.0, 1000.0),
    "loss_growth": (None, 1.5, 2.0, 3.0),
    "update_ratio": (None, 0.5, 1.0),
    "update_rise": (None, 3.0, 4.0, 5.0, 7.0, 10.0),
}
"""The monitor's argument thresholds :func:`choose_thresholds` searches over: each check off (None) or at one of a
few round values; the edge check, when on, at the theory's ratio 1 (with ``edge_patience`` at its default)."""
_GRID_CHECKS = {
    "edge_ratio": "curvature",
    "grad_growth": "grad_norm",
    "loss_growth": "loss",
    "update_ratio": "update_param_ratio",
    "update_rise": "update_rise",
}
SELECTION_FALSE_ALARMS = 0.05
"""The largest share of healthy development runs the chosen thresholds may warn."""


def choose_thresholds(runs: Sequence[Mapping[str, Any]]) -> tuple[Thresholds, list[dict[str, Any]]]:
    """The rule, fixed before the runs, that chose :data:`MONITOR_THRESHOLDS`' argument thresholds from the
    development runs: over :data:`SELECTION_GRID`, the largest recall on developing failures (at lead
    :data:`LEAD`) plus sudden failures flagged within a step, among the settings that warn at most
    :data:`SELECTION_FALSE_ALARMS` of the healthy runs; ties go to fewer healthy runs warned, then to the
    setting with fewer checks on and larger thresholds. Returns the choice and every setting's scores."""
    development = [r for r in runs if r["split"] == "development" and r["spec"]["intervention"] == "none"]
    names = list(SELECTION_GRID)
    # each check replays alone (they share no state): once per run and grid value, then unions per setting
    fired = {
        (id(run), name, value): check_steps(
            run, _GRID_CHECKS[name], dataclasses.replace(MONITOR_THRESHOLDS, **{name: value})
        )
        for run in development
        for name in names
        for value in SELECTION_GRID[name]
    }
    always = {id(run): check_steps(run, "nonfinite") for run in development}
    table = []
    for values in itertools.product(*(SELECTION_GRID[name] for name in names)):
        thresholds = dataclasses.replace(MONITOR_THRESHOLDS, **dict(zip(names, values)))
        warnings = {
            id(run): {
                "monitor": sorted(
                    set(always[id(run)]).union(*(fired[(id(run), name, value)] for name, value in zip(names, values)))
                )
            }
            for run in development
        }
        scores = score(development, thresholds, detectors=("monitor",), warnings=warnings)
        entry = scores["detectors"]["monitor"]
        table.append(
            {
                **dict(zip(names, values)),
                "caught": entry["caught"] + entry["sudden_flagged"],
                "failures": scores["developing"] + scores["sudden"],
                "healthy_warned": entry["healthy_warned"],
                "healthy": scores["healthy"],
            }
        )

    def allowed(row: Mapping[str, Any]) -> bool:
        return row["healthy"] > 0 and row["healthy_warned"] <= SELECTION_FALSE_ALARMS * row["healthy"]

    def conservative(row: Mapping[str, Any]) -> tuple[Any, ...]:
        checks = [row[name] for name in names]
        return (sum(value is not None for value in checks), *(-(value or math.inf) for value in checks))

    candidates = [row for row in table if allowed(row)] or table
    best = min(candidates, key=lambda row: (-row["caught"], row["healthy_warned"], conservative(row)))
    return dataclasses.replace(MONITOR_THRESHOLDS, **{name: best[name] for name in names}), table


def guard_scores(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per intervention: failing-arm runs whose unguarded twin failed and that the intervention *rescued* (its
    final loss within the band of the workload's healthy unguarded runs: at most their largest final loss), and
    on healthy-arm runs whose unguarded twin is healthy, the paired final-loss difference (intervention −
    none) with a 95% t interval over the pairs (per workload and pooled)."""
    from scipy import stats

    def key(run: Mapping[str, Any]) -> tuple[Any, ...]:
        spec = run["spec"]
        return spec["workload"], spec["family"], spec["arm"], spec["seed"]

    plain = {key(r): r for r in runs if r["spec"]["intervention"] == "none"}
    band: dict[str, float] = {}
    for run in plain.values():
        if outcome(run) == "healthy":
            workload = run["spec"]["workload"]
            band[workload] = max(band.get(workload, -math.inf), final_loss(run))
    result: dict[str, Any] = {"band": band, "interventions": {}}
    for intervention in INTERVENTIONS[1:]:
        treated = [r for r in runs if r["spec"]["intervention"] == intervention and key(r) in plain]
        if not treated:
            continue
        failures = [r for r in treated if outcome(plain[key(r)]) == "failed"]
        rescued = [
            r
            for r in failures
            if math.isfinite(final_loss(r))
            and r["spec"]["workload"] in band
            and final_loss(r) <= band[r["spec"]["workload"]]
        ]
        differences: dict[str, list[float]] = {}
        for run in treated:
            twin = plain[key(run)]
            if run["spec"]["arm"] == "healthy" and outcome(twin) == "healthy":
                difference = final_loss(run) - final_loss(twin)
                differences.setdefault(run["spec"]["workload"], []).append(
                    difference if math.isfinite(difference) else math.inf
                )
        paired = {}
        for workload, values in sorted({**differences, "all": sum(differences.values(), [])}.items()):
            finite = [v for v in values if math.isfinite(v)]
            entry: dict[str, Any] = {
                "pairs": len(values),
                "mean": float(np.mean(finite)) if finite else None,
                "interval": None,
                "worse": len(values) - len(finite),
            }
            if len(finite) >= 2:
                mean, sem = float(np.mean(finite)), float(stats.sem(finite))
                half = float(stats.t.ppf(0.975, len(finite) - 1)) * sem
                entry["interval"] = (mean - half, mean + half)
            paired[workload] = entry
        result["interventions"][intervention] = {
            "failures": len(failures),
            "rescued": len(rescued),
            "rescued_interval": proportion_interval(len(rescued), len(failures)),
            "healthy_paired": paired,
        }
    return result
