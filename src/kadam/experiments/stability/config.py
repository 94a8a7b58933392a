"""The stability section's configuration type; its value per profile is in :mod:`kadam.experiments.profiles`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["StabilityConfig"]


@dataclass(frozen=True)
class StabilityConfig:
    """Section 1: the switch-off protocol's kwargs; the training protocol's grid
    (:func:`~kadam.experiments.stability.protocol.protocol_grid` of ``betas``, ``rates``, ``between``,
    ``gammas``), learning rates and initialisation seeds (one cell per learning rate and seed); and the
    stability-margin runs (the mini-batch char transformer trained by Adam at every point of the same grid, one
    cell per learning rate and seed).

    ``protocol_sizes`` are the fields of :class:`~kadam.experiments.stability.protocol.TrainingSizes` (its
    ``seed`` is replaced by each of ``seeds``)."""

    switch_off: Mapping[str, Any]
    betas: tuple[float, ...]
    rates: tuple[float, ...]
    between: int
    gammas: tuple[float, ...]
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    protocol_sizes: Mapping[str, int]
    margin_learning_rates: tuple[float, ...]
    margin_seeds: tuple[int, ...]
    margin_steps: int
    margin_batch_size: int
    margin_task_sizes: Mapping[str, int]
