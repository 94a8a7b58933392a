r"""Explicit 2-Adam on the unit sphere: the meta-adaptive reading of AdamW on scale-invariant tensors.

THEORY §4: for a scale-invariant tensor W under AdamW (``q = 1 − ηλ``, ``γ₂ = q²``), if ``⟨W_{n−1}, u_n⟩ = 0``
then ``|W_n|² = γ₂ |W_{n−1}|² + η² |u_n|²``, i.e. ``|W_n|² = η² d/(1−γ₂) · ν_n`` with the tensor-mode level

.. math::
    \nu_n = \gamma_2 \nu_{n-1} + (1-\gamma_2)\,\mathrm{mean}(u_n^2),\qquad
    \nu_0 = (1-\gamma_2)\,|W_0|^2 / (\eta^2 d),

and the direction ``Ŵ = W/|W|`` moves by

.. math::
    \hat W_n = \frac{\hat W_{n-1} - s_n u_n}{|\hat W_{n-1} - s_n u_n|},\qquad
    s_n = \frac{\eta}{q |W_{n-1}|} = \sqrt{\frac{1-\gamma_2}{d}} \cdot \frac{1}{\sqrt{\gamma_2 \nu_{n-1}}} .

This is a second adaptive normalization level (β₂ = 0, tensor mode, no bias correction, state started at
``ν₀``) applied to Adam's output, with step ``√((1−γ₂)/d)``, followed by the retraction to the sphere.
Level 2's statistic is taken *before* the current update enters it, ``γ₂ ν_{n−1}``, because the step of
AdamW at n is set by the norm ``|W_{n−1}|`` it starts from; the ``1/q`` is AdamW shrinking W before adding
``−ηu_n``. That is why this is a small reference loop rather than ``KAdam``: KAdam's level 2 includes
``u_n`` in its own statistic and bias-corrects a zero start.

**Why it is exact.** If level 1's output is orthogonal to W (``⟨W_{n−1}, u_n⟩ = 0``: a scale-invariant loss
and level 1 a normalized gradient, β = γ = 0, ε = 0, tensor mode, so ``u_n = g_n/rms(g_n)`` is parallel to
the gradient) and level 1 sees the same ``u_n`` on both sides (a normalized gradient is invariant to the
gradient's scale, and ``∇L(W) = ∇L(Ŵ)/|W|``), then ``AdamW(W)/|W|`` and this optimizer follow the same
direction trajectory from the same start, up to rounding: the two recursions above are AdamW's norm
recursion and direction update, rewritten. With memory in level 1 (β > 0 or γ > 0) both conditions fail:
``⟨W, u⟩ ≠ 0`` (THEORY §4's correlation term, which makes AdamW's norm larger and its angular updates
smaller by ``≈ √((1−qβ)/(1+qβ))`` in equilibrium) and level 1's state mixes gradients of different scales
``1/|W|`` on AdamW's side only. :mod:`kadam.experiments.normalization` measures that drift.

The parameters are put on the unit sphere at the first step (``W ← W/|W|``, ``ν₀`` from ``|W|``); their
gradients are then taken at ``Ŵ``. Level 1 is one adaptive normalization level of THEORY §1, with bias
correction, elementwise or in tensor mode.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.optimizer import Optimizer, ParamsT

from kadam.normalization.level import adaptive_level

__all__ = ["SphericalTwoAdam"]


class SphericalTwoAdam(Optimizer):
    r"""2-Adam on the unit sphere mirroring AdamW(``lr``, ``weight_decay``) on scale-invariant tensors.

    Args:
        params: the scale-invariant tensors (each is normalized to unit norm at its first step).
        lr: AdamW's η that this optimizer mirrors (> 0).
        weight_decay: AdamW's λ (> 0, with ηλ < 1); level 2 uses ``γ₂ = (1 − ηλ)²``.
        betas: level 1's (β, γ), in [0, 1).
        eps: level 1's ε (≥ 0).
        norm: level 1's mode, ``"elementwise"`` or ``"tensor"``.

    See the module docstring for the update (THEORY §4) and when it equals AdamW exactly.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        norm: str = "elementwise",
    ) -> None:
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a number > 0, got {lr!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay > 0 and lr * weight_decay < 1):
            raise ValueError(f"weight_decay must be > 0 with lr * weight_decay < 1, got {weight_decay!r}")
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        if norm not in ("elementwise", "tensor"):
            raise ValueError(f"norm must be 'elementwise' or 'tensor', got {norm!r}")
        super().__init__(
            params, {"lr": lr, "weight_decay": weight_decay, "betas": tuple(betas), "eps": eps, "norm": norm}
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One step of the update in the module docstring for every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            shrink = 1.0 - group["lr"] * group["weight_decay"]
            gamma2 = shrink**2
            beta, gamma = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                d = param.numel()
                if not state:
                    norm = torch.linalg.vector_norm(param)
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = (
                        torch.zeros_like(param)
                        if group["norm"] == "elementwise"
                        else param.new_zeros((1,) * param.dim())
                    )
                    state["level2_sq"] = (1 - gamma2) * norm**2 / (group["lr"] ** 2 * d)
                    param.div_(norm)
                state["step"] += 1
                update = adaptive_level(
                    state["exp_avg"],
                    state["exp_avg_sq"],
                    param.grad,
                    beta,
                    gamma,
                    group["eps"],
                    state["step"],
                    None if group["norm"] == "elementwise" else tuple(range(param.dim())),
                )
                step_size = math.sqrt((1 - gamma2) / d) / torch.sqrt(gamma2 * state["level2_sq"])
                param.sub_(step_size * update)
                param.div_(torch.linalg.vector_norm(param))
                state["level2_sq"] = gamma2 * state["level2_sq"] + (1 - gamma2) * torch.mean(update * update)
        return loss
