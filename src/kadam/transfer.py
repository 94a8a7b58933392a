r"""Hyperparameter transfer: what to do with (β, γ) when the learning rate or the batch size changes (THEORY §6).

**Learning rate, full batch** (:func:`transfer_lr`). In the continuous model (THEORY §3) written in
``t = ητ``, ``dθ/dt = −(u + λθ)`` and the moments relax at ``a/η`` and ``b/η``; the trajectory in ``t`` is
unchanged by ``η → cη`` when ``a → ca``, ``b → cb``, ``λ`` is kept and ``steps → steps/c``. With exact
rates (``a = −ln β``) that is

.. math::
    \beta \to \beta^c,\qquad \gamma \to \gamma^c\qquad\text{(every level of k-Adam)},

and with the paper's rates (``a = (1−β)/β``) ``β → β/(β + c(1−β))``. ε is unchanged (it enters ``u``
only). The *naive* alternative keeps the betas. The exact rule keeps the stable region
(``γ^c > β^{2c}`` iff ``γ > β²``, THEORY §2); the paper rule keeps the paper region ``γ > β/(2−β)`` but
can leave the discrete one.

**Batch size, mini-batch** (:func:`transfer_batch_size`): batch ``B → κB`` by one of the named rules of
:data:`BATCH_RULES` (every k-Adam level is scaled alike; ``steps → steps/κ`` keeps the samples seen):

- ``sqrt``: the square-root rule of Malladi, Lyu, Panigrahi & Arora (NeurIPS 2022), from their SDE for Adam:

  .. math::
      \eta \to \sqrt\kappa\,\eta,\quad 1-\beta \to \kappa(1-\beta),\quad 1-\gamma \to \kappa(1-\gamma),\quad
      \epsilon \to \epsilon/\sqrt\kappa,

  and, for decoupled weight decay, ``λ → √κ λ`` (``ηλ`` scales like ``1 − β``, the form Malladi et al. give for
  AdamW); coupled (L2) decay is part of the loss and is kept. The rule must keep ``β ≥ 0``: ``κ(1 − β) ≤ 1``,
  otherwise :class:`ValueError`; a decay of exactly 0 (no averaging, an infinite rate) is kept at 0.
- ``linear``: ``η → κη`` (the SGD rule of Goyal et al. 2017), the rest kept. ``sqrt-lr``: ``η → √κ η``, the rest
  kept.
- ``sqrt-lr+half-life`` and ``linear+half-life``: the lr rule with ``γ → γ^κ`` at every level and β kept (Marek
  et al. 2025: β2's half-life counted in samples is kept).
- ``power-lines``: ``λ → κλ``, η and the decays kept: the AdamW timescale ``B/(ηλD)`` of Wang & Aitchison (2024)
  held fixed, which Bergsma et al. (2025, "Power Lines") verify as the optimal λ growing linearly with B.
- ``unchanged``: only the batch size and the steps change.

Which rule to use is an empirical question (THEORY §6). The committed batch-size study (``results/transfer-study``,
``kadam transfer --study``) measures each rule's *regret*: the final test loss at the rule's hyperparameters minus
the loss at the tuned optimum at the new batch size, paired over seeds. Its summary ships with the package
(:func:`batch_evidence`); :func:`recommend_batch_rule` names the rule with the lowest mean relative regret at the
studied factor nearest to κ, and ``rule=None`` (the default of :func:`transfer_batch_size`) uses it. Every result
carries the rule's target and, as ``alternatives``, every other rule's.

Each result carries the stability of every new level (``γ > β²``, :mod:`kadam.stability`); a level pushed out of
the region triggers a :class:`~kadam.stability.StabilityWarning` that names the nearest pair with stability margin
``γ − β² ≥ margin``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kadam import stability
from kadam.vocabulary import BATCH_RULES
from kadam.vocabulary import FLOW_RATES as RATES

__all__ = [
    "BATCH_RULES",
    "RATES",
    "BatchRecommendation",
    "RuleEvidence",
    "Hyperparameters",
    "LevelStability",
    "Transfer",
    "batch_evidence",
    "recommend_batch_rule",
    "transfer_batch_size",
    "transfer_lr",
]

DEFAULT_MARGIN = stability.DEFAULT_MARGIN


@dataclass(frozen=True)
class Hyperparameters:
    """One optimizer configuration: ``lr``, per-level ``betas`` ((β, γ) per level), ``eps``, ``weight_decay``,
    ``steps`` (``None``: not given) and ``batch_size`` (``None``: not given)."""

    lr: float
    betas: tuple[tuple[float, float], ...]
    eps: float
    weight_decay: float
    steps: int | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class LevelStability:
    """Level ``level`` (1-based) of a configuration against the stable region γ > β² (THEORY §2).

    ``margin`` is ``γ − β²``; ``nearest_stable`` is ``None`` for a stable level, else the nearest (β, γ)
    (Euclidean) whose margin is at least the requested one.
    """

    level: int
    beta: float
    gamma: float
    stable: bool
    margin: float
    nearest_stable: tuple[float, float] | None


@dataclass(frozen=True)
class Transfer:
    """A transfer: the ``rule`` applied with ``factor`` (c for the lr, κ for the batch size), the ``source``
    and ``target`` hyperparameters, ``alternatives`` for comparison (by name), the target's per-level
    ``stability`` and ``notes`` (rounding of the steps, weight decay convention)."""

    rule: str
    factor: float
    source: Hyperparameters
    target: Hyperparameters
    alternatives: dict[str, Hyperparameters]
    stability: tuple[LevelStability, ...]
    notes: tuple[str, ...] = ()

    @property
    def stable(self) -> bool:
        """Every level of the target lies inside the stable region."""
        return all(level.stable for level in self.stability)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# validation


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _optional_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
    return value


def _levels(betas: Any) -> tuple[tuple[float, float], ...]:
    """``betas`` as per-level pairs: one pair ``(β, γ)`` or a sequence of pairs (k-Adam)."""

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if isinstance(betas, Sequence) and len(betas) == 2 and all(is_number(v) for v in betas):
        pairs = [betas]
    elif isinstance(betas, Sequence) and not isinstance(betas, str) and len(betas) > 0:
        pairs = list(betas)
    else:
        raise ValueError(f"betas must be a pair (beta, gamma) or a non-empty sequence of pairs, got {betas!r}")
    levels = []
    for i, pair in enumerate(pairs, start=1):
        if not (isinstance(pair, Sequence) and len(pair) == 2 and all(is_number(v) for v in pair)):
            raise ValueError(f"betas of level {i} must be a pair of numbers (beta, gamma), got {pair!r}")
        for name, value in zip(("beta", "gamma"), pair, strict=True):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} of level {i} must be in [0, 1), got {value!r}")
        levels.append((float(pair[0]), float(pair[1])))
    return tuple(levels)


def _factor(factor: Any, to_value: Any, from_value: float, name: str, to_name: str) -> float:
    if (factor is None) == (to_value is None):
        raise ValueError(f"give exactly one of factor and {to_name}, got factor={factor!r}, {to_name}={to_value!r}")
    if factor is not None:
        return _positive("factor", factor)
    return _positive(to_name, to_value) / from_value


# ----------------------------------------------------------------------------------------------------------
# stability


def _stability(levels: Sequence[tuple[float, float]], margin: float, rule: str) -> tuple[LevelStability, ...]:
    report = []
    for i, (beta, gamma) in enumerate(levels, start=1):
        stable = bool(stability.is_stable(beta, gamma))
        nearest = None if stable else stability.nearest_stable_pair(beta, gamma, margin)
        report.append(LevelStability(i, beta, gamma, stable, float(stability.stability_margin(beta, gamma)), nearest))
    stability.warn_if_unstable(levels, rule, margin=margin)
    return tuple(report)


# ----------------------------------------------------------------------------------------------------------
# the measured evidence


EVIDENCE_FILE = "transfer_evidence.json"
"""The committed batch-size study's summary, shipped in the package (written by the study's report)."""


@functools.cache
def _packaged_evidence() -> str:
    from importlib import resources

    return resources.files("kadam").joinpath(EVIDENCE_FILE).read_text(encoding="utf-8")


def batch_evidence() -> dict[str, Any]:
    """The committed batch-size study's summary: ``source`` (the command and commit), ``regime``, ``factors``,
    ``workloads``, ``evaluation_seeds``, ``tolerance_fraction`` and ``rows`` (one per workload, factor and rule:
    ``regret``, its 95% interval ``low``/``high``, ``relative`` regret and ``verdict``)."""
    try:
        return json.loads(_packaged_evidence())
    except FileNotFoundError:
        raise ValueError(
            f"no measured evidence: kadam/{EVIDENCE_FILE} is missing from this installation; name a rule "
            f"(one of {sorted(BATCH_RULES)})"
        ) from None


@dataclass(frozen=True)
class RuleEvidence:
    """One rule's measured regret at one studied factor: the mean relative regret over the workloads
    (``relative``: regret / the loss the tuned optimum removes) and each workload's row."""

    rule: str
    relative: float
    rows: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class BatchRecommendation:
    """The rule with the lowest measured regret for a batch factor.

    ``studied_factor`` is the studied factor nearest to ``factor`` (in log scale); ``inside`` says whether
    ``factor`` lies within the studied range; ``ranked`` holds every rule's evidence at ``studied_factor``, best
    first; ``indistinguishable`` the other rules whose regret interval overlaps the recommended rule's on every
    workload (the study cannot tell them apart); ``source`` names the study.
    """

    rule: str
    factor: float
    studied_factor: float
    inside: bool
    ranked: tuple[RuleEvidence, ...]
    source: str
    workloads: tuple[str, ...]
    seeds: int
    regime: str
    indistinguishable: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self)


