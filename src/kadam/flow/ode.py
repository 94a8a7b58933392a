r"""The right-hand side of the continuous-time model of Adam, AdamW and k-Adam (THEORY §3).

Time τ counts optimizer steps. Level i of k-Adam (THEORY §1) becomes, with rates ``(a_i, b_i)``,

.. math::
    \dot m_i = a_i (x_i - m_i),\quad \dot v_i = b_i (s(x_i) - v_i),\quad m_i(0) = v_i(0) = 0,\quad
    u_i = \frac{\hat m_i}{\sqrt{\hat v_i} + \epsilon_i},\quad
    \hat m_i = \frac{m_i}{1 - e^{-a_i\tau}},\ \hat v_i = \frac{v_i}{1 - e^{-b_i\tau}},

with ``s(x) = x²`` (elementwise) or ``mean(x²)`` over each tensor (tensor mode), ``x_1 = ∇L(θ)``
(``+ λθ`` for Adam's coupled decay) and ``x_{i+1} = u_i``. The parameters follow

.. math::
    \text{first order: } \dot\theta = F,\qquad
    \text{second order: } \tfrac12\ddot\theta + \dot\theta = F,\qquad
    F = -\eta\,(u_k + \lambda\theta)\ (\lambda\theta \text{ only for decoupled decay}).

Rates: ``"exact"`` ``a = −ln β, b = −ln γ``; ``"paper"`` ``a = (1−β)/β, b = (1−γ)/γ``. A level with
``β = 0`` (or ``γ = 0``) has an infinite rate: its moment *is* its input, as in the discrete recursion.

**State.** The solver carries the bias-corrected moments ``m̂, v̂`` rather than ``m, v``. Dividing the
raw moments by ``1 − e^{−aτ}`` would amplify the solver's absolute error by ``1/(aτ)`` (``v``'s rate
is 10⁻³ per step), while ``m̂`` stays on the scale of its input. Differentiating ``m̂ = m/(1 − e^{−aτ})``
gives

.. math::
    \dot{\hat m} = \kappa_a(\tau)\,(x - \hat m),\qquad \kappa_a(\tau) = \frac{a}{1 - e^{-a\tau}},\qquad
    \hat m(0) = x(0),

and the same for ``v̂`` with ``b`` and ``s(x)``: the τ = 0 limits (``m̂ → x, v̂ → s(x)``) are the
initial values. At τ = 0 itself ``κ`` is infinite and ``x − m̂`` zero; their product's limit is
``ẋ(0)/2`` (``m̂`` is then the running mean of ``x``), which :meth:`AdamFlow.forward` evaluates exactly
from a Hessian-vector product, ``ẋ_1 = ∇²L · θ̇``, carried up the levels by the chain rule. For
``τ > 0`` the difference ``x − m̂`` is of order ``τẋ`` and the solver's step of order ``τ``, so the
cancellation costs no accuracy.

For the second-order equation the state adds ``w = θ̇`` (``ẇ = 2(F − w)``), started at ``w(0) = F(0)``:
then a constant ``F`` gives ``θ(1) − θ(0) = F``, the discrete first step.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kadam.flow.loss import FlatLoss
from kadam.optimizer.kadam import KAdam
from kadam.optimizer.levels import check_nonnegative, resolve_levels, warn_if_unstable
from kadam.vocabulary import FLOW_RATES as RATES
from kadam.vocabulary import MODIFIED_ORDERS as ORDERS
from kadam.vocabulary import Level

_LEVEL_ARGUMENTS = ("k", "betas", "eps", "norm", "meta_betas", "meta_norm")
_KADAM_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(KAdam).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


def optimizer_levels(**hyperparameters: Any) -> tuple[tuple[Level, ...], dict[str, Any]]:
    """The levels and the other options of ``KAdam(params, **hyperparameters)``, with its defaults.

    Levels are parsed by :func:`kadam.optimizer.levels.resolve_levels`, as the optimizer parses them;
    ``lr`` and ``weight_decay`` are checked as it checks them, and an unstable level warns (THEORY §2).

    Raises:
        TypeError: an argument ``KAdam`` does not take.
        ValueError: a bad value, naming the argument.
    """
    unknown = sorted(set(hyperparameters) - set(_KADAM_DEFAULTS))
    if unknown:
        raise TypeError(f"KAdam got unexpected keyword argument(s) {unknown}")
    options = {**_KADAM_DEFAULTS, **hyperparameters}
    levels = resolve_levels(**{name: options[name] for name in _LEVEL_ARGUMENTS})
    for name in ("lr", "weight_decay"):
        check_nonnegative(name, options[name])
    warn_if_unstable(levels, "the flow model")
    return levels, options


class FlowSolveError(RuntimeError):
    """The ODE solve failed at time ``tau`` (in steps) for ``reason``.

    ``last_good_tau`` is the latest time at which the field was still evaluated without trouble: the
    failure lies between the two (solver stages run ahead of the accepted solution).
    """

    def __init__(self, tau: float, reason: str, last_good_tau: float | None = None) -> None:
        where = f"tau = {tau:.6g} steps" + ("" if last_good_tau is None else f" (fine up to tau = {last_good_tau:.6g})")
        super().__init__(f"the continuous model failed at {where}: {reason}")
        self.tau = tau
        self.reason = reason
        self.last_good_tau = last_good_tau


def moment_rate(decay: float, rates: str) -> float:
    """Continuous rate of a moment with per-step decay ``decay`` (β or γ), THEORY §3.

    ``"exact"``: ``−ln decay`` (the continuous kernel equals the discrete one at integer lags);
    ``"paper"``: ``(1 − decay)/decay`` (first-order Taylor expansion of the recursion). ``decay = 0``
    gives ``inf``: the moment equals its input.
    """
    if rates not in RATES:
        raise ValueError(f"rates must be one of {RATES}, got {rates!r}")
    if decay == 0.0:
        return math.inf
    return -math.log(decay) if rates == "exact" else (1.0 - decay) / decay


class LevelRates(NamedTuple):
    """One level in continuous time: rates ``a`` (first moment) and ``b`` (second), ε and mode."""

    a: float
    b: float
    eps: float
    tensor_mode: bool

    @classmethod
    def from_level(cls, level: Level, rates: str) -> LevelRates:
        return cls(moment_rate(level.beta, rates), moment_rate(level.gamma, rates), level.eps, level.tensor_mode)


class LevelValues(NamedTuple):
    """A level's input ``x``, bias-corrected moments ``m̂, v̂`` (``v̂`` per tensor in tensor mode) and output ``u``."""

    x: Tensor
    m_hat: Tensor
    v_hat: Tensor
    u: Tensor


