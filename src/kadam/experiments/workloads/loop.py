"""The experiments' mini-batch training loop, with hooks for what each protocol records.

:func:`train` trains one model with one optimizer on mini-batches, recording after each step. Every protocol that
trains that way uses it, directly or through :meth:`~kadam.experiments.workloads.Task.fit`. The loops written out
elsewhere do what it cannot, and say so in one line at the loop: read the gradients or the parameters between
backward and step (:func:`kadam.experiments.monitor.protocol.monitored_run`,
:func:`kadam.experiments.stability.protocol.train_recording_updates`, which is also full-batch), or step two
optimizers or two models in lockstep, or no model at all (:mod:`kadam.experiments.normalization.protocol`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TrainingCurve", "seeded_initialisation", "train"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainingCurve:
    """Mean training loss over each window of ``window`` steps, and whether a non-finite mean stopped the run."""

    losses: list[float]
    window: int
    diverged: bool


@contextlib.contextmanager
def seeded_initialisation(seed: int) -> Iterator[None]:
    """Seed torch's global generator for model construction inside the block, then restore its state.

    ``nn.Module`` initialisers draw from the global generator; :func:`torch.random.fork_rng` keeps the
    caller's random stream untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    *,
    window: int = 1,
    lr_multiplier: Callable[[int], float] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    evaluate: Callable[[int], None] | None = None,
    evaluate_every: int = 0,
    progress: Callable[[int, int], None] | None = None,
    progress_every: int | None = None,
) -> TrainingCurve:
    """Train ``model`` in train mode for ``steps`` mini-batches drawn by ``next_batch()``.

    Each step: ``loss = loss_fn(model(inputs), targets)``, ``zero_grad``, ``backward``, ``optimizer.step()``.
    Hooks: ``lr_multiplier(step)`` scales every group's initial learning rate before the step (a schedule);
    ``on_step(step, loss)`` runs after the step (what a protocol records, e.g. norms); ``evaluate(step)``
    runs every ``evaluate_every`` steps; ``progress(step, steps)`` every ``progress_every`` steps (default:
    about a hundred times) and at the end. The loss is averaged over windows of ``window`` steps; a
    non-finite window mean stops the run (``diverged``).
    """
    if steps < 1 or window < 1:
        raise ValueError(f"steps and window must be ≥ 1, got steps={steps}, window={window}")
    base_rates = [group["lr"] for group in optimizer.param_groups]
    report_every = progress_every or max(1, steps // 100)
    model.train()
    curve: list[float] = []
    running: torch.Tensor | None = None
    for step in range(1, steps + 1):
        if lr_multiplier is not None:
            factor = lr_multiplier(step)
            for group, base in zip(optimizer.param_groups, base_rates):
                group["lr"] = base * factor
        inputs, targets = next_batch()
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.detach() if running is None else running + loss.detach()
        if on_step is not None:
            on_step(step, loss.detach())
        if step % window == 0:
            curve.append(running.item() / window)
            running = None
            if not math.isfinite(curve[-1]):
                return TrainingCurve(curve, window, True)
        if evaluate is not None and evaluate_every > 0 and step % evaluate_every == 0:
            evaluate(step)
        if progress is not None and (step % report_every == 0 or step == steps):
            progress(step, steps)
    return TrainingCurve(curve, window, False)
