"""The stability section's configuration type; its value per profile is in :mod:`kadam.experiments.profiles`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["StabilityConfig"]


@dataclass(frozen=True)
class StabilityConfig:
    """Section 1: the switch-off protocol's kwargs, the training-protocol grid (one cell per learning rate),
    and the stability-margin runs (the mini-batch char transformer trained by Adam at every (β, γ) of the grid).

    ``protocol_sizes`` are the fields of :class:`~kadam.experiments.stability.protocol.TrainingSizes`."""

    switch_off: Mapping[str, Any]
    betas: tuple[float, ...]
    gammas: tuple[float, ...]
    learning_rates: tuple[float, ...]
    protocol_sizes: Mapping[str, int]
    margin_steps: int
    margin_batch_size: int
    margin_task_sizes: Mapping[str, int]
