r"""The batch-size study's design, metric and verdict rules, fixed in code before its runs (THEORY §6).

**Design.** For each workload, AdamW (torch's, under the comparison protocol's warmup–cosine schedule) at the base
batch ``B₀`` and at ``κB₀``. At every batch size the *tuned optimum* is chosen from a grid: the learning rates of
:func:`lr_grid` crossed with every γ a rule moves to (:func:`gamma_grid`: γ₀, and γ₀^κ, which the square-root rule's
``1 − κ(1 − γ₀)`` matches to first order), each run at every tuning seed; the point with the lowest mean validation
loss is selected (:func:`select`). The base optimum's hyperparameters go through each rule of
:data:`kadam.transfer.BATCH_RULES`; the rule's prediction and the optimum at the new batch size then run at the same
evaluation seeds (fresh ones, never used for tuning).

**Metric.** A run's loss is its final test loss; a diverged run counts at its test loss before training
(:func:`run_loss`: it made no progress). The *regret* of a rule at (workload, κ, regime) is the mean over evaluation
seeds of ``loss(rule, seed) − loss(optimum, seed)`` (paired by seed: same initialisation and data order), with a
two-sided 95% Student-t interval (:func:`regret`). Regimes are reported apart: equal samples seen (steps = samples
/ batch) and equal steps. ε is kept at its default (``1e-8``) for every rule: the square-root rule's ``ε/√κ`` is
not applied (ε is far below √v̂ on these workloads, so it does not change a step).

**Verdict.** The tolerance at a point is :data:`TOLERANCE_FRACTION` of the loss the tuned optimum removes (its mean
test loss before training minus after). A rule *holds* at a point when its regret's upper bound is at most the
tolerance, *fails* when the lower bound exceeds it, and is *not resolved* otherwise (:func:`rule_verdict`).
The rule recommended for a factor is the one with the lowest mean *relative regret* (regret / the tolerance's
loss drop, so workloads of different loss scales weigh alike) over the workloads at that factor
(:func:`ranking`).

**Mini-batch lr transfer.** From the base optimum, η → cη with β → β^c, γ → γ^c and steps → steps/c at the base
batch; its paired test-loss difference from the base optimum *keeps* the loss when its whole 95% interval lies
within ± the tolerance, fails when it lies entirely outside, and is not resolved otherwise
(:func:`equivalence_verdict`); the same betas (naive) beside it.

**Surge** (Li et al. 2024: Adam's best lr first rises with the batch size, then falls). From the lr sweep at
γ₀ (mean validation loss over tuning seeds) each batch size's tuned lr is its grid argmin; the sweep *surges* when
the largest tuned lr sits at a batch size strictly between the smallest and the largest and lies at least
:data:`SURGE_STEPS` grid points above the tuned lr at both ends. Otherwise, when the tuned lr never falls by
:data:`SURGE_STEPS` grid points or more as the batch grows, it *rises* (the largest batch's tuned lr at least
:data:`SURGE_STEPS` points above the smallest's) or is *flat*; a fall without a surge is *not resolved*
(:func:`surge`). A tuned lr at the grid's edge is reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from kadam.experiments.sections import seed_interval

__all__ = [
    "REGIMES",
    "SURGE_STEPS",
    "TOLERANCE_FRACTION",
    "batch_of",
    "gamma_grid",
    "equivalence_verdict",
    "lr_grid",
    "mean_validation",
    "ranking",
    "regret",
    "rule_point",
    "rounded",
    "rule_verdict",
    "run_loss",
    "select",
    "steps_of",
    "surge",
    "tuned_lr_indices",
]

REGIMES = ("samples", "steps")
"""Equal samples seen (steps = samples / batch) and equal steps (samples / base batch at every batch size)."""
TOLERANCE_FRACTION = 0.02
"""A rule holds at a point when its regret is at most this fraction of the loss the tuned optimum removes."""
SURGE_STEPS = 1
"""Grid points (a factor (lr_high / lr_low)^(1 / (lr_points − 1)) each) a tuned lr must fall for a surge."""


def rounded(value: float) -> float:
    return float(f"{value:.12g}")  # survives JSON and repeated computation unchanged


def lr_grid(config: Any) -> list[float]:
    """The learning rates of every sweep: ``lr_points`` log-spaced values from ``lr_low`` to ``lr_high``."""
    ratio = config.lr_high / config.lr_low
    return [rounded(config.lr_low * ratio ** (i / (config.lr_points - 1))) for i in range(config.lr_points)]


def gamma_grid(config: Any, factor: float) -> list[float]:
    """The γ values of the sweep at batch ``κ·B₀``: γ₀, and γ₀^κ (the half-life rules') when κ ≠ 1."""
    return [config.gamma] if factor == 1 else [config.gamma, rounded(config.gamma**factor)]


def batch_of(config: Any, factor: float) -> int:
    """The batch size ``κ·B₀`` (an integer by the profile's choice of factors)."""
    batch = config.base_batch * factor
    if abs(batch - round(batch)) > 1e-9 or round(batch) < 1:
        raise ValueError(f"base_batch * factor must be a whole number >= 1, got {config.base_batch} * {factor}")
    return round(batch)


def steps_of(config: Any, factor: float, regime: str) -> int:
    """Steps at batch ``κ·B₀``: ``samples / batch`` (equal samples) or ``samples / B₀`` (equal steps)."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    batch = config.base_batch if regime == "steps" else batch_of(config, factor)
    if config.samples % batch:
        raise ValueError(f"samples must be divisible by every batch size, got {config.samples} and {batch}")
    return config.samples // batch


def run_loss(result: Mapping[str, Any]) -> float:
    """A run's final test loss; a diverged run's is its test loss before training (module docstring)."""
    loss = result.get("test_loss")
    if result.get("diverged") or loss is None or not math.isfinite(loss):
        return float(result["initial_test_loss"])
    return float(loss)


def mean_validation(results: Sequence[Mapping[str, Any]]) -> float:
    """Mean final validation loss over seeds; ``inf`` when any run diverged."""
    values = [r.get("validation_loss") for r in results]
    if any(r.get("diverged") or v is None or not math.isfinite(v) for r, v in zip(results, values)):
        return math.inf
    return math.fsum(values) / len(values)


def select(points: Mapping[tuple[float, float], Sequence[Mapping[str, Any]]]) -> tuple[float, float]:
    """The grid point ``(lr, gamma)`` with the lowest mean validation loss over the tuning seeds."""
    return min(points, key=lambda point: (mean_validation(points[point]), point))


def regret(rule_runs: Sequence[Mapping[str, Any]], optimum_runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Paired regret of a rule against the tuned optimum (module docstring): mean, 95% interval, per-seed values,
    the tolerance and the relative regret."""
    by_seed = {r["seed"]: run_loss(r) for r in optimum_runs}
    differences = [run_loss(r) - by_seed[r["seed"]] for r in sorted(rule_runs, key=lambda r: r["seed"])]
    if len(differences) != len(by_seed):
        raise ValueError("rule and optimum runs must have the same evaluation seeds")
    mean, low, high = seed_interval(differences)
    drop = math.fsum(float(r["initial_test_loss"]) - by_seed[r["seed"]] for r in optimum_runs) / len(optimum_runs)
    tolerance = TOLERANCE_FRACTION * drop
    return {
        "regret": mean,
        "low": low,
        "high": high,
        "differences": differences,
        "tolerance": tolerance,
        "relative": mean / drop if drop > 0 else math.inf,
        "diverged": sum(bool(r.get("diverged")) for r in rule_runs),
        "verdict": rule_verdict(low, high, tolerance),
    }


def rule_verdict(low: float, high: float, tolerance: float) -> str:
    """``holds`` (upper bound ≤ tolerance), ``fails`` (lower bound > tolerance) or ``not resolved``."""
    if high <= tolerance:
        return "holds"
    if low > tolerance:
        return "fails"
    return "not resolved"


def equivalence_verdict(low: float, high: float, tolerance: float) -> str:
    """Two-sided: ``holds`` when the whole interval lies within ``±tolerance``, ``fails`` when it lies entirely
    outside, ``not resolved`` otherwise (the mini-batch lr transfer claims to *keep* the loss)."""
    if -tolerance <= low and high <= tolerance:
        return "holds"
    if low > tolerance or high < -tolerance:
        return "fails"
    return "not resolved"


def ranking(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """Rules ordered by mean relative regret over the workloads of ``rows`` (one factor and regime): each
    ``(rule, mean relative regret, points)``; rows carry ``rule`` and ``relative``."""
    by_rule: dict[str, list[float]] = {}
    for row in rows:
        by_rule.setdefault(row["rule"], []).append(row["relative"])
    ranked = [(rule, math.fsum(values) / len(values), len(values)) for rule, values in by_rule.items()]
    return sorted(ranked, key=lambda item: (item[1], item[0]))


def tuned_lr_indices(
    sweeps: Mapping[float, Mapping[float, Sequence[Mapping[str, Any]]]], lrs: Sequence[float]
) -> dict[float, int]:
    """Each batch factor's tuned lr as an index into ``lrs``: the argmin of the mean validation loss over the
    tuning seeds of the sweep at γ₀ (``sweeps[factor][lr]`` holds that sweep's runs)."""
    return {
        factor: min(range(len(lrs)), key=lambda i: (mean_validation(by_lr[lrs[i]]), i))
        for factor, by_lr in sweeps.items()
    }


def surge(indices: Mapping[float, int]) -> str:
    """``surges``, ``rises``, ``flat`` or ``not resolved`` for tuned-lr grid indices by batch factor (module
    docstring)."""
    order = [indices[factor] for factor in sorted(indices)]
    if len(order) < 3:
        return "not resolved"
    peak = max(range(len(order)), key=lambda i: (order[i], -i))
    if 0 < peak < len(order) - 1 and order[peak] - order[0] >= SURGE_STEPS and order[peak] - order[-1] >= SURGE_STEPS:
        return "surges"
    falls = any(order[i] - order[j] >= SURGE_STEPS for i in range(len(order)) for j in range(i + 1, len(order)))
    if falls:
        return "not resolved"
    return "rises" if order[-1] - order[0] >= SURGE_STEPS else "flat"


def rule_point(config: Any, rule: str, factor: float, lr: float) -> dict[str, float]:
    """The hyperparameters (lr, beta, gamma, weight_decay, warmup_fraction) that ``rule`` of
    :data:`kadam.transfer.BATCH_RULES` gives at batch ``κ·B₀`` from the base optimum at learning rate ``lr``."""
    import warnings

    from kadam.transfer import transfer_batch_size

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # stability is the study's result, not a warning here
        target = transfer_batch_size(
            lr, (config.beta, config.gamma), config.base_batch, config.weight_decay, factor=factor, rule=rule
        ).target
    ((beta, gamma),) = target.betas
    return {
        "lr": rounded(target.lr),
        "beta": rounded(beta),
        "gamma": rounded(gamma),
        "weight_decay": rounded(target.weight_decay),
        "warmup_fraction": config.warmup_fraction,
    }
