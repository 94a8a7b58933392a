r"""One adaptive normalization level (THEORY §1), for the reference loops of this package.

``KAdam`` keeps its own fused implementation; this plain version serves :class:`SphericalTwoAdam` and the
batched random walk of :mod:`kadam.experiments.normalization`, where β may be a tensor that broadcasts
against the state (one β per row: several runs in one tensor).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adaptive_level"]


def adaptive_level(
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    x: Tensor,
    beta: float | Tensor,
    gamma: float | Tensor,
    eps: float,
    step: int,
    tensor_dims: tuple[int, ...] | None = None,
) -> Tensor:
    r"""Advance ``(m, v)`` in place by input ``x`` at step ``n = step`` and return the level's output.

    .. math::
        m_n = \beta m_{n-1} + (1-\beta) x_n,\quad v_n = \gamma v_{n-1} + (1-\gamma) s_n,\quad
        u_n = \frac{m_n / (1-\beta^n)}{\sqrt{v_n / (1-\gamma^n)} + \epsilon},

    with ``s_n = x_n²`` (elementwise) or, when ``tensor_dims`` is given, ``mean(x_n²)`` over those
    dimensions (tensor mode; ``exp_avg_sq`` then has size 1 along them).
    """
    exp_avg.mul_(beta).add_((1 - beta) * x)
    square = x * x if tensor_dims is None else torch.mean(x * x, dim=tensor_dims, keepdim=True)
    exp_avg_sq.mul_(gamma).add_((1 - gamma) * square)
    return (exp_avg / (1 - beta**step)) / (torch.sqrt(exp_avg_sq / (1 - gamma**step)) + eps)
