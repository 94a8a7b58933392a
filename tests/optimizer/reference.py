"""A plain float64 k-Adam written straight from THEORY §1, for the tests (no torch ops in the math)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to the nearest bfloat16 (ties to even), as float64: float32 first, then the low 16
    bits of its pattern rounded off (numpy has no bfloat16)."""
    single = np.asarray(values, dtype=np.float64).astype(np.float32)
    bits = single.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return np.where(np.isfinite(single), rounded.view(np.float32), single).astype(np.float64)


def reference_kadam(
    theta0: Sequence[np.ndarray],
    gradient,
    steps: int,
    *,
    lr: float,
    levels: Sequence[tuple[float, float, float, str]],
    weight_decay: float = 0.0,
    decoupled: bool = True,
    start_steps: Sequence[int] | None = None,
    initial_state: list[list[tuple[np.ndarray, np.ndarray]]] | None = None,
    round_state: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Run k-Adam for ``steps`` steps; ``gradient(n, thetas)`` returns the list of gradients at step n.

    ``levels`` holds (β, γ, ε, mode) per level. ``start_steps[i]`` is the step at which level i started
    counting (0 unless it was added at a resume), for bias correction ``1 − βᵐ`` with ``m = n − start``.
    ``round_state`` (e.g. :func:`round_to_bfloat16`) rounds every moment after its update, and the level's
    output is computed from the rounded moments (a low-precision ``state_dtype``); a level with β = 0 uses
    m = x unrounded.
    """
    thetas = [np.array(t, dtype=np.float64) for t in theta0]
    k = len(levels)
    start_steps = list(start_steps or [0] * k)
    if initial_state is None:
        state = [
            [(np.zeros_like(t), np.zeros(()) if mode == "tensor" else np.zeros_like(t)) for (_, _, _, mode) in levels]
            for t in thetas
        ]
    else:
        state = [[(m.copy(), v.copy()) for (m, v) in per_param] for per_param in initial_state]
    for n in range(1, steps + 1):
        grads = gradient(n, thetas)
        for p, (theta, g) in enumerate(zip(thetas, grads)):
            x = np.asarray(g, dtype=np.float64)
            if weight_decay and not decoupled:
                x = x + weight_decay * theta
            for i, (beta, gamma, eps, mode) in enumerate(levels):
                m, v = state[p][i]
                count = n - start_steps[i]
                m = beta * m + (1 - beta) * x
                v = gamma * v + (1 - gamma) * (np.mean(x**2) if mode == "tensor" else x**2)
                if round_state is not None:
                    m, v = (x if beta == 0 else round_state(m)), round_state(v)
                state[p][i] = (m, v)
                x = (m / (1 - beta**count)) / (np.sqrt(v / (1 - gamma**count)) + eps)
            if weight_decay and decoupled:
                theta = (1 - lr * weight_decay) * theta
            thetas[p] = theta - lr * x
    return thetas
