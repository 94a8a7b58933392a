r"""Stability of Adam's :math:`(\beta, \gamma)`: exact update bounds, the stable region, growth rates.

Closed forms of THEORY §2 (discrete) and §3 (continuous time), vectorised over NumPy arrays: every
function broadcasts its ``beta``/``gamma`` (and ``n``/``tau``) arguments, returns a ``float`` for scalar
input and an ``ndarray`` otherwise. Hyperparameters are torch's: ``betas=(beta, gamma)``, both in
[0, 1). Bad input raises ``ValueError`` naming the argument and its accepted range.

One adaptive normalization level with ε = 0 maps inputs :math:`x_j` to

.. math::
    u_n = \frac{(1-\beta)\sum_j \beta^{n-j} x_j / (1-\beta^n)}
               {\sqrt{(1-\gamma)\sum_j \gamma^{n-j} x_j^2 / (1-\gamma^n)}},

and Cauchy–Schwarz gives the exact supremum :math:`B_n` of :math:`|u_n|` (:func:`update_bound`,
attained by :func:`worst_case_inputs`). It stays finite as :math:`n\to\infty` iff
:math:`\gamma > \beta^2`; outside, it grows like :math:`e^{\rho n}` with
:math:`\rho = \ln\beta - \tfrac12\ln\gamma` (:func:`growth_rate`). ε > 0 only lowers :math:`|u_n|`.

Rate conventions (``rates``): ``"discrete"`` is the recursion itself; ``"exact"`` is the continuous
model with the exact kernel :math:`a = -\ln\beta`, :math:`b = -\ln\gamma` (same region and rate as the
recursion); ``"paper"`` is the first-order Taylor rates :math:`a = (1-\beta)/\beta`,
:math:`b = (1-\gamma)/\gamma`, whose region is :math:`\gamma > \beta/(2-\beta)`.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "PRESETS",
    "Rates",
    "ContinuousRates",
    "update_bound",
    "worst_case_inputs",
    "stable_update_ceiling",
    "continuous_rates",
    "continuous_update_bound",
    "continuous_worst_case_input",
    "growth_rate",
    "boundary_gamma",
    "is_stable",
    "stability_margin",
    "kadam_update_bound",
    "kadam_is_stable",
    "switch_off_rates",
    "DEFAULT_MARGIN",
    "StabilityWarning",
    "edge_of_stability",
    "nearest_stable_gamma",
    "nearest_stable_pair",
    "region_text",
    "user_frame",
    "warn_at_user",
    "warn_if_unstable",
]

Rates = Literal["discrete", "exact", "paper"]
ContinuousRates = Literal["exact", "paper"]
_RATES: tuple[str, ...] = ("discrete", "exact", "paper")
_CONTINUOUS_RATES: tuple[str, ...] = ("exact", "paper")

FloatOrArray = float | NDArray[np.float64]

PRESETS: tuple[tuple[float, float], ...] = ((0.9, 0.999), (0.9, 0.95), (0.95, 0.98), (0.9, 0.99), (0.5, 0.999))
"""Common (β, γ) choices: torch's default, two language-model settings, a shorter second moment, low momentum."""


# ----------------------------------------------------------------------------------------------------
# validation


def _as_float_array(name: str, value: ArrayLike) -> NDArray[np.float64]:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from None
    if np.isnan(array).any():
        raise ValueError(f"{name} must not be NaN, got {value!r}")
    return array


