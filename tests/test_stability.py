"""Closed forms of kadam.stability against exact references (THEORY §2–§3).

References: exact rational arithmetic (``fractions``) for the discrete bound and its attainment, a
numerical maximisation for the supremum claim, the real KAdam code (float64, ε = 0) for every input
sequence, and scipy's ODE solver for the continuous bound.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from scipy.optimize import minimize

from kadam import stability
from kadam.experiments.stability.protocol import optimizer_updates

# (beta, gamma) on both sides of gamma = beta**2, plus the boundary itself
POINTS = [
    (0.9, 0.999),
    (0.9, 0.95),
    (0.5, 0.999),
    (0.99, 0.9999),
    (0.9, 0.81),
    (0.9, 0.7),
    (0.9, 0.5),
    (0.5, 0.2),
    (0.3, 0.05),
]


def exact_squared_bound(beta: float, gamma: float, n: int) -> Fraction:
    """B_n² in exact rational arithmetic (β, γ are binary fractions), straight from THEORY §2."""
    b, g = Fraction(beta), Fraction(gamma)
    geometric_sum = sum((b * b / g) ** j for j in range(n))
    return ((1 - b) / (1 - b**n)) ** 2 * (1 - g**n) / (1 - g) * geometric_sum


def exact_squared_update(beta: float, gamma: float, inputs: list[Fraction]) -> Fraction:
    """u_n² of the recursion (THEORY §1, ε = 0) in exact rational arithmetic."""
    b, g = Fraction(beta), Fraction(gamma)
    m = v = Fraction(0)
    for x in inputs:
        m = b * m + (1 - b) * x
        v = g * v + (1 - g) * x * x
    n = len(inputs)
    return (m / (1 - b**n)) ** 2 / (v / (1 - g**n))


@pytest.mark.parametrize(("beta", "gamma"), POINTS)
@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_bound_matches_exact_arithmetic(beta: float, gamma: float, n: int) -> None:
    reference = math.sqrt(exact_squared_bound(beta, gamma, n))
    assert stability.update_bound(beta, gamma, n) == pytest.approx(reference, rel=1e-13)


@pytest.mark.parametrize(("beta", "gamma"), POINTS)
def test_worst_case_attains_bound_in_exact_arithmetic(beta: float, gamma: float) -> None:
    n = 12
    ratio = Fraction(beta) / Fraction(gamma)
    inputs = [ratio ** (n - j) for j in range(1, n + 1)]
    assert exact_squared_update(beta, gamma, inputs) == exact_squared_bound(beta, gamma, n)


@pytest.mark.parametrize(("beta", "gamma", "n"), [(0.9, 0.999, 4), (0.9, 0.7, 5), (0.5, 0.2, 3), (0.3, 0.05, 4)])
def test_numerical_maximisation_never_beats_the_bound(beta: float, gamma: float, n: int) -> None:
    """The supremum claim, brute force: a multi-start optimiser over all x ∈ Rⁿ finds B_n and nothing above."""
    rng = np.random.default_rng(0)

    def negative_update(x: np.ndarray) -> float:
        return -float(optimizer_free_update(beta, gamma, x))

    best = max(
        -minimize(negative_update, rng.standard_normal(n), method="BFGS", options={"gtol": 1e-12}).fun for _ in range(8)
    )
    bound = stability.update_bound(beta, gamma, n)
    assert best <= bound * (1 + 1e-12)
    assert best == pytest.approx(bound, rel=1e-6)


def optimizer_free_update(beta: float, gamma: float, inputs: np.ndarray) -> float:
    """u_n in float64 by the recursion itself (numpy), for the optimiser above."""
    m = v = 0.0
    for x in inputs:
        m = beta * m + (1 - beta) * x
        v = gamma * v + (1 - gamma) * x * x
    n = len(inputs)
    return (m / (1 - beta**n)) / math.sqrt(v / (1 - gamma**n)) if v > 0 else 0.0


@pytest.mark.parametrize(("beta", "gamma"), POINTS)
@pytest.mark.parametrize("n", [1, 3, 30, 200])
def test_worst_case_attains_bound_through_kadam(beta: float, gamma: float, n: int) -> None:
    inputs = stability.worst_case_inputs(beta, gamma, n)
    updates = optimizer_updates(inputs, [beta], [gamma], eps=0.0)
    bound = stability.update_bound(beta, gamma, n)
    assert abs(updates[-1] - bound) <= 1e-10 * bound


def assert_never_exceeds(beta: float, gamma: float, sequences: np.ndarray) -> None:
    """Every u_n of every column (run through KAdam, ε = 0) is within rounding of B_n."""
    updates = optimizer_updates(sequences, [beta], [gamma], eps=0.0)
    bounds = np.asarray(stability.update_bound(beta, gamma, np.arange(1, len(sequences) + 1)))
    assert np.isfinite(updates).all()
    assert (np.abs(updates) <= bounds[:, None] * (1 + 1e-12)).all()


@pytest.mark.parametrize(("beta", "gamma"), POINTS)
def test_random_and_heavy_tailed_inputs_never_exceed_bound(beta: float, gamma: float) -> None:
    rng = np.random.default_rng(1)
    steps, columns = 150, 64
    gaussian = rng.standard_normal((steps, columns))
    cauchy = rng.standard_cauchy((steps, columns))
    shrinking = rng.standard_normal((steps, columns)) * np.exp(
        -rng.uniform(0, 0.5, columns) * np.arange(steps)[:, None]
    )
    spikes = np.where(rng.random((steps, columns)) < 0.03, 1e6, 1e-3) * rng.choice([-1.0, 1.0], (steps, columns))
    sequences = np.concatenate([gaussian, cauchy, shrinking, spikes], axis=1)
    sequences[0] = np.where(sequences[0] == 0.0, 1.0, sequences[0])  # u_1 = 0/0 otherwise
    assert_never_exceeds(beta, gamma, sequences)


@given(
    point=st.sampled_from(POINTS),
    first=st.floats(1e-6, 1e6) | st.floats(-1e6, -1e-6),
    rest=st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=0, max_size=60),
)
def test_hypothesis_inputs_never_exceed_bound(point: tuple[float, float], first: float, rest: list[float]) -> None:
    beta, gamma = point
    assert_never_exceeds(beta, gamma, np.asarray([first, *rest])[:, None])


def test_limits_of_the_discrete_bound() -> None:
    # inside: B_n increases to B_inf, which matches THEORY's 7.27 at (0.9, 0.999)
    assert stability.update_bound(0.9, 0.999) == pytest.approx(7.2703, abs=1e-4)
    assert stability.update_bound(0.9, 0.999, 10**6) == pytest.approx(stability.update_bound(0.9, 0.999), rel=1e-12)
    assert stability.update_bound(0.9, 0.999, 10**9, log=True) == pytest.approx(
        math.log(stability.update_bound(0.9, 0.999))
    )
    # boundary gamma = beta**2 (exact in binary at beta = 0.5): B_n ~ sqrt(n (1 - beta) / (1 + beta))
    n = 10**8
    assert stability.update_bound(0.5, 0.25, n) / math.sqrt(n * 0.5 / 1.5) == pytest.approx(1.0, rel=1e-6)
    assert stability.update_bound(0.5, 0.25) == math.inf and not stability.is_stable(0.5, 0.25)
    # outside: ln B_n grows at ln(beta) - ln(gamma)/2 per step, far past float64's range in log mode
    log_bounds = stability.update_bound(0.9, 0.5, [10**5, 10**5 + 1], log=True)
    assert log_bounds[1] - log_bounds[0] == pytest.approx(stability.growth_rate(0.9, 0.5), rel=1e-9)
    assert stability.update_bound(0.9, 0.5, 10**5) == math.inf
    # edge cases of the recursion: u_1 = sign(x_1); beta = 0; gamma = 0
    assert stability.update_bound(0.7, 0.3, 1) == 1.0
    assert stability.update_bound(0.0, 0.99, 5) == pytest.approx(math.sqrt((1 - 0.99**5) / 0.01), rel=1e-14)
    assert stability.update_bound(0.5, 0.0, 2) == math.inf and stability.update_bound(0.0, 0.0) == 1.0
    assert stability.is_stable(0.0, 0.0) and not stability.is_stable(0.0, 0.0, rates="exact")


def test_kingma_ba_one_spike_value_is_not_the_supremum() -> None:
    """(1-β)/sqrt(1-γ) = 3.16 at (0.9, 0.999); a worst-case sequence through KAdam reaches 7.09 by step 3000."""
    beta, gamma, n = 0.9, 0.999, 3000
    updates = optimizer_updates(stability.worst_case_inputs(beta, gamma, n), [beta], [gamma])
    assert updates[-1] > 2.2 * (1 - beta) / math.sqrt(1 - gamma)
    assert updates[-1] == pytest.approx(stability.update_bound(beta, gamma, n), rel=1e-10)


def test_vectorised_calls_equal_scalar_calls() -> None:
    betas = np.array([[0.9], [0.5], [0.99]])
    gammas = np.array([0.999, 0.7, 0.3])
    steps = np.array([1, 10, 1000])
    for function, extra in [
        (stability.update_bound, {}),
        (stability.update_bound, {"n": steps}),
        (stability.continuous_update_bound, {"tau": steps}),
        (stability.continuous_update_bound, {"rates": "paper"}),
        (stability.growth_rate, {"rates": "paper"}),
        (stability.stability_margin, {}),
    ]:
        table = function(betas, gammas, **extra)
        assert table.shape == (3, 3)
        for i, j in np.ndindex(3, 3):
            scalar_extra = {key: (value[j] if isinstance(value, np.ndarray) else value) for key, value in extra.items()}
            assert table[i, j] == function(float(betas[i, 0]), float(gammas[j]), **scalar_extra)


@pytest.mark.parametrize("rates", ["discrete", "exact", "paper"])
def test_region_growth_rate_and_boundary_agree(rates: str) -> None:
    betas = np.linspace(0.05, 0.995, 40)
    on_boundary = np.asarray(stability.boundary_gamma(betas, rates))
    assert np.allclose(stability.growth_rate(betas, on_boundary, rates), 0.0, atol=1e-12)
    for shift, expected in [(1e-3, True), (-1e-3, False)]:
        gammas = np.clip(on_boundary + shift, 0.0, 0.999999)
        stable = stability.is_stable(betas, gammas, rates)
        assert (stable == expected).all()
        assert ((np.asarray(stability.growth_rate(betas, gammas, rates)) < 0) == stable).all()
    assert stability.is_stable(0.9, 0.999) is True


def test_exact_rates_reproduce_the_discrete_region_and_paper_rates_do_not() -> None:
    beta, gamma = 0.9, 0.815  # between gamma = beta**2 = 0.81 and beta/(2-beta) = 0.818
    assert stability.is_stable(beta, gamma) and not stability.is_stable(beta, gamma, "paper")
    assert stability.growth_rate(beta, gamma, "exact") == pytest.approx(
        math.log(beta) - 0.5 * math.log(gamma), rel=1e-14
    )
    assert math.isfinite(stability.continuous_update_bound(beta, gamma, rates="exact"))
    assert stability.continuous_update_bound(beta, gamma, rates="paper") == math.inf


@pytest.mark.parametrize("rates", ["exact", "paper"])
@pytest.mark.parametrize("ratio", [0.1, 1.0, 1.9])
def test_continuous_bound_tends_to_discrete_as_decays_tend_to_one(rates: str, ratio: float) -> None:
    """At fixed (1-γ)/(1-β), the relative gap to the discrete bound shrinks like 1-β (B_∞ and at τ = n)."""
    gaps_limit, gaps_finite = [], []
    for one_minus_beta in [1e-2, 1e-3, 1e-4]:
        beta, gamma = 1 - one_minus_beta, 1 - ratio * one_minus_beta
        n = round(2.0 / one_minus_beta)
        continuous_limit = stability.continuous_update_bound(beta, gamma, rates=rates)
        gaps_limit.append(abs(continuous_limit / stability.update_bound(beta, gamma) - 1))
        gaps_finite.append(
            abs(stability.continuous_update_bound(beta, gamma, n, rates) / stability.update_bound(beta, gamma, n) - 1)
        )
    for gaps in (gaps_limit, gaps_finite):
        assert gaps[-1] < 2e-3
        assert gaps[-1] <= max(gaps[0] / 30, 1e-12)  # first order in 1 - beta (exact rates at beta = gamma: equal)


def integrate_moments(beta: float, gamma: float, tau: float, inputs, rates: str) -> float:
    """u(τ) of THEORY §3 by integrating ṁ = a(x − m), v̇ = b(x² − v) from zero with scipy (ε = 0)."""
    a, b = stability.continuous_rates(beta, gamma, rates)
    solution = solve_ivp(
        lambda s, y: [a * (inputs(s) - y[0]), b * (inputs(s) ** 2 - y[1])],
        (0.0, tau),
        [0.0, 0.0],
        method="DOP853",
        rtol=1e-11,
        atol=1e-14,
    )
    m, v = solution.y[:, -1]
    return (m / -math.expm1(-a * tau)) / math.sqrt(v / -math.expm1(-b * tau))


@pytest.mark.parametrize("rates", ["exact", "paper"])
@pytest.mark.parametrize(
    ("beta", "gamma", "tau"), [(0.9, 0.999, 40.0), (0.9, 0.95, 25.0), (0.9, 0.5, 10.0), (0.5, 0.9, 8.0)]
)
def test_continuous_bound_agrees_with_numerical_integration(beta: float, gamma: float, tau: float, rates: str) -> None:
    bound = stability.continuous_update_bound(beta, gamma, tau, rates)
    worst = stability.continuous_worst_case_input(beta, gamma, tau, rates)
    assert integrate_moments(beta, gamma, tau, worst, rates) == pytest.approx(bound, rel=1e-7)
    rng = np.random.default_rng(2)
    for _ in range(5):
        frequencies, phases, decay = rng.uniform(0.1, 3.0, 3), rng.uniform(0, 6.3, 3), rng.uniform(-0.3, 0.3)
        wave = lambda s, f=frequencies, p=phases, d=decay: math.exp(d * s) * (1.5 + np.sin(f * s + p).sum())  # noqa: E731
        assert abs(integrate_moments(beta, gamma, tau, wave, rates)) <= bound * (1 + 1e-7)


def test_continuous_bound_limits() -> None:
    a, b = stability.continuous_rates(0.9, 0.999, "paper")
    limit = stability.continuous_update_bound(0.9, 0.999, rates="paper")
    assert limit == pytest.approx(a / math.sqrt(b * (2 * a - b)), rel=1e-14)
    assert stability.continuous_update_bound(0.9, 0.999, 0.0) == 1.0
    assert stability.continuous_update_bound(0.9, 0.999, 1e-9) == pytest.approx(1.0, rel=1e-6)
    late = stability.continuous_update_bound(0.9, 0.999, 1e7)
    assert late == pytest.approx(stability.continuous_update_bound(0.9, 0.999), rel=1e-12)
    # outside 2a > b the log-bound grows at (b - 2a)/2 per unit time
    logs = stability.continuous_update_bound(0.9, 0.5, [1e4, 1e4 + 1], "paper", log=True)
    assert logs[1] - logs[0] == pytest.approx(stability.growth_rate(0.9, 0.5, "paper"), rel=1e-9)
    assert stability.continuous_update_bound(0.0, 0.9, 5.0) == math.inf


def test_kadam_bound_is_level_k_and_holds_through_kadam() -> None:
    betas, gammas = [0.9, 0.5], [0.5, 0.99]  # unstable level 1, stable level 2
    assert stability.kadam_update_bound(betas, gammas) == stability.update_bound(0.5, 0.99)
    assert stability.kadam_is_stable(betas, gammas) and not stability.kadam_is_stable(betas, gammas, levels="all")
    rng = np.random.default_rng(3)
    sequences = rng.standard_cauchy((300, 32)) * np.exp(-0.05 * np.arange(300))[:, None]
    updates = optimizer_updates(sequences, betas, gammas, eps=0.0)
    assert (np.abs(updates) <= stability.kadam_update_bound(betas, gammas) * (1 + 1e-12)).all()


def test_switch_off_rates_compose_levels() -> None:
    rates = stability.switch_off_rates([0.9, 0.5], [0.99, 0.9])
    q1 = 0.9 / math.sqrt(0.99)
    assert rates[0] == pytest.approx(math.log(q1), rel=1e-14)
    assert rates[1] == pytest.approx(math.log(q1) - 0.5 * math.log(0.9), rel=1e-14)
    assert list(stability.switch_off_rates([0.9, 0.0], [0.5, 0.999])) == [
        pytest.approx(stability.growth_rate(0.9, 0.5)),
        0.0,
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stability.update_bound(1.0, 0.5), r"beta must lie in \[0, 1\), got 1.0"),
        (lambda: stability.update_bound(0.9, -0.1), r"gamma must lie in \[0, 1\)"),
        (lambda: stability.update_bound(0.9, [0.5, float("nan")]), "gamma must not be NaN"),
        (lambda: stability.update_bound("a", 0.5), "beta must be a number"),
        (lambda: stability.update_bound(0.9, 0.5, 0), "n must be an integer >= 1"),
        (lambda: stability.update_bound(0.9, 0.5, 2.5), "n must be an integer >= 1"),
        (lambda: stability.continuous_update_bound(0.9, 0.5, -1.0), "tau must be a finite number >= 0"),
        (lambda: stability.continuous_update_bound(0.9, 0.5, rates="discrete"), "rates must be one of"),
        (lambda: stability.growth_rate(0.9, 0.5, rates="euler"), "rates must be one of"),
        (lambda: stability.worst_case_inputs(0.9, 0.0, 3), "gamma = 0 with beta > 0"),
        (lambda: stability.kadam_update_bound([0.9, 0.5], [0.99]), "same length k"),
        (lambda: stability.kadam_is_stable([0.9], [0.99], levels="some"), "levels must be one of"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("n", [2, 5, 50, 1500])
def test_stable_ceiling_is_the_supremum_over_both_regions(beta: float, n: int) -> None:
    """Dense scan of γ over (β², 1): nothing above C_n(β); its value is the boundary's and the γ → 1 limit."""
    gammas = 1.0 - (1.0 - beta**2) * np.concatenate([np.linspace(1.0, 0.0, 4001)[1:-1], np.logspace(-3, -13, 400)])
    ceiling = stability.stable_update_ceiling(beta, n)
    assert np.max(stability.update_bound(beta, gammas, n)) <= ceiling * (1 + 1e-12)
    assert stability.update_bound(beta, 1.0 - 1e-13, n) == pytest.approx(ceiling, rel=1e-9)
    closed_form = (1 - beta) / (1 - beta**n) * math.sqrt(n * (1 - beta ** (2 * n)) / (1 - beta**2))
    assert ceiling == pytest.approx(closed_form, rel=1e-12)
