r"""Predicted norms, angular updates and effective learning rates of scale-invariant tensors (THEORY §4).

A tensor W followed by a normalization layer has ``L(cW) = L(W)``, so its gradient is orthogonal to it
and only the direction ``W/|W|`` matters. Decoupled weight decay (AdamW) gives, exactly, with
``q = 1 − ηλ`` and ``u_n`` Adam's output at step n:

.. math::
    |W_n|^2 = q^2 |W_{n-1}|^2 - 2\eta q \langle W_{n-1}, u_n\rangle + \eta^2 |u_n|^2 .

Two readings of the cross term, each a function below:

- ``"orthogonal"`` (the paper's assumption): ``⟨W, u⟩ = 0``; the squared norm gains ``η²|u_n|²`` a step.
- ``"corrected"`` (momentum correlations, Kosson et al. 2024): gradients dominated by noise and
  orthogonal to the weight *at the time they were taken* make Adam's output autocorrelated,
  ``E⟨u_n, u_{n−k}⟩ = β^k E|u|²``; unrolling ``W_{n−1}`` over the last updates gives
  ``E⟨W_{n−1}, u_n⟩ = −η E|u|² β / (1 − qβ)``, so the squared norm gains
  ``η²|u_n|² (1 + qβ)/(1 − qβ)`` a step (→ ``(1+β)/(1−β)`` as ηλ → 0).

In the noise-dominated regime Adam's output has ``E|u|² = d (1−β)/(1+β)`` (an EMA of white noise,
normalized to unit variance per element), which turns both readings into predictions from
hyperparameters alone. Weight decay 0 is Adam: no equilibrium, the squared norm grows linearly and the
effective learning rate ``η/|W|`` falls like ``1/√n``. Coupled L2 decay (``torch.optim.Adam`` with
``weight_decay > 0``) is not covered: its decay term passes through Adam's normalization.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ASSUMPTIONS",
    "correlation_factor",
    "effective_lr_schedule",
    "equilibrium_angular_update",
    "equilibrium_norm",
    "noise_update_sq_norm",
    "norm_trajectory",
    "relaxation_steps",
]

Assumption = Literal["corrected", "orthogonal"]
ASSUMPTIONS: tuple[str, ...] = ("corrected", "orthogonal")


def _check_hyperparameters(lr: float, weight_decay: float, *, equilibrium: bool) -> float:
    """Validate η, λ and return the per-step shrink factor q = 1 − ηλ."""
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if equilibrium and weight_decay == 0:
        raise ValueError("weight_decay must be > 0 for an equilibrium (without decay the norm grows forever)")
    if not lr * weight_decay < 1:
        raise ValueError(f"lr * weight_decay must be < 1, got {lr * weight_decay!r}")
    return 1.0 - lr * weight_decay


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    return float(beta)


def _check_assumption(assumption: str) -> None:
    if assumption not in ASSUMPTIONS:
        raise ValueError(f"assumption must be one of {ASSUMPTIONS}, got {assumption!r}")


def correlation_factor(beta: float, shrink: float = 1.0, assumption: Assumption = "corrected") -> float:
    r"""Growth of ``|W|²`` per step in units of ``η²|u|²``: ``(1 + qβ)/(1 − qβ)`` corrected, 1 orthogonal.

    ``shrink`` is ``q = 1 − ηλ`` (1 for Adam). THEORY §4: the cross term ``−2ηq⟨W_{n−1}, u_n⟩`` with
    ``E⟨W_{n−1}, u_n⟩ = −η E|u|² β/(1 − qβ)`` adds ``2qβ/(1 − qβ)`` to the orthogonal 1.
    """
    beta = _check_beta(beta)
    _check_assumption(assumption)
    if not 0 < shrink <= 1:
        raise ValueError(f"shrink must be in (0, 1], got {shrink!r}")
    return 1.0 if assumption == "orthogonal" else (1 + shrink * beta) / (1 - shrink * beta)


def noise_update_sq_norm(d: int, beta: float) -> float:
    r"""``E|u|² = d (1−β)/(1+β)``: Adam's output on a d-element tensor when gradients are pure noise.

    Each element of u is an EMA of unit-variance white noise (after Adam's per-element normalization),
    whose variance is ``(1−β)² Σ β^{2k} = (1−β)/(1+β)``; bias correction and ε are neglected (THEORY §4).
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    beta = _check_beta(beta)
    return d * (1 - beta) / (1 + beta)


def equilibrium_norm(
    lr: float, weight_decay: float, d: int, beta: float, *, assumption: Assumption = "corrected"
) -> float:
    r"""Equilibrium ``|W|`` of a scale-invariant d-element tensor under AdamW, noise-dominated (THEORY §4).

    The fixed point of ``x = q²x + η² E|u|² F`` with ``q = 1−ηλ``, ``E|u|² = d(1−β)/(1+β)`` and ``F`` the
    :func:`correlation_factor`:

    .. math::
        |W|^2_\infty = \frac{\eta\, d\,(1-\beta)\, F}{(1+\beta)\,\lambda\,(2-\eta\lambda)},\qquad
        F = \frac{1+q\beta}{1-q\beta}\ \text{(corrected)},\quad F = 1\ \text{(orthogonal)} .

    Corrected, this is ``≈ η d/(2λ)`` whatever β; the orthogonal value is smaller by
    ``≈ √((1−β)/(1+β))`` in norm.
    """
    shrink = _check_hyperparameters(lr, weight_decay, equilibrium=True)
    factor = correlation_factor(beta, shrink, assumption)
    return math.sqrt(lr**2 * noise_update_sq_norm(d, beta) * factor / (1 - shrink**2))


def relaxation_steps(lr: float, weight_decay: float) -> float:
    r"""Steps for ``|W|² − |W|²_∞`` to fall by a factor e: ``τ = −1/(2 ln(1−ηλ)) ≈ 1/(2ηλ)`` (THEORY §4).

    The squared norm obeys the linear recursion ``x_n = q² x_{n−1} + c``, whose deviation from the fixed
    point decays as ``q^{2n}``, under either assumption.
    """
    shrink = _check_hyperparameters(lr, weight_decay, equilibrium=True)
    return -1.0 / (2.0 * math.log(shrink))


def equilibrium_angular_update(
    lr: float, weight_decay: float, beta: float, *, assumption: Assumption = "corrected"
) -> float:
    r"""Angle (radians) between ``W_{n−1}`` and ``W_n`` per step in equilibrium, noise-dominated (THEORY §4).

    The direction moves by ``tan θ = η|u_⊥| / (q|W|)``; with ``|u|² = E|u|²`` and the equilibrium norm of
    :func:`equilibrium_norm`, d cancels:

    .. math::
        \theta = \arctan\Big(\frac{1}{q}\sqrt{\frac{1-q^2}{F}}\Big)
        \approx \sqrt{2\eta\lambda\,\frac{1-\beta}{1+\beta}}\ \text{(corrected)},\qquad
        \theta = \arccos q \approx \sqrt{2\eta\lambda}\ \text{(orthogonal)} .

    The radial part of u (the correlation itself) is neglected in ``u_⊥``; it is a relative
    ``O(θβ/(1−β))`` correction to ``|u_⊥|²``.
    """
    shrink = _check_hyperparameters(lr, weight_decay, equilibrium=True)
    factor = correlation_factor(beta, shrink, assumption)
    return math.atan(math.sqrt((1 - shrink**2) / factor) / shrink)


def norm_trajectory(
    initial_norm: float,
    lr: float,
    weight_decay: float,
    beta: float,
    *,
    update_sq_norms: ArrayLike | None = None,
    d: int | None = None,
    steps: int | None = None,
    assumption: Assumption = "corrected",
) -> np.ndarray:
    r"""Predicted ``|W_n|`` for n = 0..N of a scale-invariant tensor under Adam (λ = 0) or AdamW (THEORY §4).

    .. math::
        |W_n|^2 = q^2 |W_{n-1}|^2 + \eta^2 F\, |u_n|^2,\qquad q = 1-\eta\lambda,

    with ``F`` the :func:`correlation_factor` of ``assumption``. ``|u_n|²`` is either measured
    (``update_sq_norms``, N values, e.g. from :class:`~kadam.normalization.NormTracker`) or the
    noise-dominated ``d(1−β)/(1+β)`` for ``steps`` steps (give ``d`` and ``steps`` instead). With λ = 0
    and noise-dominated updates: ``|W_n|² = |W_0|² + n η² d (1−β)F/(1+β)``, Adam's ever-growing norm.
    Returns an array of N + 1 norms, ``|W_0|`` first.
    """
    shrink = _check_hyperparameters(lr, weight_decay, equilibrium=False)
    factor = correlation_factor(beta, shrink, assumption)
    if not (isinstance(initial_norm, (int, float)) and initial_norm >= 0 and math.isfinite(initial_norm)):
        raise ValueError(f"initial_norm must be a finite number >= 0, got {initial_norm!r}")
    if (update_sq_norms is None) == (d is None):
        raise ValueError("give exactly one of update_sq_norms (measured |u_n|^2) and d (noise-dominated)")
    if update_sq_norms is not None:
        if steps is not None:
            raise ValueError("steps is implied by update_sq_norms; do not pass both")
        squares = np.asarray(update_sq_norms, dtype=np.float64)
        if squares.ndim != 1 or not np.all(np.isfinite(squares)) or np.any(squares < 0):
            raise ValueError("update_sq_norms must be a 1-d sequence of finite numbers >= 0")
    else:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0 when d is given, got {steps!r}")
        squares = np.full(steps, noise_update_sq_norm(d, beta))
    from scipy.signal import lfilter  # imported here: scipy.signal costs ~1 s, and `import kadam` stays light

    increments = np.concatenate([[initial_norm**2], lr**2 * factor * squares])
    return np.sqrt(lfilter([1.0], [1.0, -(shrink**2)], increments))


def effective_lr_schedule(
    initial_norm: float,
    lr: float,
    weight_decay: float,
    beta: float,
    d: int,
    steps: int,
    *,
    assumption: Assumption = "corrected",
) -> np.ndarray:
    r"""Implied effective learning rate ``η/|W_n|`` for n = 0..N, noise-dominated (THEORY §4).

    ``|W_n|`` is :func:`norm_trajectory` with ``E|u|² = d(1−β)/(1+β)``. For Adam (λ = 0) this is
    ``η/√(|W_0|² + nη²dF(1−β)/(1+β))`` → ``√((1+β)/(d F (1−β) n))`` ∝ ``1/√n``; for AdamW it levels off at
    ``η/|W|_∞`` after a few :func:`relaxation_steps`.
    """
    norms = norm_trajectory(initial_norm, lr, weight_decay, beta, d=d, steps=steps, assumption=assumption)
    with np.errstate(divide="ignore"):
        return lr / norms
