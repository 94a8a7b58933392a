"""Sizes of the transfer section per profile (THEORY §6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


_BASE_LR = {"digits-cnn": 3e-3, "char-transformer": 2e-3}

PROFILES: dict[str, TransferConfig] = {
    "smoke": TransferConfig(
        lr_problems=("quadratic",), lr_values=(2e-3,), lr_factors=(2, 4), horizon=0.4,
        batch_tasks=("digits-cnn",), base_batch=16, batch_factors=(2, 4), samples=16 * 4 * 8, checkpoints=4,
        base_lr=_BASE_LR, task_sizes={"digits-cnn": {"channels": 4}},
    ),
    "quick": TransferConfig(
        lr_problems=("quadratic", "logistic"), lr_values=(1e-3, 4e-3), lr_factors=(2, 4, 8), horizon=1.024,
        batch_tasks=("digits-cnn", "char-transformer"), base_batch=16, batch_factors=(2, 4, 8),
        samples=16 * 8 * 40, checkpoints=8, base_lr=_BASE_LR,
        task_sizes={"digits-cnn": {"channels": 8},
                    "char-transformer": {"corpus_chars": 40_000, "context": 16, "width": 32, "heads": 2, "layers": 1,
                                         "evaluation_windows": 128}},
    ),
    "full": TransferConfig(
        lr_problems=("quadratic", "logistic", "mlp"), lr_values=(5e-4, 1e-3, 2e-3, 4e-3), lr_factors=(2, 4, 8),
        horizon=2.048, batch_tasks=("digits-cnn", "char-transformer"), base_batch=32, batch_factors=(2, 4, 8),
        samples=32 * 8 * 200, checkpoints=10, base_lr=_BASE_LR,
        task_sizes={"digits-cnn": {"channels": 16}, "char-transformer": {}}, seeds=(0, 1, 2),
    ),
}
PROFILES["study"] = PROFILES["full"]
