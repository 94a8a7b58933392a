"""The transfer section's configuration types; their values per profile are in :mod:`kadam.experiments.profiles`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchStudyConfig", "TransferConfig"]


@dataclass(frozen=True)
class BatchStudyConfig:
    """Sizes of the batch-size study (THEORY §6; :mod:`kadam.experiments.transfer.analysis` reads it).

    For each workload of ``workloads`` (a name of the comparison protocol's workloads → model sizes), AdamW under
    the comparison protocol's warmup–cosine schedule at the base batch ``base_batch`` and at ``base_batch · κ``
    for κ in ``factors``. ``samples`` fixes the samples seen in the equal-samples regime (steps = samples / batch);
    in the equal-steps regime every batch size runs ``samples / base_batch`` steps. ``regimes`` lists which of the
    two run. The tuned optimum at each batch size: the lr grid ``lr_low · (lr_high / lr_low)^(i / (lr_points − 1))``
    crossed with every γ a rule moves to (γ₀ and γ₀^κ), each at ``tuning_seeds``; the selected point and every
    rule's prediction then run at ``evaluation_seeds`` (paired). ``lr_factors``: the mini-batch lr transfer
    (η → cη, β → β^c, steps → steps/c) from the base optimum.
    """

    workloads: dict[str, dict[str, Any]]
    base_batch: int
    factors: tuple[float, ...]
    samples: int
    lr_low: float
    lr_high: float
    lr_points: int
    tuning_seeds: tuple[int, ...]
    evaluation_seeds: tuple[int, ...]
    beta: float = 0.9
    gamma: float = 0.999
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    regimes: tuple[str, ...] = ("samples",)
    lr_factors: tuple[int, ...] = (2, 4)
    seconds_per_sample: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TransferConfig:
    """Sizes of the transfer section.

    Full batch: for each problem and base ``lr`` in ``lr_values``, AdamW at ``lr`` for ``horizon / lr``
    steps against runs at ``c·lr`` (c in ``lr_factors``) with transferred and with naive betas.
    Mini-batch: the batch-size study ``batch`` (:class:`BatchStudyConfig`).
    """

    lr_problems: tuple[str, ...]
    lr_values: tuple[float, ...]
    lr_factors: tuple[int, ...]
    horizon: float
    batch: BatchStudyConfig
    seeds: tuple[int, ...] = (0,)
