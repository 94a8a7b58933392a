"""The monitor section's configuration type; its value per profile is in :mod:`kadam.experiments.profiles`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MonitorConfig"]


@dataclass(frozen=True)
class MonitorConfig:
    """What the monitor section runs (:mod:`kadam.experiments.monitor.protocol`).

    ``workloads`` maps a workload of ``protocol.WORKLOADS`` to its sizes; each runs every family of ``families``
    that applies to it (``protocol.applies``), both arms, ``steps`` steps of ``batch_size``, without
    intervention: a development (workload, family) for ``seeds``, any other for ``held_out_seeds`` (fresh
    held-out runs: seeds of ``protocol.HELD_OUT_SEEDS``) and ``seen_seeds`` (the earlier held-out runs, scored
    apart; no intervention). Each intervention of ``interventions`` then reruns every development and fresh
    failing-arm run, and the healthy arm of ``protocol.PAIR_FAMILY`` runs with and without it for each seed of
    ``pair_seeds`` (development workloads) or ``held_out_pair_seeds`` (the others): the paired comparison on
    healthy runs. ``development_interventions`` (None: ``interventions``) replaces ``interventions`` on the
    development runs. ``family_settings`` replaces a family's arms in ``protocol.FAMILIES``
    where this profile's models need other values. ``sharpness_lrs`` are the learning rates of the sharpness
    runs (the estimate with a closure; none: skipped), each ``sharpness_steps`` steps long with an estimate
    every ``sharpness_every`` steps of ``sharpness_iterations`` Lanczos steps.
    """

    workloads: dict[str, dict[str, Any]]
    families: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    batch_size: int
    interventions: tuple[str, ...] = ()
    pair_seeds: tuple[int, ...] = ()
    held_out_seeds: tuple[int, ...] = ()
    development_interventions: tuple[str, ...] | None = None
    held_out_pair_seeds: tuple[int, ...] = ()
    seen_seeds: tuple[int, ...] = ()
    family_settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    sharpness_lrs: tuple[float, ...] = ()
    sharpness_steps: int = 0
    sharpness_every: int = 10
    sharpness_iterations: int = 10
    sharpness_sizes: dict[str, Any] = field(default_factory=dict)
