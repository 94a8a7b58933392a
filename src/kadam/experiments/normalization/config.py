"""The normalization section's configuration type; its value per profile is in :mod:`kadam.experiments.profiles`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NormalizationConfig"]


@dataclass(frozen=True)
class NormalizationConfig:
    """Section 3: kwargs of each experiment, the digits-norms runs as (normalization, optimizer, weight
    decay), the census warm-up and its tasks (name → model sizes), ``cost_scale`` (the ETA relative to the
    quick profile) and ``seeds``: the random walk and the network comparison run at every seed, the digits runs
    long enough to test an equilibrium too (the others at the first seed)."""

    random_walk: Mapping[str, Any]
    meta_adaptive_exact: Mapping[str, Any]
    meta_adaptive_drift: Mapping[str, Any]
    meta_adaptive_network: Mapping[str, Any]
    digits_norms: Mapping[str, Any]
    digits_norms_runs: tuple[tuple[str, str, float], ...]
    census_warmup_steps: int
    cost_scale: float
    census_tasks: Mapping[str, Mapping[str, int]]
    seeds: tuple[int, ...] = (0,)