def recommend_batch_rule(
    factor: float, evidence: dict[str, Any] | None = None, exclude: Sequence[str] = ()
) -> BatchRecommendation:
    """The rule of :data:`BATCH_RULES` with the lowest mean relative regret at the studied factor nearest to
    ``factor`` (log scale) in ``evidence`` (default: :func:`batch_evidence`), leaving out the rules in ``exclude``."""
    factor = _positive("factor", factor)
    evidence = batch_evidence() if evidence is None else evidence
    regime = evidence["regime"]
    rows = [row for row in evidence["rows"] if row["regime"] == regime and row["rule"] not in exclude]
    studied = sorted({float(row["factor"]) for row in rows})
    if not studied:
        raise ValueError("the evidence has no rows to recommend from")
    nearest = min(studied, key=lambda f: (abs(math.log(f / factor)), f))
    ranked = []
    for rule in dict.fromkeys(row["rule"] for row in rows):
        mine = tuple(row for row in rows if row["rule"] == rule and float(row["factor"]) == nearest)
        if mine:
            ranked.append(RuleEvidence(rule, math.fsum(row["relative"] for row in mine) / len(mine), mine))
    ranked.sort(key=lambda item: (item.relative, item.rule))
    best = {row["workload"]: row for row in ranked[0].rows}

    def overlaps(item: RuleEvidence) -> bool:
        return all(
            row["low"] <= best[row["workload"]]["high"] and best[row["workload"]]["low"] <= row["high"]
            for row in item.rows
        )

    return BatchRecommendation(
        ranked[0].rule,
        factor,
        nearest,
        studied[0] <= factor <= studied[-1],
        tuple(ranked),
        evidence["source"],
        tuple(evidence["workloads"]),
        int(evidence["evaluation_seeds"]),
        regime,
        tuple(item.rule for item in ranked[1:] if overlaps(item)),
    )


