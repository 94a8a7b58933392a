r"""The O(η²) modified equations of the whole Adam / AdamW / k-Adam recursion (THEORY §3).

The first-order model (:class:`~kadam.flow.ode.AdamFlow`, exact rates) differs from the discrete
recursion by O(η) at a fixed horizon ``η·steps``: the Euler step of ``θ`` *and* the moments, whose
continuous kernels sample their input at a different point of each step than the recursion does.
Backward error analysis (Cattaneo, Klusowski & Shigida, ICML 2024, "On the implicit bias of Adam")
removes such errors order by order; this module keeps the moments as states (one ``(m̂_i, v̂_i)`` per
level, both modes) and corrects every equation to O(η²). The derivation is in
``docs/flow_second_order.md``; in short:

**Moments.** Over one step the exact kernel (``a = −ln β``) gives
``m(n) = β m(n−1) + ∫_{n−1}^{n} a e^{−a(n−s)} y(s) ds``, which equals the recursion's
``β m_{n−1} + (1−β) y_n`` exactly for an input constant over the step. For a slowly varying input the
kernel samples ``y`` at its mean lag ``c(a) = 1/a − 1/(e^a − 1)`` before the step's end (``c → ½`` as
``a → 0``, ``c → 0`` as ``a → ∞``), while the recursion samples level 1's input ``∇L(θ_{n−1})`` at the
step's start and level ``i ≥ 2``'s input ``u_{i−1}(n)`` at its end. Feeding the kernel the shifted input
``ỹ = y − δ ẏ`` with ``δ = 1 − c(a)`` (level 1) or ``δ = −c(a)`` (levels ≥ 2) makes each step's moment
update exact to O(ÿ) = O(η²); the same for ``v`` with ``b = −ln γ`` and ``s(y)`` (``y²`` or the tensor
mean of ``y²``) of the shifted input: ``s̃ = s(y − δẏ)``, equal to ``s − δṡ`` to O(δ²ẏ²) = O(η²), never
negative, and smooth where a coordinate of ``y`` crosses zero (shifting ``s`` itself, e.g. as
``s·exp(−δṡ/s)``, is singular there, ``ṡ/s = 2ẏ/y``, and made the solver crawl on logistic regression). A
level with an infinite rate (``β = 0``) is its shifted input itself (``c = 0``).

**Parameters.** ``θ_n − θ_{n−1} = −η (u_k(n) + λ θ_{n−1})`` (decoupled decay) is the integral of the
field over the step when the field is sampled at ``u_k(τ + ½)`` and ``θ(τ − ½)``:

.. math::
    \dot\theta = -\eta\,\bigl(u_k + \tfrac12 \dot u_k + \lambda(\theta - \tfrac12 \dot\theta^{(1)})\bigr),

with ``θ̇⁽¹⁾ = −η (u_k + λθ)`` (Adam's coupled decay enters ``y`` instead: ``y = ∇L + λθ``).

**Derivatives.** ``ẏ₁ = ±∇²L·θ̇⁽¹⁾ (+ λθ̇⁽¹⁾)`` (one Hessian-vector product per evaluation),
``ẏ_{i+1} = u̇_i`` from the chain rule through ``u = m̂/(√v̂ + ε)`` with the moments' own derivatives.
Using ``θ̇⁽¹⁾`` rather than the corrected ``θ̇`` inside the shifts changes them by O(η²).

**Near τ = 0.** A moment's derivative ``κ(τ)(ỹ − m̂)`` tends to ``½ dỹ/dτ``, which differs from the
computable ``½ẏ`` by ``δÿ = O(η²)``; fed up the chain (``u̇``, the next level's shift) that finite jump
would be divided by τ again in the next level's ``κ(τ)``. The chained derivatives therefore use
``w·½ẏ + (1 − w)·κ(τ)(ỹ − m̂)`` with ``w = e^{−τ/τ_w}``, ``τ_w =`` :data:`BLEND_STEPS`, continuous at
τ = 0; the blend differs from the exact derivative by O(η) only for τ ≲ τ_w, an O(η² τ_w) change of θ.

The rates must be ``"exact"``: the paper's rates change the kernel itself, an O(η) error no shift
removes. Only the first-order form of ``θ`` is corrected (``order=1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from kadam.flow.ode import AdamFlow, FlowSolveError, LevelRates, LevelValues, _kappa

BLEND_STEPS = 0.02
"""Time constant (in steps) over which the chained moment derivatives pass from their τ = 0 limit to ``κ(ỹ − m̂)``."""


def mean_lag(rate: float) -> float:
    r"""Mean lag ``c(a) = 1/a − 1/(e^a − 1)`` of the kernel ``a e^{−aσ}`` on ``σ ∈ [0, 1]``, in steps.

    The point of one step at which the exact kernel samples a linearly varying input, measured back
    from the step's end: ``½ − a/12 + O(a³)`` for small ``a``, ``0`` for ``a = ∞`` (a moment equal to its input).
    """
    if not rate >= 0:
        raise ValueError(f"rate must be a number >= 0, got {rate!r}")
    if math.isinf(rate):
        return 0.0
    if rate < 1e-4:
        return 0.5 - rate / 12.0 + rate**3 / 720.0
    return 1.0 / rate - 1.0 / math.expm1(rate)


class ModifiedAdamFlow(AdamFlow):
    """The O(η²) modified equations of the recursion (module docstring), a drop-in for :class:`AdamFlow`.

    Same state as the first-order field with ``order=1`` (``θ``, then every finite-rate ``m̂_i``, ``v̂_i``)
    and the same constructor; ``rates`` must be ``"exact"`` and ``order`` 1.
    """

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - AdamFlow's signature
        super().__init__(*args, **kwargs)
        if self.order != 1:
            raise ValueError(f"the modified equations correct the first-order model: order must be 1, got {self.order}")
        if self.rates != "exact":
            raise ValueError(
                f"the modified equations need rates='exact' (the paper's kernel differs at O(eta)), got {self.rates!r}"
            )
        self.shifts = [
            (1.0 - mean_lag(level.a), 1.0 - mean_lag(level.b)) if i == 0 else (-mean_lag(level.a), -mean_lag(level.b))
            for i, level in enumerate(self.levels)
        ]

    def _square_dot(self, level: LevelRates, y: Tensor, y_dot: Tensor) -> Tensor:
        product = 2.0 * y * y_dot
        return self.loss.tensor_mean(product) if level.tensor_mode else product

    def _modified_cascade(
        self, tau: float, theta: Tensor, moments: Sequence[tuple[Tensor | None, Tensor | None]] | None
    ) -> tuple[list[LevelValues], list[Tensor], Tensor, list[tuple[Tensor, Tensor]]]:
        """Every level's values, the moments' derivatives, ``θ̇`` and every level's shifted inputs ``(ỹ, s̃)``.

        ``moments=None`` takes the τ = 0 limits ``m̂ = ỹ``, ``v̂ = s̃``.
        """
        y = self.level_input(theta, self._gradient(tau, theta))
        first_order = self.cascade(y, moments)
        theta_dot_1 = self.drift(theta, first_order[-1].u)
        y_dot = self.gradient_sign * self.loss.hessian_vector_product(theta, theta_dot_1)
        if not self.decoupled and self.weight_decay != 0:
            y_dot = y_dot + self.weight_decay * theta_dot_1
        values, derivatives, shifted = [], [], []
        for i, (level, (shift_m, shift_v)) in enumerate(zip(self.levels, self.shifts, strict=True)):
            stored_m, stored_v = (None, None) if moments is None else moments[i]
            square_dot = self._square_dot(level, y, y_dot)
            y_shifted, square_shifted = y - shift_m * y_dot, self._square(level, y - shift_v * y_dot)
            shifted.append((y_shifted, square_shifted))
            blend = math.exp(-tau / BLEND_STEPS)  # weight of the τ = 0 limit in the chained derivatives
            if math.isinf(level.a):
                m_hat, m_dot = y_shifted, y_dot
                m_chain = m_dot
            else:
                m_hat = y_shifted if stored_m is None else stored_m
                m_dot = 0.5 * y_dot if tau == 0.0 else _kappa(level.a, tau) * (y_shifted - m_hat)
                m_chain = blend * 0.5 * y_dot + (1.0 - blend) * m_dot
            if math.isinf(level.b):
                v_hat, v_dot = square_shifted, square_dot
                v_chain = v_dot
            else:
                v_hat = square_shifted if stored_v is None else stored_v
                v_dot = 0.5 * square_dot if tau == 0.0 else _kappa(level.b, tau) * (square_shifted - v_hat)
                v_chain = blend * 0.5 * square_dot + (1.0 - blend) * v_dot
            derivatives += [] if math.isinf(level.a) else [m_dot]
            derivatives += [] if math.isinf(level.b) else [v_dot]
            root = self._denominator(level, v_hat)
            root_dot = torch.where(
                root > 0, (self.loss.expand(v_chain) if level.tensor_mode else v_chain) / (2.0 * root), 0.0
            )
            denominator = root + level.eps
            u = m_hat / denominator
            u_dot = m_chain / denominator - m_hat * root_dot / denominator**2
            values.append(LevelValues(y, m_hat, v_hat, u))
            y, y_dot = u, u_dot
        u, u_dot = values[-1].u, y_dot
        if self.decoupled and self.weight_decay != 0:
            theta_dot = -self.lr * (u + 0.5 * u_dot + self.weight_decay * (theta - 0.5 * theta_dot_1))
        else:
            theta_dot = -self.lr * (u + 0.5 * u_dot)
        return values, derivatives, theta_dot, shifted

    def initial_state(self, iterations: int = 50) -> tuple[Tensor, ...]:
        """``θ₀`` and every level's moments at the τ = 0 limits ``m̂ = ỹ``, ``v̂ = s̃`` of the shifted inputs.

        The shifts depend on ``θ̇⁽¹⁾``, hence on the moments themselves: the limits are the fixed point
        of ``(m̂, v̂) → (ỹ, s̃)`` (a contraction with factor O(η)), iterated to rounding. A mismatch
        would make ``κ(τ)(ỹ − m̂)`` blow up like ``1/τ`` as τ → 0.
        """
        theta = self.loss.theta0
        _, _, _, shifted = self._modified_cascade(0.0, theta, None)
        for _ in range(iterations):
            _, _, _, following = self._modified_cascade(0.0, theta, shifted)
            change = max(
                float((new - old).abs().max()) / max(float(old.abs().max()), 1e-300)
                for pair_new, pair_old in zip(following, shifted, strict=True)
                for new, old in zip(pair_new, pair_old, strict=True)
            )
            shifted = following
            if change < 1e-15:
                break
        return self.join_state(theta, None, shifted)

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        tau = float(t)
        self.last_tau = tau
        self.evaluations += 1
        if self.on_evaluation is not None:
            self.on_evaluation(tau)
        theta, _, moments = self.split_state(state)
        _, moment_derivatives, theta_dot, _ = self._modified_cascade(tau, theta, moments)
        derivatives = (theta_dot, *moment_derivatives)
        if not all(torch.isfinite(d).all() for d in derivatives):
            raise FlowSolveError(
                tau, "the vector field has non-finite entries (eps = 0 with a zero input?)", self.last_good_tau
            )
        self.last_good_tau = tau if self.last_good_tau is None else max(tau, self.last_good_tau)
        return derivatives

    def read_out(self, tau: float, state: Sequence[Tensor]) -> list[LevelValues]:
        """Every level's ``(ỹ-driven)`` values at a solved state."""
        theta, _, moments = self.split_state(state)
        values, _, _, _ = self._modified_cascade(tau, theta, moments)
        return values
