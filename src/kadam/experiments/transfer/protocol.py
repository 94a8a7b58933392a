"""Cells of the transfer section's full-batch part: does THEORY §6's lr rule keep the loss curves of AdamW?

:func:`lr_transfer_cell` (full batch): AdamW at ``lr`` for ``horizon/lr`` steps, and at ``c·lr`` for
  ``horizon/(c·lr)`` steps with the exact-rate betas (``β^c, γ^c``, :func:`kadam.transfer.transfer_lr`), the
  paper-rate betas, and the same betas (naive). Both curves are read at the same ``t = η·step``; the *gap*
  is ``max_t |L_c(t) − L(t)| / (L(0) − min L)`` and the parameter gap ``max_t ‖θ_c(t) − θ(t)‖ / ‖θ(T) − θ₀‖``.

The mini-batch study's runs are the comparison protocol's (:mod:`kadam.experiments.transfer.study`).

Each cell is deterministic given its kwargs (local generators; seeds are kwargs) and returns a JSON dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kadam.experiments.transfer.workloads import make_problem
from kadam.flow import discrete
from kadam.transfer import Hyperparameters, transfer_lr

WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)


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
