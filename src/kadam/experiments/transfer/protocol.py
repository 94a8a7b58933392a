"""Cells of the transfer section: do THEORY §6's rules keep the loss curves of discrete AdamW?

- :func:`lr_transfer_cell` (full batch): AdamW at ``lr`` for ``horizon/lr`` steps, and at ``c·lr`` for
  ``horizon/(c·lr)`` steps with the exact-rate betas (``β^c, γ^c``, :func:`kadam.transfer.transfer_lr`), the
  paper-rate betas, and the same betas (naive). Both curves are read at the same ``t = η·step``; the *gap*
  is ``max_t |L_c(t) − L(t)| / (L(0) − min L)`` and the parameter gap ``max_t ‖θ_c(t) − θ(t)‖ / ‖θ(T) − θ₀‖``.
- :func:`batch_transfer_cell` (mini-batch): AdamW on a task at batch ``B`` for ``samples`` samples, and at
  ``κB`` with the square-root rule (:func:`kadam.transfer.transfer_batch_size`), linear lr scaling or no
  change; the validation loss at equal sample counts. The *gap* is the largest difference in validation
  loss from the base run over the checkpoints; the same base run from a second seed gives the noise floor.

Each cell is deterministic given its kwargs (local generators; seeds are kwargs) and returns a JSON dict.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from kadam.experiments.transfer.workloads import build_task, make_problem
from kadam.flow import discrete
from kadam.optimizer import KAdam
from kadam.transfer import Hyperparameters, transfer_batch_size, transfer_lr

WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
BATCH_RULES = ("sqrt", "linear", "unchanged")


def _full_batch_run(problem: str, seed: int, settings: Hyperparameters) -> tuple[torch.Tensor, torch.Tensor]:
    loss = make_problem(problem, seed)
    run = discrete(
        loss,
        settings.steps,
        lr=settings.lr,
        k=1,
        betas=settings.betas[0],
        eps=settings.eps,
        weight_decay=settings.weight_decay,
    )
    return run.theta, run.loss


def lr_transfer_cell(problem: str, lr: float, factors: Sequence[int], horizon: float, seed: int = 0) -> dict[str, Any]:
    """Gaps in loss and parameters between AdamW at ``lr`` and at ``c·lr`` for each ``c`` (module docstring)."""
    steps = round(horizon / lr)
    base = Hyperparameters(lr, (BETAS,), 1e-8, WEIGHT_DECAY, steps)
    theta, losses = _full_batch_run(problem, seed, base)
    scale = float(losses[0] - losses.min())
    travelled = float((theta[-1] - theta[0]).norm())
    rows = []
    for factor in factors:
        if steps % factor:
            raise ValueError(f"horizon / lr = {steps} steps must be divisible by every factor, got {factor}")
        variants = {}
        for name, settings in (
            ("exact", transfer_lr(lr, BETAS, WEIGHT_DECAY, steps, factor, rates="exact").target),
            ("paper", transfer_lr(lr, BETAS, WEIGHT_DECAY, steps, factor, rates="paper").target),
            ("naive", transfer_lr(lr, BETAS, WEIGHT_DECAY, steps, factor).alternatives["naive"]),
        ):
            moved_theta, moved_losses = _full_batch_run(problem, seed, settings)
            same_t_loss, same_t_theta = losses[::factor], theta[::factor]
            variants[name] = {
                "betas": list(settings.betas[0]),
                "loss_gap": float((moved_losses - same_t_loss).abs().max()) / scale,
                "final_loss_gap": float((moved_losses[-1] - same_t_loss[-1]).abs()) / scale,
                "theta_gap": float((moved_theta - same_t_theta).norm(dim=1).max()) / travelled,
                "loss_curve": moved_losses[:: max(1, len(moved_losses) // 50)].tolist(),
            }
        rows.append({"factor": factor, "variants": variants})
    return {
        "problem": problem,
        "lr": lr,
        "steps": steps,
        "horizon": horizon,
        "seed": seed,
        "base_loss_curve": losses[:: max(1, len(losses) // 50)].tolist(),
        "rows": rows,
    }


def _settings_for(rule: str, lr: float, batch: int, factor: int, steps: int) -> Hyperparameters:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # stability is reported with the result
        result = transfer_batch_size(lr, BETAS, batch, WEIGHT_DECAY, steps, factor)
    if rule == "sqrt":
        return result.target
    if rule in ("linear", "unchanged"):
        return result.alternatives[rule]
    raise ValueError(f"rule must be one of {BATCH_RULES}, got {rule!r}")


def batch_transfer_cell(
    task: str,
    base_batch: int,
    base_lr: float,
    samples: int,
    checkpoints: int,
    factor: int = 1,
    rule: str = "sqrt",
    seed: int = 0,
    task_sizes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validation loss at ``checkpoints`` equal sample counts for AdamW on ``task`` under ``rule`` at batch ×``factor``.

    ``factor = 1`` is the base run (``rule`` ignored). ``samples`` must be divisible by
    ``base_batch · factor · checkpoints`` so that every run reaches the same sample counts.
    """
    batch = base_batch * factor
    if samples % (batch * checkpoints):
        raise ValueError(f"samples must be divisible by batch * checkpoints = {batch * checkpoints}, got {samples}")
    base_steps = samples // base_batch
    settings = (
        Hyperparameters(base_lr, (BETAS,), 1e-8, WEIGHT_DECAY, base_steps, base_batch)
        if factor == 1
        else _settings_for(rule, base_lr, base_batch, factor, base_steps)
    )
    built = build_task(task, "cpu", **(task_sizes or {}))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = built.make_model()
    optimizer = KAdam(
        model.parameters(),
        lr=settings.lr,
        k=1,
        betas=settings.betas[0],
        eps=settings.eps,
        weight_decay=settings.weight_decay,
    )
    generator = torch.Generator().manual_seed(seed)
    chunk = settings.steps // checkpoints
    seen, validation, train = [], [], []
    for _ in range(checkpoints):
        fitted = built.fit(model, optimizer, chunk, batch, generator, window=chunk)
        curve, diverged = fitted.losses, fitted.diverged
        seen.append((len(seen) + 1) * chunk * batch)
        train.append(curve[-1] if curve else math.nan)
        validation.append(math.inf if diverged else built.evaluate(model, "validation")["loss"])
        if diverged:
            break
    return {
        "task": task,
        "factor": factor,
        "rule": "base" if factor == 1 else rule,
        "seed": seed,
        "lr": settings.lr,
        "betas": list(settings.betas[0]),
        "eps": settings.eps,
        "weight_decay": settings.weight_decay,
        "batch": batch,
        "steps": settings.steps,
        "samples_seen": seen,
        "validation_loss": validation,
        "train_loss": train,
    }


def batch_gaps(base: dict[str, Any], runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's largest and final validation-loss difference from ``base`` at the same sample counts."""
    rows = []
    for run in runs:
        pairs = list(zip(base["validation_loss"], run["validation_loss"]))
        differences = [abs(b - r) for b, r in pairs]
        rows.append(
            {
                "factor": run["factor"],
                "rule": run["rule"],
                "seed": run["seed"],
                "lr": run["lr"],
                "betas": run["betas"],
                "max_gap": max(differences),
                "final_difference": run["validation_loss"][-1] - base["validation_loss"][-1]
                if len(run["validation_loss"]) == len(base["validation_loss"])
                else math.inf,
            }
        )
    return rows