# ----------------------------------------------------------------------------------------------------------
# the rules


def _scaled_decay(decay: float, factor: float, rates: str) -> float:
    """The decay whose continuous rate is ``factor`` times ``decay``'s (THEORY §3, §6)."""
    if decay == 0.0:
        return 0.0  # infinite rate: the moment is its input at any lr
    if rates == "exact":
        return decay**factor
    return decay / (decay + factor * (1.0 - decay))


def _scaled_steps(steps: int | None, factor: float, notes: list[str]) -> int | None:
    if steps is None:
        return None
    exact = steps / factor
    rounded = max(1, round(exact))
    if rounded != exact:
        notes.append(f"steps / factor = {exact:.6g} rounded to {rounded}")
    return rounded


def transfer_lr(
    lr: float,
    betas: Sequence[float] | Sequence[Sequence[float]],
    weight_decay: float = 0.0,
    steps: int | None = None,
    factor: float | None = None,
    *,
    to_lr: float | None = None,
    rates: str = "exact",
    eps: float = 1e-8,
    margin: float = DEFAULT_MARGIN,
) -> Transfer:
    r"""Hyperparameters that keep the continuous trajectory (in ``t = η·step``) when ``η → cη`` (THEORY §6).

    Args:
        lr: the current learning rate η.
        betas: ``(β, γ)``, or one pair per k-Adam level (every level is transferred).
        weight_decay: λ (kept: the decay per unit of ``t`` is λ whatever η).
        steps: the current number of steps (becomes ``round(steps / c)``); ``None`` if not needed.
        factor: ``c``; or give ``to_lr`` (then ``c = to_lr / lr``).
        rates: ``"exact"`` (``β → β^c``) or ``"paper"`` (``(1−β)/β → c(1−β)/β``).
        eps: ε (kept).
        margin: the stability margin ``γ − β²`` of the nearest stable pair suggested when a level leaves the region.

    Returns:
        a :class:`Transfer` with rule ``"lr-exact"`` or ``"lr-paper"`` and the alternative ``"naive"``
        (same betas, same λ, ``η → cη``, ``steps → steps/c``).

    Raises:
        ValueError: a hyperparameter outside its range, or both/neither of ``factor`` and ``to_lr``.
    """
    lr = _positive("lr", lr)
    levels = _levels(betas)
    weight_decay = _non_negative("weight_decay", weight_decay)
    eps = _non_negative("eps", eps)
    steps = _optional_count("steps", steps)
    if rates not in RATES:
        raise ValueError(f"rates must be one of {RATES}, got {rates!r}")
    c = _factor(factor, to_lr, lr, "lr", "to_lr")
    notes: list[str] = []
    new_steps = _scaled_steps(steps, c, notes)
    new_levels = tuple((_scaled_decay(b, c, rates), _scaled_decay(g, c, rates)) for b, g in levels)
    source = Hyperparameters(lr, levels, eps, weight_decay, steps)
    target = Hyperparameters(lr * c, new_levels, eps, weight_decay, new_steps)
    naive = Hyperparameters(lr * c, levels, eps, weight_decay, new_steps)
    rule = f"lr-{rates}"
    return Transfer(rule, c, source, target, {"naive": naive}, _stability(new_levels, margin, rule), tuple(notes))


