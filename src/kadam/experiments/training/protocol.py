"""One mini-batch training run of a task with a named optimizer at a constant learning rate, as a cell.

Used by the stability section's margin runs and by ``kadam demo``. The optimizers are
:data:`kadam.experiments.workloads.OPTIMIZERS`. Whether k-Adam trains better is answered by the comparison
protocol (:mod:`kadam.experiments.comparison`), with tuned schedules, paired seeds and corrected intervals;
the first protocol that tuned the learning rate alone at a constant rate was retired from the report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import torch

from kadam.experiments.workloads import build_task, make_optimizer, parameter_count, seeded_initialisation

__all__ = ["TrainRun", "train_run"]


class TrainRun(TypedDict):
    """What :func:`train_run` returns (losses and accuracies are None for a diverged run)."""

    task: str
    optimizer: str
    lr: float
    seed: int
    steps: int
    betas: list[float] | None
    parameters: int
    train_loss_curve: list[float]
    curve_window: int
    diverged: bool
    validation_loss: float | None
    validation_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    seconds: float


def train_run(
    task: str,
    optimizer: str,
    lr: float,
    steps: int,
    batch_size: int,
    seed: int,
    task_sizes: Mapping[str, Any] | None = None,
    device: str = "cpu",
    curve_points: int = 50,
    betas: Sequence[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainRun:
    """Train ``task`` with ``optimizer`` at ``lr`` for ``steps`` mini-batches of ``batch_size``.

    ``betas`` = (β, γ) overrides the optimizer's level-1 pair (see :func:`make_optimizer`).
    ``seed`` fixes the initialisation and the batch order. Returns the training-loss curve (the mean of the
    mini-batch losses over each of ``curve_points`` equal windows), validation and test loss/accuracy at the
    end, the wall time, and ``diverged`` (a non-finite training loss stops the run; its losses are then
    ``None``). ``progress(done, total)`` is called every few steps.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be ≥ 1, got steps={steps}, batch_size={batch_size}")
    started = time.perf_counter()
    built = build_task(task, device, **(task_sizes or {}))
    with seeded_initialisation(seed):
        model = built.make_model().to(device)
    model.train()
    optimizer_instance = make_optimizer(optimizer, model.parameters(), lr, betas)
    generator = torch.Generator().manual_seed(seed)
    window = max(1, steps // curve_points)
    fitted = built.fit(model, optimizer_instance, steps, batch_size, generator, window, progress)
    curve, diverged = fitted.losses, fitted.diverged
    result: dict[str, Any] = {
        "task": task,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "steps": steps,
        "betas": None if betas is None else [float(b) for b in betas],
        "parameters": parameter_count(model),
        "train_loss_curve": curve,
        "curve_window": window,
        "diverged": diverged,
    }
    for split in ("validation", "test"):
        metrics = None if diverged else built.evaluate(model, split)
        if metrics is not None and not math.isfinite(metrics["loss"]):
            diverged = result["diverged"] = True
            metrics = None
        result[f"{split}_loss"] = None if metrics is None else metrics["loss"]
        result[f"{split}_accuracy"] = None if metrics is None else metrics["accuracy"]
    result["seconds"] = time.perf_counter() - started
    return result  # type: ignore[return-value]
