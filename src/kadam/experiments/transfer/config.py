"""The transfer section's configuration type; its value per profile is in :mod:`kadam.experiments.profiles`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TransferConfig"]


@dataclass(frozen=True)
class TransferConfig:
    """Sizes of the transfer section.

    Full batch: for each problem and base ``lr`` in ``lr_values``, AdamW at ``lr`` for ``horizon / lr``
    steps against runs at ``c·lr`` (c in ``lr_factors``) with transferred and with naive betas.
    Mini-batch: for each task, AdamW at ``base_batch`` and ``base_lr[task]`` for ``samples`` samples, against
    batches ``κ·base_batch`` (κ in ``batch_factors``) under the square-root rule, linear lr scaling and no
    change; losses on the validation split at ``checkpoints`` equal sample counts.
    """

    lr_problems: tuple[str, ...]
    lr_values: tuple[float, ...]
    lr_factors: tuple[int, ...]
    horizon: float
    batch_tasks: tuple[str, ...]
    base_batch: int
    batch_factors: tuple[int, ...]
    samples: int
    checkpoints: int
    base_lr: dict[str, float] = field(default_factory=dict)
    task_sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
