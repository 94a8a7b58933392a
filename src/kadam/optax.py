"""k-Adam for JAX as an optax ``GradientTransformation`` (THEORY §1).

``kadam(learning_rate, k=2, ...)`` is the optax twin of the torch optimizer :class:`kadam.KAdam`: the
same arguments, parsed by the same function (:func:`kadam.optimizer.levels.resolve_levels`), the same
defaults and, in float64, the same trajectories up to rounding. It is a chain of optax transformations::

    [add_decayed_weights(λ)]            coupled L2 only:  x⁽⁰⁾ = g + λθ
    level_1 ∘ … ∘ level_k               x⁽ⁱ⁾ = level_i(x⁽ⁱ⁻¹⁾)
    [add_decayed_weights(λ)]            decoupled only:   x⁽ᵏ⁾ + λθ
    scale_by_learning_rate(η)           Δθ = −η (x⁽ᵏ⁾ + λθ),  i.e. θ ← (1 − ηλ)θ − η x⁽ᵏ⁾

An elementwise level is optax's own :func:`optax.scale_by_adam`; a tensor-mode level is
:func:`scale_by_tensor_adam` below, whose second moment is the scalar ``mean(x²)`` of each leaf.
Every level counts its own steps, all advanced together on every update, so the levels share the
step count ``n`` that the bias corrections use (THEORY §1). k = 1 with ``norm="elementwise"`` is
exactly :func:`optax.adamw` (or :func:`optax.adam` with L2 decay added to the gradient). Leaves are
real-valued; complex parameters are not supported.

This module needs the ``kadam[jax]`` extra (``jax``, ``optax``); ``import kadam`` does not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kadam.optimizer.levels import resolve_levels, warn_if_unstable
from kadam.vocabulary import Level

__all__ = ["ScaleByTensorAdamState", "kadam", "scale_by_kadam", "scale_by_tensor_adam"]


class ScaleByTensorAdamState(NamedTuple):
    """State of one tensor-mode level: step count, first moment per element, second moment per leaf."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_tensor_adam(b1: float = 0.0, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """One adaptive normalization level in tensor mode (THEORY §1), for every leaf of the tree.

    With ``β = b1``, ``γ = b2`` and ``d`` the number of elements of a leaf ``x``::

        m_n = β m_{n-1} + (1-β) x_n                      (one per element)
        v_n = γ v_{n-1} + (1-γ) mean(x_n²)               (one scalar per leaf)
        u_n = (m_n / (1-βⁿ)) / (sqrt(v_n / (1-γⁿ)) + ε)

    The state mirrors :func:`optax.scale_by_adam` (``count``, ``mu``, ``nu``) with ``nu`` 0-dim.
    """

    def init_fn(params: optax.Params) -> ScaleByTensorAdamState:
        return ScaleByTensorAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=jax.tree.map(lambda leaf: jnp.zeros([], jnp.asarray(leaf).dtype), params),
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByTensorAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByTensorAdamState]:
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = jax.tree.map(lambda x, v: (1 - b2) * jnp.mean(jnp.square(x)) + b2 * v, updates, state.nu)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        scaled = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
        return scaled, ScaleByTensorAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _levels_from_arguments(
    k: int,
    betas: tuple[float, float] | Sequence[tuple[float, float]],
    eps: float | Sequence[float],
    norm: str | Sequence[str],
    meta_betas: tuple[float, float] | Sequence[tuple[float, float]] | None,
    meta_norm: str | Sequence[str] | None,
) -> list[Level]:
    """Per-level ``(β_i, γ_i, ε_i, mode_i)`` from :class:`kadam.KAdam`'s arguments, by the same parser
    (:func:`kadam.optimizer.levels.resolve_levels`).

    Raises ``ValueError`` naming the argument and its accepted range; warns (``UserWarning``) about a
    level outside the stable region γ > β² (THEORY §2), as ``KAdam`` does.
    """
    levels = resolve_levels(k, betas, eps, norm, meta_betas, None, meta_norm)
    warn_if_unstable(levels, "kadam.optax")
    return levels


def _level_transformation(level: Level) -> optax.GradientTransformation:
    if level.tensor_mode:
        return scale_by_tensor_adam(b1=level.beta, b2=level.gamma, eps=level.eps)
    return optax.scale_by_adam(b1=level.beta, b2=level.gamma, eps=level.eps)


def scale_by_kadam(
    k: int = 2,
    betas: tuple[float, float] | Sequence[tuple[float, float]] = (0.9, 0.999),
    eps: float | Sequence[float] = 1e-8,
    norm: str | Sequence[str] = "elementwise",
    meta_betas: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    meta_norm: str | Sequence[str] | None = None,
) -> optax.GradientTransformation:
    """The k chained normalization levels of k-Adam, without learning rate or decay (THEORY §1).

    ``x⁽⁰⁾ = g``, ``x⁽ⁱ⁾ = level_i(x⁽ⁱ⁻¹⁾)`` for i = 1..k; the output is ``x⁽ᵏ⁾``. The arguments
    resolve to per-level ``(β_i, γ_i, ε_i, mode_i)`` exactly as :class:`kadam.KAdam` resolves them.
    """
    levels = _levels_from_arguments(k, betas, eps, norm, meta_betas, meta_norm)
    return optax.chain(*(_level_transformation(level) for level in levels))


def kadam(
    learning_rate: optax.ScalarOrSchedule,
    k: int = 2,
    betas: tuple[float, float] | Sequence[tuple[float, float]] = (0.9, 0.999),
    eps: float | Sequence[float] = 1e-8,
    weight_decay: float = 1e-2,
    decoupled_weight_decay: bool = True,
    norm: str | Sequence[str] = "elementwise",
    meta_betas: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    meta_norm: str | Sequence[str] | None = None,
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
    """k-Adam (THEORY §1) as an optax transformation; the arguments are those of :class:`kadam.KAdam`.

    Decoupled decay (AdamW): ``θ_n = (1 − ηλ) θ_{n-1} − η x⁽ᵏ⁾_n``. Coupled (Adam's L2):
    ``x⁽⁰⁾_n = g_n + λ θ_{n-1}`` and ``θ_n = θ_{n-1} − η x⁽ᵏ⁾_n``.

    Args:
        learning_rate: η, a float or an optax schedule ``step -> η`` (evaluated at 0 on the first update).
        k: number of chained levels, ≥ 1.
        betas: level 1's ``(β, γ)``, or k pairs, one per level (then ``meta_betas``/``meta_norm``
            must be left unset).
        eps: ε, one float for every level or k floats.
        weight_decay: λ ≥ 0.
        decoupled_weight_decay: AdamW-style decay if True, L2 added to the gradient if False.
        norm: level 1's mode, ``"elementwise"`` or ``"tensor"``, or k modes.
        meta_betas: ``(β, γ)`` of levels 2..k, one pair or k − 1 pairs; default ``(0.0, 0.999)``.
        meta_norm: mode of levels 2..k, one mode or k − 1 modes; default ``"tensor"``.
        mask: optax's weight-decay mask (a pytree of bools or a callable on params), as in
            :func:`optax.adamw`; leaves where it is False get no decay.

    Returns:
        An :class:`optax.GradientTransformation`; ``update`` needs ``params`` when ``weight_decay > 0``.
    """
    if not callable(learning_rate) and not float(learning_rate) >= 0.0:
        raise ValueError(f"learning_rate must be a float ≥ 0 or an optax schedule, got {learning_rate!r}")
    if not float(weight_decay) >= 0.0:
        raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay!r}")
    decay = optax.add_decayed_weights(weight_decay, mask)
    levels = scale_by_kadam(k, betas, eps, norm, meta_betas, meta_norm)
    steps = [levels, decay] if decoupled_weight_decay else [decay, levels]
    return optax.chain(*steps, optax.scale_by_learning_rate(learning_rate))