def _kappa(rate: float, tau: float) -> float:
    """``κ(τ) = rate / (1 − e^{−rate·τ})`` for ``τ > 0``: the bias-corrected moment's relaxation rate."""
    return rate / -math.expm1(-rate * tau)


class AdamFlow(nn.Module):
    """The vector field ``dy/dτ = f(τ, y)`` of THEORY §3, for ``torchdiffeq.odeint``.

    The state ``y`` is a tuple: ``θ``, then ``w = θ̇`` for ``order=2``, then for each level ``m̂`` (if
    ``β > 0``) and ``v̂`` (if ``γ > 0``). :meth:`initial_state` gives its value at τ = 0.

    Args:
        loss: the full-batch loss and its tensor layout.
        levels: the k levels' hyperparameters, as :class:`~kadam.KAdam` resolves them.
        lr, weight_decay, decoupled_weight_decay, maximize: as for :class:`~kadam.KAdam`.
        rates: ``"exact"`` or ``"paper"``.
        order: 1 or 2.
        on_evaluation: called with τ at every evaluation (progress reporting).
    """

    def __init__(
        self,
        loss: FlatLoss,
        levels: Sequence[Level],
        *,
        lr: float,
        weight_decay: float,
        decoupled_weight_decay: bool,
        maximize: bool,
        rates: str,
        order: int,
        on_evaluation: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.loss = loss
        self.levels = [LevelRates.from_level(level, rates) for level in levels]
        self.rates = rates
        self.lr = lr
        self.weight_decay = weight_decay
        self.decoupled = decoupled_weight_decay
        self.gradient_sign = -1.0 if maximize else 1.0
        self.order = order
        self.on_evaluation = on_evaluation
        self.evaluations = 0
        self.last_tau = 0.0
        self.last_good_tau: float | None = None

    @classmethod
    def for_optimizer(
        cls,
        loss: FlatLoss,
        *,
        rates: str = "exact",
        order: int = 1,
        on_evaluation: Callable[[float], None] | None = None,
        **hyperparameters: Any,
    ) -> AdamFlow:
        """The field of ``KAdam(params, **hyperparameters)`` (arguments as :func:`optimizer_levels` reads them)."""
        levels, options = optimizer_levels(**hyperparameters)
        return cls(
            loss,
            levels,
            lr=options["lr"],
            weight_decay=options["weight_decay"],
            decoupled_weight_decay=options["decoupled_weight_decay"],
            maximize=options["maximize"],
            rates=rates,
            order=order,
            on_evaluation=on_evaluation,
        )

    # ----- pieces shared by the field, the initial state and the read-out -----

    def _square(self, level: LevelRates, x: Tensor) -> Tensor:
        """``s(x)``: ``x²``, or ``mean(x²)`` per tensor in tensor mode."""
        return self.loss.tensor_mean(x * x) if level.tensor_mode else x * x

    def _denominator(self, level: LevelRates, v_hat: Tensor) -> Tensor:
        root = v_hat.clamp_min(0.0).sqrt()
        return self.loss.expand(root) if level.tensor_mode else root

    def level_input(self, theta: Tensor, grad: Tensor) -> Tensor:
        """``x_1``: the gradient (negated to maximize), plus ``λθ`` for coupled decay."""
        x = self.gradient_sign * grad
        return x if self.decoupled or self.weight_decay == 0 else x + self.weight_decay * theta

    def cascade(self, x: Tensor, moments: Sequence[tuple[Tensor | None, Tensor | None]] | None) -> list[LevelValues]:
        """Run ``x_1 = x`` up the levels; ``moments[i] = (m̂, v̂)`` (``None``: an infinite rate).

        ``moments=None`` takes every level at its τ = 0 limit, ``m̂ = x``, ``v̂ = s(x)``.
        """
        values = []
        for i, level in enumerate(self.levels):
            m_hat, v_hat = (None, None) if moments is None else moments[i]
            m_hat = x if m_hat is None else m_hat
            v_hat = self._square(level, x) if v_hat is None else v_hat
            u = m_hat / (self._denominator(level, v_hat) + level.eps)
            values.append(LevelValues(x, m_hat, v_hat, u))
            x = u
        return values

    def drift(self, theta: Tensor, u: Tensor) -> Tensor:
        """``F = −η (u_k + λθ)`` (decoupled decay) or ``−η u_k`` (coupled)."""
        if self.decoupled and self.weight_decay != 0:
            return -self.lr * (u + self.weight_decay * theta)
        return -self.lr * u

    def split_state(
        self, state: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor | None, list[tuple[Tensor | None, Tensor | None]]]:
        """``(θ, w or None, [(m̂_i or None, v̂_i or None)])`` from the flat state tuple."""
        position = 2 if self.order == 2 else 1
        moments = []
        for level in self.levels:
            pair: list[Tensor | None] = []
            for rate in (level.a, level.b):
                if math.isinf(rate):
                    pair.append(None)
                else:
                    pair.append(state[position])
                    position += 1
            moments.append((pair[0], pair[1]))
        return state[0], (state[1] if self.order == 2 else None), moments

    def join_state(
        self, theta: Tensor, velocity: Tensor | None, moments: Sequence[tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, ...]:
        """The flat state tuple from ``θ``, ``w`` (order 2, else ``None``) and every level's ``(m̂, v̂)``.

        The inverse of :meth:`split_state`: moments of an infinite rate are left out (the state does not
        carry them). With the discrete run's bias-corrected moments at step ``s`` this restarts the model
        from that run's state.
        """
        if (velocity is None) != (self.order == 1):
            raise ValueError(f"velocity must be given exactly when order == 2, got order {self.order}")
        if len(moments) != len(self.levels):
            raise ValueError(
                f"moments must hold one (m_hat, v_hat) pair per level ({len(self.levels)}), got {len(moments)}"
            )
        stored = []
        for level, (m_hat, v_hat) in zip(self.levels, moments, strict=True):
            stored += [] if math.isinf(level.a) else [m_hat]
            stored += [] if math.isinf(level.b) else [v_hat]
        return (theta, *([] if velocity is None else [velocity]), *stored)

    def _gradient(self, tau: float, theta: Tensor) -> Tensor:
        value, grad = self.loss.value_and_grad(theta)
        if not torch.isfinite(value):
            raise FlowSolveError(tau, f"the loss is {value.item()}", self.last_good_tau)
        if not torch.isfinite(grad).all():
            raise FlowSolveError(tau, "the gradient has non-finite entries", self.last_good_tau)
        return grad

    # ----- the field -----

    def initial_state(self) -> tuple[Tensor, ...]:
        """The state at τ = 0: ``θ₀``, ``w = F(0)`` (second order), and the moments' limits ``m̂ = x, v̂ = s(x)``."""
        theta = self.loss.theta0
        values = self.cascade(self.level_input(theta, self._gradient(0.0, theta)), None)
        velocity = self.drift(theta, values[-1].u) if self.order == 2 else None
        return self.join_state(theta, velocity, [(value.m_hat, value.v_hat) for value in values])

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        tau = float(t)
        self.last_tau = tau
        self.evaluations += 1
        if self.on_evaluation is not None:
            self.on_evaluation(tau)
        theta, velocity, moments = self.split_state(state)
        values = self.cascade(self.level_input(theta, self._gradient(tau, theta)), moments)
        force = self.drift(theta, values[-1].u)
        theta_dot = force if velocity is None else velocity
        head = [theta_dot] if velocity is None else [theta_dot, 2.0 * (force - velocity)]
        if tau == 0.0:
            tail = self._initial_moment_derivatives(theta, theta_dot, values)
        else:
            tail = []
            for level, value in zip(self.levels, values, strict=True):
                if not math.isinf(level.a):
                    tail.append(_kappa(level.a, tau) * (value.x - value.m_hat))
                if not math.isinf(level.b):
                    tail.append(_kappa(level.b, tau) * (self._square(level, value.x) - value.v_hat))
        derivatives = (*head, *tail)
        if not all(torch.isfinite(d).all() for d in derivatives):
            raise FlowSolveError(
                tau, "the vector field has non-finite entries (eps = 0 with a zero input?)", self.last_good_tau
            )
        self.last_good_tau = tau if self.last_good_tau is None else max(tau, self.last_good_tau)
        return derivatives

    def _initial_moment_derivatives(
        self, theta: Tensor, theta_dot: Tensor, values: Sequence[LevelValues]
    ) -> list[Tensor]:
        """``dm̂/dτ, dv̂/dτ`` at τ = 0: ``ẋ/2`` and ``ṡ(x)/2`` (just ``ẋ``, ``ṡ`` for an infinite rate).

        ``ẋ_1 = ±∇²L·θ̇ (+ λθ̇)``; ``ẋ_{i+1} = u̇_i`` from the chain rule through
        ``u = m̂/(sqrt(v̂) + ε)``.
        """
        x_dot = self.gradient_sign * self.loss.hessian_vector_product(theta, theta_dot)
        if not self.decoupled and self.weight_decay != 0:
            x_dot = x_dot + self.weight_decay * theta_dot
        derivatives = []
        for level, value in zip(self.levels, values, strict=True):
            square_dot = 2.0 * value.x * x_dot
            square_dot = self.loss.tensor_mean(square_dot) if level.tensor_mode else square_dot
            m_dot = x_dot if math.isinf(level.a) else 0.5 * x_dot
            v_dot = square_dot if math.isinf(level.b) else 0.5 * square_dot
            derivatives += [] if math.isinf(level.a) else [m_dot]
            derivatives += [] if math.isinf(level.b) else [v_dot]
            root = self._denominator(level, value.v_hat)
            root_dot = torch.where(
                root > 0, (self.loss.expand(v_dot) if level.tensor_mode else v_dot) / (2.0 * root), 0.0
            )
            denominator = root + level.eps
            x_dot = m_dot / denominator - value.m_hat * root_dot / denominator**2
        return derivatives

    def raw_moments(self, tau: float, values: Sequence[LevelValues]) -> list[tuple[Tensor, Tensor]]:
        """``(m_i, v_i)`` uncorrected, as :class:`~kadam.KAdam` stores them: ``m = m̂ (1 − e^{−aτ})``."""
        raw = []
        for level, value in zip(self.levels, values, strict=True):
            m_scale = 1.0 if math.isinf(level.a) else -math.expm1(-level.a * tau)
            v_scale = 1.0 if math.isinf(level.b) else -math.expm1(-level.b * tau)
            raw.append((value.m_hat * m_scale, value.v_hat * v_scale))
        return raw

    def read_out(self, tau: float, state: Sequence[Tensor]) -> list[LevelValues]:
        """Every level's ``(x, m̂, v̂, u)`` at a solved state."""
        theta, _, moments = self.split_state(state)
        return self.cascade(self.level_input(theta, self._gradient(tau, theta)), moments)