def _check_decay(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """A decay factor (β or γ) as a float64 array, each entry in [0, 1)."""
    array = _as_float_array(name, value)
    bad = array[(array < 0.0) | (array >= 1.0)]
    if bad.size:
        raise ValueError(f"{name} must lie in [0, 1), got {float(bad.flat[0])!r}")
    return array


def _check_steps(n: ArrayLike) -> NDArray[np.float64]:
    """A step count as a float64 array of integers >= 1."""
    array = _as_float_array("n", n)
    bad = array[(array < 1.0) | (array != np.floor(array)) | ~np.isfinite(array)]
    if bad.size:
        raise ValueError(f"n must be an integer >= 1 (or None for the limit n -> inf), got {float(bad.flat[0])!r}")
    return array


def _check_time(tau: ArrayLike) -> NDArray[np.float64]:
    array = _as_float_array("tau", tau)
    bad = array[(array < 0.0) | ~np.isfinite(array)]
    if bad.size:
        raise ValueError(f"tau must be a finite number >= 0 (or None for the limit), got {float(bad.flat[0])!r}")
    return array


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _output(array: NDArray[np.float64]) -> FloatOrArray:
    return float(array) if array.ndim == 0 else array


# ----------------------------------------------------------------------------------------------------
# helpers in the log domain


def _log_decay(decay: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln of a decay factor; ln 0 = -inf without a warning."""
    with np.errstate(divide="ignore"):
        return np.log(decay)


def _log_one_minus_power(log_decay: NDArray[np.float64], n: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln(1 - decayⁿ) from ln(decay) <= 0, accurate when decayⁿ is close to 1."""
    with np.errstate(divide="ignore"):
        return np.log(-np.expm1(n * log_decay))


def _log_geometric_sum(log_ratio: NDArray[np.float64], n: NDArray[np.float64]) -> NDArray[np.float64]:
    r"""ln S_n with :math:`S_n = \sum_{j=0}^{n-1} r^j`, from ln r (any sign, ±inf allowed), n >= 1.

    r < 1: ln((1 - rⁿ)/(1 - r)); r = 1: ln n; r > 1: (n-1) ln r + ln S_n(1/r), so nothing overflows.
    """
    magnitude = np.abs(log_ratio)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sum_below_one = np.log(-np.expm1(-n * magnitude)) - np.log(-np.expm1(-magnitude))
        log_sum = np.where(log_ratio < 0.0, log_sum_below_one, (n - 1.0) * log_ratio + log_sum_below_one)
        log_sum = np.where(log_ratio == 0.0, np.log(n), log_sum)
    return np.where(n == 1.0, 0.0, log_sum)


def _log_ratio(
    log_beta: NDArray[np.float64], log_gamma: NDArray[np.float64], beta: NDArray[np.float64]
) -> NDArray[np.float64]:
    """ln r with r = β²/γ; r = 0 whenever β = 0 (also when γ = 0)."""
    with np.errstate(invalid="ignore"):
        return np.where(beta == 0.0, -np.inf, 2.0 * log_beta - log_gamma)


def _exp(log_value: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(over="ignore"):
        return np.exp(log_value)


# ----------------------------------------------------------------------------------------------------
# discrete bound (THEORY §2)


def update_bound(beta: ArrayLike, gamma: ArrayLike, n: ArrayLike | None = None, *, log: bool = False) -> FloatOrArray:
    r"""Exact supremum :math:`B_n` of :math:`|u_n|` over all input sequences, ε = 0 (THEORY §2).

    .. math::
        B_n = \frac{1-\beta}{1-\beta^n}\sqrt{\frac{1-\gamma^n}{1-\gamma}\, S_n},\qquad
        S_n = \sum_{j=0}^{n-1} r^j,\quad r = \beta^2/\gamma.

    ``n=None`` gives the limit :math:`B_\infty = (1-\beta)/\sqrt{(1-\gamma)(1-\beta^2/\gamma)}` inside the
    stable region γ > β² and ``inf`` on or outside it. Computed in the log domain (``log=True`` returns
    :math:`\ln B_n`, finite where :math:`B_n` overflows float64). In tensor mode the same value bounds
    the RMS of :math:`u_n`. Edge cases follow the recursion: :math:`B_1 = 1`; β = 0 gives
    :math:`\sqrt{(1-\gamma^n)/(1-\gamma)}`; γ = 0 < β gives ``inf`` for n ≥ 2.

    Args:
        beta: first-moment decay β in [0, 1) (array-like).
        gamma: second-moment decay γ in [0, 1) (array-like).
        n: step count, integer >= 1 (array-like), or None for n → ∞.
        log: return ln B instead of B.
    """
    beta_arr = _check_decay("beta", beta)
    gamma_arr = _check_decay("gamma", gamma)
    log_beta, log_gamma = _log_decay(beta_arr), _log_decay(gamma_arr)
    log_r = _log_ratio(log_beta, log_gamma, beta_arr)
    if n is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_bound = np.log1p(-beta_arr) - 0.5 * (np.log1p(-gamma_arr) + np.log(-np.expm1(log_r)))
        log_bound = np.where(_discrete_stable(beta_arr, gamma_arr), log_bound, np.inf)
    else:
        steps = _check_steps(n)
        log_bound = (
            np.log1p(-beta_arr)
            - _log_one_minus_power(log_beta, steps)
            + 0.5 * (_log_one_minus_power(log_gamma, steps) - np.log1p(-gamma_arr) + _log_geometric_sum(log_r, steps))
        )
    return _output(log_bound if log else _exp(log_bound))


def worst_case_inputs(beta: float, gamma: float, n: int) -> NDArray[np.float64]:
    r"""The input sequence :math:`x_1..x_n` whose :math:`u_n` attains :math:`B_n` (THEORY §2).

    :math:`x_j \propto (\beta/\gamma)^{n-j}` (Cauchy–Schwarz is tight when :math:`\gamma^{(n-j)/2}x_j`
    is proportional to :math:`\beta^{n-j}\gamma^{-(n-j)/2}`), scaled so that the largest entry is 1
    (the update is scale invariant). Entries below float64's range are 0; their share of either sum
    is below 1e-300. Then :math:`u_n = +B_n` for ε = 0.

    Raises ``ValueError`` for γ = 0 < β and n ≥ 2: the supremum is infinite and no sequence attains it.
    """
    beta_arr, gamma_arr = _check_decay("beta", beta), _check_decay("gamma", gamma)
    if beta_arr.ndim or gamma_arr.ndim:
        raise ValueError("worst_case_inputs takes scalar beta and gamma (it returns one sequence)")
    steps = int(_check_steps(n))
    lags = np.arange(steps - 1, -1, -1, dtype=np.float64)  # n - j for j = 1..n
    if beta_arr == 0.0:
        return (lags == 0.0).astype(np.float64)
    if gamma_arr == 0.0 and steps > 1:
        raise ValueError("gamma = 0 with beta > 0 has an unbounded update for n >= 2: no sequence attains it")
    log_q = float(np.log(beta_arr) - np.log(gamma_arr)) if steps > 1 else 0.0
    exponents = lags * log_q
    return np.exp(exponents - exponents.max())


def stable_update_ceiling(beta: ArrayLike, n: ArrayLike) -> FloatOrArray:
    r"""The largest :math:`|u_n|` any stable second-moment decay allows at step n (THEORY §2).

    :math:`C_n(\beta) = \sup_{\gamma > \beta^2} B_n(\beta, \gamma)`.

    The two ends of the interval give the same value (swap the roles of the two geometric sums), and a
    dense scan of γ (tests/theory) finds nothing above them in between:

    .. math::
        C_n(\beta) = B_n(\beta, \beta^2)
                  = \frac{1-\beta}{1-\beta^n}\sqrt{n\,\frac{1-\beta^{2n}}{1-\beta^2}}
                  \sim \sqrt{n\,(1-\beta)/(1+\beta)},

    so it is also the supremum over the paper's smaller region γ > β/(2−β). An update above
    :math:`C_n(\beta)` is impossible for every γ inside either region, whatever the gradients and ε ≥ 0.
    """
    beta_arr = _check_decay("beta", beta)
    return update_bound(beta_arr, beta_arr**2, n)


# ----------------------------------------------------------------------------------------------------
# continuous bound (THEORY §3)


def continuous_rates(
    beta: ArrayLike, gamma: ArrayLike, rates: ContinuousRates = "exact"
) -> tuple[FloatOrArray, FloatOrArray]:
    r"""Rates (a, b) of the continuous moments :math:`\dot m = a(x-m)`, :math:`\dot v = b(x^2-v)` (THEORY §3).

    ``"exact"``: :math:`a = -\ln\beta`, :math:`b = -\ln\gamma` (the kernel matches the recursion at
    integer lags); ``"paper"``: :math:`a = (1-\beta)/\beta`, :math:`b = (1-\gamma)/\gamma`. A zero decay
    gives an infinite rate.
    """
    _check_choice("rates", rates, _CONTINUOUS_RATES)
    beta_arr, gamma_arr = _check_decay("beta", beta), _check_decay("gamma", gamma)
    a, b = _continuous_rates(beta_arr, gamma_arr, rates)
    return _output(a), _output(b)


def _continuous_rates(
    beta: NDArray[np.float64], gamma: NDArray[np.float64], rates: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    with np.errstate(divide="ignore"):
        if rates == "exact":
            return -np.log(beta), -np.log(gamma)
        return (1.0 - beta) / beta, (1.0 - gamma) / gamma


def _log_integral_of_exp(rate: NDArray[np.float64], tau: NDArray[np.float64]) -> NDArray[np.float64]:
    r"""ln of :math:`\int_0^\tau e^{-c w}\,dw = (1 - e^{-c\tau})/c` for any real c (τ at c = 0), no overflow."""
    magnitude = np.abs(rate)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_decaying = np.log(-np.expm1(-magnitude * tau)) - np.log(magnitude)
        log_integral = np.where(rate > 0.0, log_decaying, magnitude * tau + log_decaying)
        return np.where(rate == 0.0, np.log(tau), log_integral)


def continuous_update_bound(
    beta: ArrayLike,
    gamma: ArrayLike,
    tau: ArrayLike | None = None,
    rates: ContinuousRates = "exact",
    *,
    log: bool = False,
) -> FloatOrArray:
    r"""Supremum of :math:`|u(\tau)|` in the continuous model, ε = 0 (THEORY §3).

    .. math::
        |u(\tau)| \le \frac{a}{\sqrt b}\sqrt{\frac{1-e^{-(2a-b)\tau}}{2a-b}}\,
        \frac{\sqrt{1-e^{-b\tau}}}{1-e^{-a\tau}},

    attained by :math:`x(s) \propto e^{-(a-b)(\tau-s)}` (:func:`continuous_worst_case_input`).
    ``tau=None`` is the limit :math:`a/\sqrt{b(2a-b)}` when 2a > b, ``inf`` otherwise; τ = 0 gives
    the limit 1 (:math:`\hat m \to x`, :math:`\hat v \to x^2`). β = 0 or γ = 0 (an infinite rate) gives
    ``inf`` for τ > 0: a point value of x has no weight in the other moment's integral.
    ``rates`` as in :func:`continuous_rates`; ``log=True`` returns the natural log.
    """
    _check_choice("rates", rates, _CONTINUOUS_RATES)
    beta_arr, gamma_arr = _check_decay("beta", beta), _check_decay("gamma", gamma)
    a, b = _continuous_rates(beta_arr, gamma_arr, rates)
    infinite_rate = (beta_arr == 0.0) | (gamma_arr == 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if tau is None:
            log_bound = np.log(a) - 0.5 * (np.log(b) + np.log(2.0 * a - b))
            log_bound = np.where((2.0 * a > b) & ~infinite_rate, log_bound, np.inf)
        else:
            time = _check_time(tau)
            log_bound = (
                np.log(a)
                - 0.5 * np.log(b)
                + 0.5 * _log_integral_of_exp(2.0 * a - b, time)
                + 0.5 * np.log(-np.expm1(-b * time))
                - np.log(-np.expm1(-a * time))
            )
            log_bound = np.where(infinite_rate, np.inf, log_bound)
            log_bound = np.where(time == 0.0, 0.0, log_bound)
    return _output(log_bound if log else _exp(log_bound))


def continuous_worst_case_input(
    beta: float, gamma: float, tau: float, rates: ContinuousRates = "exact"
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    r"""The input :math:`x(s) = e^{-(a-b)(\tau-s)}`, 0 ≤ s ≤ τ, whose :math:`u(\tau)` attains the bound (THEORY §3)."""
    _check_choice("rates", rates, _CONTINUOUS_RATES)
    beta_arr, gamma_arr = _check_decay("beta", beta), _check_decay("gamma", gamma)
    if beta_arr.ndim or gamma_arr.ndim:
        raise ValueError("continuous_worst_case_input takes scalar beta and gamma")
    if beta_arr == 0.0 or gamma_arr == 0.0:
        raise ValueError("beta = 0 or gamma = 0 makes the continuous bound infinite: no input attains it")
    end = float(_check_time(tau))
    a, b = _continuous_rates(beta_arr, gamma_arr, rates)
    exponent = float(a - b)

    def inputs(s: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.exp(-exponent * (end - np.asarray(s, dtype=np.float64)))

    return inputs


# ----------------------------------------------------------------------------------------------------
# region and rates


def growth_rate(beta: ArrayLike, gamma: ArrayLike, rates: Rates = "discrete") -> FloatOrArray:
    r"""Per-step exponent ρ of the update bound (THEORY §2, §3).

    ``"discrete"`` and ``"exact"``: :math:`\rho = \ln\beta - \tfrac12\ln\gamma`; ``"paper"``:
    :math:`\rho = (b - 2a)/2` with the paper's rates. Positive outside the stable region (the bound
    grows like :math:`e^{\rho n}`), zero on the boundary, negative inside, where :math:`e^{\rho t}` is
    how a past gradient spike's influence on u fades t steps later (the switch-off slope). β = 0
    gives -inf; γ = 0 < β gives +inf.
    """
    _check_choice("rates", rates, _RATES)
    beta_arr, gamma_arr = _check_decay("beta", beta), _check_decay("gamma", gamma)
    a, b = _continuous_rates(beta_arr, gamma_arr, "paper" if rates == "paper" else "exact")
    with np.errstate(invalid="ignore"):
        rate = np.where(beta_arr == 0.0, -np.inf, (b - 2.0 * a) / 2.0)
    return _output(rate)


def boundary_gamma(beta: ArrayLike, rates: Rates = "discrete") -> FloatOrArray:
    r"""γ on the boundary of the stable region: :math:`\beta^2` (discrete, exact) or :math:`\beta/(2-\beta)` (paper)."""
    _check_choice("rates", rates, _RATES)
    beta_arr = _check_decay("beta", beta)
    return _output(beta_arr / (2.0 - beta_arr) if rates == "paper" else beta_arr**2)


def _discrete_stable(beta: NDArray[np.float64], gamma: NDArray[np.float64]) -> NDArray[np.bool_]:
    """γ > β², or β = 0 (then u_n = x_n / RMS, bounded for every γ < 1, also γ = 0 where u_n = sign x_n)."""
    return (gamma > beta**2) | (beta == 0.0)


def is_stable(beta: ArrayLike, gamma: ArrayLike, rates: Rates = "discrete") -> bool | NDArray[np.bool_]:
    r"""Whether (β, γ) lies strictly inside the stable region, γ > :func:`boundary_gamma` (THEORY §2, §3).

    ``"discrete"`` also counts β = γ = 0 as stable (:math:`u_n = \mathrm{sign}\,x_n`); it is the only
    point where it differs from ``"exact"``. Decided by comparing γ with the boundary in float64, so it
    agrees with :func:`update_bound` being finite.
    """
    _check_choice("rates", rates, _RATES)
    beta_arr, gamma_arr = _check_decay("beta", beta), _check_decay("gamma", gamma)
    stable = gamma_arr > np.asarray(boundary_gamma(beta_arr, rates))
    if rates == "discrete":
        stable = _discrete_stable(beta_arr, gamma_arr)
    return bool(stable) if stable.ndim == 0 else stable


def stability_margin(beta: ArrayLike, gamma: ArrayLike, rates: Rates = "discrete") -> FloatOrArray:
    r"""γ minus the boundary's γ at the same β: positive inside the stable region (THEORY §2, §3)."""
    gamma_arr = _check_decay("gamma", gamma)
    return _output(gamma_arr - np.asarray(boundary_gamma(beta, rates)))


# ----------------------------------------------------------------------------------------------------
# k-Adam (THEORY §1, §2)


def _check_levels(betas: ArrayLike, gammas: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    beta_arr, gamma_arr = _check_decay("betas", betas), _check_decay("gammas", gammas)
    if beta_arr.ndim == 0 or gamma_arr.ndim == 0 or beta_arr.shape[0] != gamma_arr.shape[0] or beta_arr.shape[0] == 0:
        raise ValueError(
            "betas and gammas must be per-level sequences of the same length k >= 1 (level on the first "
            f"axis), got shapes {beta_arr.shape} and {gamma_arr.shape}"
        )
    return beta_arr, gamma_arr


def kadam_update_bound(betas: ArrayLike, gammas: ArrayLike, n: ArrayLike | None = None) -> FloatOrArray:
    r"""Bound on k-Adam's final update: level k's :math:`B_n(\beta_k, \gamma_k)` (THEORY §2).

    Each level is invariant to the scale of its input, so level k's output obeys its own bound
    whatever the levels below feed it. For k = 1 it is the exact supremum; for k ≥ 2 an upper bound,
    attained only if the lower levels can emit level k's worst case. ``betas``/``gammas`` hold one
    value per level on their first axis (further axes broadcast).
    """
    beta_arr, gamma_arr = _check_levels(betas, gammas)
    return update_bound(beta_arr[-1], gamma_arr[-1], n)


def kadam_is_stable(
    betas: ArrayLike, gammas: ArrayLike, levels: Literal["final", "all"] = "final"
) -> bool | NDArray[np.bool_]:
    r"""Whether k-Adam's update stays bounded (THEORY §2).

    ``levels="final"``: level k is stable (γ_k > β_k²), so the final update is bounded. ``"all"``:
    every level is stable; an unstable lower level keeps the final update bounded but lets its own
    output, hence the next level's state, grow without bound (float overflow).
    """
    _check_choice("levels", levels, ("final", "all"))
    beta_arr, gamma_arr = _check_levels(betas, gammas)
    stable = np.asarray(is_stable(beta_arr, gamma_arr))
    result = stable[-1] if levels == "final" else stable.all(axis=0)
    return bool(result) if np.ndim(result) == 0 else result


def switch_off_rates(betas: ArrayLike, gammas: ArrayLike) -> FloatOrArray:
    r"""Per-level slopes of :math:`\ln|u^{(i)}_t|` after the input switches from 1 to 0 (THEORY §2).

    A level fed an input that varies like :math:`q^t` (after transients) holds :math:`m \sim
    \max(\beta, q)^t` and :math:`v \sim \max(\gamma, q^2)^t`, so its output varies like
    :math:`q'^t` with

    .. math::
        \ln q' = \ln\max(\beta, q) - \tfrac12 \ln\max(\gamma, q^2).

    Level 1 sees exactly zero (q = 0), so its slope is the growth rate :math:`\ln\beta-\tfrac12\ln\gamma`;
    a stable level fed a growing input (q > 1 ≥ γ) outputs a constant (slope 0). Returns one rate per
    level (first axis). Assumes q ≠ β_i and q² ≠ γ_i, where a polynomial factor tᵖ joins the
    exponential. A level with β = 0 fed zero has slope -inf (its output is exactly zero).
    """
    beta_arr, gamma_arr = _check_levels(betas, gammas)
    log_input_ratio = np.full(beta_arr.shape[1:], -np.inf)
    slopes = []
    for log_beta, log_gamma in zip(_log_decay(beta_arr), _log_decay(gamma_arr), strict=True):
        log_m = np.maximum(log_beta, log_input_ratio)
        log_v = np.maximum(log_gamma, 2.0 * log_input_ratio)
        with np.errstate(invalid="ignore"):
            log_input_ratio = np.where(log_m == -np.inf, -np.inf, log_m - 0.5 * log_v)
        slopes.append(log_input_ratio)
    return _output(np.stack(slopes))


# ----------------------------------------------------------------------------------------------------
# the stable region as users meet it: nearest stable choices, the edge of stability, one warning


DEFAULT_MARGIN = 1e-3
"""The stability margin γ − β² that :func:`nearest_stable_pair` asks of a suggested pair by default."""


class StabilityWarning(UserWarning):
    """The one warning category of kadam's stability checks: a level outside the stable region γ > β²
    (KAdam, the flow model, optax, transfer rules) and the events of :class:`kadam.monitor.StabilityMonitor`.
    Filter it with ``warnings.filterwarnings("ignore", category=kadam.stability.StabilityWarning)``."""


def nearest_stable_gamma(beta: float, digits: int = 3) -> float:
    """The smallest γ with ``digits`` decimals (more where needed) strictly inside γ > β² (THEORY §2)."""
    boundary = float(boundary_gamma(beta))
    for places in range(digits, 16):
        scale = 10.0**places
        candidate = math.ceil(boundary * scale) / scale
        if candidate <= boundary:
            candidate += 1.0 / scale
        candidate = round(candidate, places)
        if boundary < candidate < 1.0:
            return candidate
    raise ValueError(f"beta = {beta!r} leaves no stable gamma below 1 in float64")


def _check_unit(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def nearest_stable_pair(beta: float, gamma: float, margin: float = DEFAULT_MARGIN) -> tuple[float, float]:
    r"""The (β, γ) nearest to the given pair (Euclidean) with stability margin ``γ − β² ≥ margin`` (THEORY §2).

    A pair that already has the margin is returned unchanged. Otherwise the nearest point lies on the
    curve ``γ = β² + margin``: the real root ``b ∈ [0, 1)`` of ``2b³ + (1 − 2(γ − margin)) b − β = 0`` (the
    stationarity condition of ``(b − β)² + (b² + margin − γ)²``) closest to the pair.
    """
    beta, gamma = _check_unit("beta", beta), _check_unit("gamma", gamma)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < 1:
        raise ValueError(f"margin must be a number in (0, 1), got {margin!r}")
    if gamma - beta**2 >= margin:
        return (beta, gamma)
    roots = np.roots([2.0, 0.0, 1.0 - 2.0 * (gamma - margin), -beta])
    candidates = [float(r.real) for r in roots if abs(r.imag) < 1e-12 and 0.0 <= r.real and r.real**2 + margin < 1.0]
    if not candidates:  # the curve meets γ < 1 only for β < sqrt(1 − margin); fall back to the largest such β
        candidates = [math.sqrt(max(0.0, 1.0 - margin)) * (1 - 1e-12)]
    best = min(candidates, key=lambda b: (b - beta) ** 2 + (b * b + margin - gamma) ** 2)
    return (best, min(best * best + margin, math.nextafter(1.0, 0.0)))


def edge_of_stability(beta: ArrayLike, lr: ArrayLike = 1.0) -> FloatOrArray:
    r"""The adaptive edge of stability :math:`(2 + 2\beta)/((1 - \beta)\eta)` (THEORY §7; Cohen et al. 2022).

    Adam with momentum β and learning rate η is stable on a quadratic whose preconditioned sharpness
    :math:`\lambda_{\max}(P^{-1}H)`, :math:`P = \mathrm{diag}(\sqrt{\hat v} + \epsilon)`, stays below this
    value. ``lr=1`` gives the edge of :math:`\lambda_{\max}(\eta P^{-1}H)`, the operator with η inside.
    """
    beta_arr = _check_decay("beta", beta)
    lr_arr = _as_float_array("lr", lr)
    if (lr_arr <= 0).any() or not np.isfinite(lr_arr).all():
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return _output((2.0 + 2.0 * beta_arr) / ((1.0 - beta_arr) * lr_arr))


def _percent(value: float) -> str:
    return f"{100 * value:.2g}%" if value < 0.1 else f"{100 * value:.0f}%"


def region_text(beta: float, gamma: float, margin: float = DEFAULT_MARGIN) -> tuple[str, str]:
    """What a level with γ ≤ β² does and what to change, as (explanation, suggestion) (THEORY §2).

    The explanation gives the per-step growth of the update bound, :math:`e^\\rho - 1` with
    :math:`\\rho = \\ln\\beta - \\tfrac12\\ln\\gamma`, and the steps per e-fold; the suggestion the nearest
    stable γ at this β, the largest stable β at this γ and the :func:`nearest_stable_pair` with ``margin``.
    The one message builder of every region warning and monitor event.
    """
    rate = max(float(growth_rate(beta, gamma)), 0.0)  # 0 on the boundary up to rounding
    if rate > 0:
        efold = "" if math.isinf(rate) else f", one e-fold every {1.0 / rate:.3g} steps"
        growth = (
            f"the bound on the update grows {_percent(math.expm1(rate)) if rate < 50 else 'without limit'} per "
            f"step (rate ln β − ½ ln γ = {rate:.4g}{efold})"
        )
    else:
        growth = "the bound on the update grows like sqrt(n) (on the boundary)"
    explanation = f"(β, γ) = ({beta:g}, {gamma:g}) lies outside the stable region γ > β² (THEORY §2): {growth}"
    pair = nearest_stable_pair(beta, gamma, margin)
    suggestion = (
        f"nearest stable γ ≥ {nearest_stable_gamma(beta):g} at this β, or β < √γ = {math.sqrt(gamma):.4g} "
        f"at this γ; the nearest pair with margin γ − β² ≥ {margin:g} is "
        f"({pair[0]:.6g}, {pair[1]:.6g})"
    )
    return explanation, suggestion


_INTERNAL_MODULES = ("kadam", "torch")


def user_frame() -> tuple[str, int, dict[str, object]]:
    """File, line and globals of the innermost frame outside kadam, torch and the standard library's
    ``contextlib``/``warnings``: the user's line that called into kadam (a constructor, ``step()``, a trainer)."""
    skip = tuple(
        os.path.dirname(module.__file__) + os.sep
        for module in (sys.modules.get(name) for name in _INTERNAL_MODULES)
        if module is not None and getattr(module, "__file__", None)
    )
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(skip) and not filename.endswith(("contextlib.py", "warnings.py")):
            return filename, frame.f_lineno, frame.f_globals
        frame = frame.f_back
    return "<unknown>", 0, {}


def warn_at_user(message: str, category: type[Warning] = StabilityWarning) -> None:
    """``warnings.warn_explicit`` of ``message`` located at :func:`user_frame` (filters and the
    once-per-location registry work as for a ``warnings.warn`` issued there)."""
    filename, lineno, module_globals = user_frame()
    registry = module_globals.setdefault("__warningregistry__", {}) if module_globals else None
    warnings.warn_explicit(
        message,
        category,
        filename,
        lineno,
        registry=registry,  # type: ignore[arg-type]
        module_globals=module_globals or None,
    )


def warn_if_unstable(levels: Sequence[tuple[float, float]], who: str, margin: float = DEFAULT_MARGIN) -> None:
    """A :class:`StabilityWarning` at the user's line for each (β, γ) of ``levels`` outside γ > β²,
    ``who`` naming what holds them (e.g. ``"KAdam"``, ``"transfer_lr"``); the text is :func:`region_text`'s."""
    for i, (beta, gamma) in enumerate(levels, start=1):
        if is_stable(beta, gamma):
            continue
        explanation, suggestion = region_text(float(beta), float(gamma), margin)
        warn_at_user(f"{who} level {i}: {explanation}; {suggestion}.")