def _batch_rule(
    rule: str, source: Hyperparameters, kappa: float, decoupled_weight_decay: bool
) -> tuple[tuple[tuple[float, float], ...], float, float, float]:
    """Rule ``rule``'s (levels, lr, eps, weight decay) for batch ``B → κB`` (module docstring)."""
    root = math.sqrt(kappa)
    levels, lr, eps, decay = source.betas, source.lr, source.eps, source.weight_decay
    if rule == "sqrt":
        scaled = tuple(tuple(0.0 if d == 0.0 else max(0.0, 1.0 - kappa * (1.0 - d)) for d in pair) for pair in levels)
        return scaled, lr * root, eps / root, decay * root if decoupled_weight_decay else decay  # type: ignore[return-value]
    half_life = tuple((beta, gamma**kappa) for beta, gamma in levels)
    return {
        "linear": (levels, lr * kappa, eps, decay),
        "sqrt-lr": (levels, lr * root, eps, decay),
        "sqrt-lr+half-life": (half_life, lr * root, eps, decay),
        "linear+half-life": (half_life, lr * kappa, eps, decay),
        "power-lines": (levels, lr, eps, decay * kappa if decoupled_weight_decay else decay),
        "unchanged": (levels, lr, eps, decay),
    }[rule]


def transfer_batch_size(
    lr: float,
    betas: Sequence[float] | Sequence[Sequence[float]],
    batch_size: int,
    weight_decay: float = 0.0,
    steps: int | None = None,
    factor: float | None = None,
    *,
    to_batch_size: int | None = None,
    rule: str | None = None,
    eps: float = 1e-8,
    decoupled_weight_decay: bool = True,
    margin: float = DEFAULT_MARGIN,
) -> Transfer:
    r"""Hyperparameters for batch ``B → κB`` under ``rule`` (one of :data:`BATCH_RULES`; THEORY §6).

    ``sqrt`` (Malladi et al. 2022): ``η → √κ η``, ``1 − β → κ(1 − β)`` and ``1 − γ → κ(1 − γ)`` at every level,
    ``ε → ε/√κ``, ``λ → √κ λ`` for decoupled decay (``ηλ`` scales like ``1 − β``), λ kept for coupled L2 decay.
    The others as in the module docstring. Every rule keeps the samples seen: ``steps → steps/κ``. The result's
    ``alternatives`` hold every other rule's hyperparameters, by name.

    Args:
        lr, betas, weight_decay, steps, eps, margin: as for :func:`transfer_lr`.
        batch_size: the current batch size B.
        factor: κ; or give ``to_batch_size`` (then ``κ = to_batch_size / batch_size``).
        rule: the rule whose result is ``target`` (a key of :data:`BATCH_RULES`); ``None``: the rule with the lowest
            measured regret (:func:`recommend_batch_rule`; where the square-root rule cannot apply to these betas,
            the best of the others).
        decoupled_weight_decay: AdamW's decay (``True``) or Adam's L2 (``False``, kept by every rule: it is part of
            the loss).

    Raises:
        ValueError: a hyperparameter outside its range, an unknown rule, both/neither of ``factor`` and
            ``to_batch_size``, or, for ``sqrt``, ``κ(1 − β) > 1`` (or the same for γ) at some level: the rule
            would make β negative.
    """
    lr = _positive("lr", lr)
    levels = _levels(betas)
    batch_size = _optional_count("batch_size", batch_size)
    if batch_size is None:
        raise ValueError("batch_size must be an integer >= 1, got None")
    weight_decay = _non_negative("weight_decay", weight_decay)
    eps = _non_negative("eps", eps)
    steps = _optional_count("steps", steps)
    if rule is not None and rule not in BATCH_RULES:
        raise ValueError(f"rule must be one of {sorted(BATCH_RULES)} or None, got {rule!r}")
    if to_batch_size is not None:
        _optional_count("to_batch_size", to_batch_size)
    kappa = _factor(factor, to_batch_size, float(batch_size), "batch_size", "to_batch_size")
    if rule is None:
        rule = recommend_batch_rule(kappa, exclude=("sqrt",) if _sqrt_invalid(levels, kappa) else ()).rule
    if rule == "sqrt":
        for i, (beta, gamma) in enumerate(levels, start=1):
            for name, decay in (("beta", beta), ("gamma", gamma)):
                if decay != 0.0 and kappa * (1.0 - decay) > 1.0:  # a decay of 0 (infinite rate) is kept at 0
                    raise ValueError(
                        f"the square-root rule needs factor * (1 - {name}) <= 1 at every level; level {i} has "
                        f"{name} = {decay:g}, so factor must be <= {1.0 / (1.0 - decay):.6g}, got {kappa:.6g}"
                    )
    notes: list[str] = []
    new_steps = _scaled_steps(steps, kappa, notes)
    new_batch = batch_size * kappa
    if abs(new_batch - round(new_batch)) > 1e-9:
        raise ValueError(f"batch_size * factor must be an integer, got {batch_size} * {kappa:.6g} = {new_batch:.6g}")
    new_batch_size = round(new_batch)
    if not decoupled_weight_decay:
        notes.append("coupled (L2) weight decay kept: it is part of the loss")
    source = Hyperparameters(lr, levels, eps, weight_decay, steps, batch_size)

    def settings(name: str) -> Hyperparameters:
        new_levels, new_lr, new_eps, new_decay = _batch_rule(name, source, kappa, decoupled_weight_decay)
        return Hyperparameters(new_lr, new_levels, new_eps, new_decay, new_steps, new_batch_size)

    target = settings(rule)
    if not _usable(target):
        raise ValueError(
            f"factor {kappa:g} is outside what the {rule} rule can represent in float64 (a new decay rounds to 1, or "
            f"the lr, eps or weight decay is not a positive finite number): lr {target.lr:g}, betas {target.betas}"
        )
    alternatives = {
        name: settings(name)
        for name in BATCH_RULES
        if name != rule and not (name == "sqrt" and _sqrt_invalid(levels, kappa))
    }
    alternatives = {name: value for name, value in alternatives.items() if _usable(value)}
    return Transfer(
        f"batch-{rule}",
        kappa,
        source,
        target,
        alternatives,
        _stability(target.betas, margin, f"batch-{rule}"),
        tuple(notes),
    )


def _usable(settings: Hyperparameters) -> bool:
    """Every decay below 1 and the lr, eps and weight decay finite (the lr positive) in float64."""
    return (
        math.isfinite(settings.lr)
        and settings.lr > 0
        and math.isfinite(settings.eps)
        and math.isfinite(settings.weight_decay)
        and all(decay < 1.0 for pair in settings.betas for decay in pair)
    )


def _sqrt_invalid(levels: Sequence[tuple[float, float]], kappa: float) -> bool:
    """The square-root rule would make a decay negative (``κ(1 − d) > 1`` for a decay ``d > 0``)."""
    return any(d != 0.0 and kappa * (1.0 - d) > 1.0 for pair in levels for d in pair)
