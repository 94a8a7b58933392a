"""The ODE of THEORY §3: rates, exact solutions, the τ = 0 limits, failures and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torchdiffeq import odeint

from kadam.flow import AdamFlow, FlatLoss, FlowSolveError, discrete, moment_rate, simulate
from kadam.flow.run import DiscreteRunError

DOUBLE = torch.float64


def linear_loss(shapes=((3, 4), (5,), (2,))) -> FlatLoss:
    """``L(θ) = cᵀθ``: a constant gradient, for which the model is exact at integer steps."""
    size = sum(math.prod(s) for s in shapes)
    direction = torch.linspace(-2.0, 3.0, size, dtype=DOUBLE) + 0.05
    return FlatLoss(lambda theta: direction @ theta, torch.zeros(size, dtype=DOUBLE), shapes)


def rosenbrock_like(shapes=((4,), (2, 3))) -> FlatLoss:
    size = sum(math.prod(s) for s in shapes)
    centre = torch.linspace(0.5, 1.5, size, dtype=DOUBLE)

    def fn(theta):
        return ((theta - centre) ** 2).sum() + 0.5 * ((theta[1:] - theta[:-1] ** 2) ** 2).sum() + theta.sin().sum()

    return FlatLoss(fn, torch.linspace(-1.0, 1.0, size, dtype=DOUBLE), shapes)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999])
def test_moment_rates(decay):
    exact, paper = moment_rate(decay, "exact"), moment_rate(decay, "paper")
    if decay == 0.0:
        assert exact == paper == math.inf
    else:
        assert exact == pytest.approx(-math.log(decay), rel=1e-15)
        assert paper == pytest.approx((1 - decay) / decay, rel=1e-15)
        # The exact kernel reproduces the discrete decay at integer lags.
        assert math.exp(-exact * 7) == pytest.approx(decay**7, rel=1e-12)
        assert paper > exact  # (1−β)/β > −ln β: the paper kernel forgets faster


@pytest.mark.parametrize("rates", ["exact", "paper"])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize(
    "hyperparameters",
    [
        {"k": 1, "weight_decay": 0.0},
        {"k": 1, "weight_decay": 0.0, "norm": "tensor"},
        {"k": 2, "weight_decay": 0.0},
        {
            "k": 3,
            "weight_decay": 0.0,
            "betas": [(0.9, 0.999), (0.5, 0.99), (0.0, 0.9)],
            "norm": ["tensor", "elementwise", "tensor"],
        },
    ],
)
def test_constant_gradient_matches_discrete_exactly(rates, order, hyperparameters):
    """With a constant gradient every bias-corrected moment is constant: continuous = discrete at every step."""
    loss = linear_loss()
    steps = 30
    continuous = simulate(loss, steps, rates=rates, order=order, lr=1e-2, **hyperparameters)
    reference = discrete(loss, steps, lr=1e-2, **hyperparameters)
    torch.testing.assert_close(continuous.theta, reference.theta, rtol=0, atol=1e-10)


@pytest.mark.parametrize("k", [1, 3])
def test_raw_moments_match_kadam_state_for_exact_rates(k):
    """Exact rates: m(n) = x(1 − βⁿ), v(n) = s(x)(1 − γⁿ) for constant input, which is KAdam's state."""
    loss = linear_loss()
    hyperparameters = {"lr": 1e-2, "k": k, "weight_decay": 0.0, "meta_betas": (0.8, 0.99), "meta_norm": "tensor"}
    continuous = simulate(loss, 25, record_every=5, return_moments=True, **hyperparameters)
    reference = discrete(loss, 25, record_every=5, return_moments=True, **hyperparameters)
    assert set(reference.moments) == {f"{name}{i}" for name in "mv" for i in range(1, k + 1)}
    for name, value in reference.moments.items():
        torch.testing.assert_close(continuous.moments[name], value, rtol=1e-9, atol=1e-12)
    assert continuous.moments["v1"].shape == (6, loss.theta0.numel())
    if k == 3:
        assert continuous.moments["v2"].shape == (6, loss.num_tensors)
    # u of the last level is the update: θ(n) − θ(n−1) = −η u for a constant u (no weight decay).
    update = -(continuous.theta[1] - continuous.theta[0]) / (5 * 1e-2)
    torch.testing.assert_close(continuous.moments[f"u{k}"], update.expand(6, -1), rtol=1e-8, atol=1e-12)


def _central_difference(function, theta, direction, step=1e-5):
    return (function(theta + step * direction) - function(theta - step * direction)) / (2 * step)


def test_initial_moment_derivatives_against_finite_differences():
    """At τ = 0, dm̂/dτ = ẋ/2 and dv̂/dτ = ṡ(x)/2, ẋ carried up the levels (all rates finite here).

    Brute force: each level's input at τ = 0 is a function of θ only (the limits), so with every moment
    rate finite the time derivative of level i's input is (½)^(i−1) times its derivative along θ̇.
    """
    loss = rosenbrock_like()
    levels = {
        "k": 3,
        "betas": [(0.9, 0.999), (0.7, 0.99), (0.5, 0.9)],
        "norm": ["elementwise", "tensor", "elementwise"],
    }
    field = AdamFlow.for_optimizer(loss, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=False, **levels)
    state = field.initial_state()
    derivative = field(torch.tensor(0.0, dtype=DOUBLE), state)
    theta_dot = derivative[0]

    def level_inputs(theta):
        _, grad = loss.value_and_grad(theta)
        return [value.x for value in field.cascade(field.level_input(theta, grad), None)]

    expected = []
    for i, level in enumerate(field.levels):
        x_dot = 0.5**i * _central_difference(lambda t: level_inputs(t)[i], loss.theta0, theta_dot)
        x = level_inputs(loss.theta0)[i]
        square_dot = 2 * x * x_dot
        expected += [0.5 * x_dot, 0.5 * (loss.tensor_mean(square_dot) if level.tensor_mode else square_dot)]
    assert len(derivative) == 1 + len(expected)
    for got, want in zip(derivative[1:], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("hyperparameters", [{"k": 1}, {"k": 2}, {"k": 3, "norm": "tensor"}])
def test_field_at_zero_is_the_limit_from_the_right(order, hyperparameters):
    """The τ = 0 value (a 0·∞ limit) is where the field tends as τ → 0⁺ on the solved trajectory.

    The field is smooth in τ, so its value at 0 must match the linear extrapolation from τ₁ and 2τ₁
    up to O(τ₁²), a small fraction of the change between the two points; a wrong limit leaves an offset.
    """
    loss = rosenbrock_like()
    field = AdamFlow.for_optimizer(loss, order=order, lr=1e-2, **hyperparameters)
    state = field.initial_state()
    at_zero = field(torch.tensor(0.0, dtype=DOUBLE), state)
    tau = 1e-3
    times = torch.tensor([0.0, tau, 2 * tau], dtype=DOUBLE)
    solved = odeint(field, state, times, rtol=1e-13, atol=1e-16)
    near, far = (field(times[i], tuple(part[i] for part in solved)) for i in (1, 2))
    for zero, first, second in zip(at_zero, near, far, strict=True):
        extrapolated = 2 * first - second
        assert (zero - extrapolated).abs().max() <= 0.05 * (
            second - first
        ).abs().max() + 1e-7 * zero.abs().max() + 1e-11


def test_nan_loss_raises_with_tau():
    direction = torch.ones(4, dtype=DOUBLE)

    def fn(theta):
        return torch.where(theta[0] < -0.05, torch.tensor(math.nan, dtype=DOUBLE), direction @ theta)

    loss = FlatLoss(fn, torch.zeros(4, dtype=DOUBLE))
    with pytest.raises(FlowSolveError, match="loss is nan") as caught:
        simulate(loss, 20, lr=1e-2, k=1, weight_decay=0.0)
    # θ₀ = 0 moves at −η per step in every coordinate: the loss turns NaN at τ = 5.
    assert caught.value.last_good_tau < 5.0 < caught.value.tau
    assert f"fine up to tau = {caught.value.last_good_tau:.6g}" in str(caught.value)
    with pytest.raises(DiscreteRunError, match="discrete optimizer diverged at step 6: the loss is nan"):
        discrete(loss, 20, lr=1e-2, k=1, weight_decay=0.0)


def test_solver_failure_is_reported_with_tau():
    with pytest.raises(FlowSolveError, match="max_num_steps") as caught:
        simulate(rosenbrock_like(), 50, lr=1e-2, options={"max_num_steps": 3})
    assert caught.value.tau > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"rates": "taylor"}, "rates must be one of"),
        ({"order": 3}, "order must be one of"),
        ({"k": 0}, "k must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be a number >= 0"),
        ({"record_every": 0}, "record_every must be an integer in"),
    ],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        simulate(linear_loss(), 10, **arguments)


def test_bad_loss_arguments():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        discrete(linear_loss(), 0)
    with pytest.raises(ValueError, match="theta0 must be a 1-D floating-point tensor"):
        FlatLoss(lambda t: t.sum(), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="tensor_shapes must be non-empty shapes"):
        FlatLoss(lambda t: t.sum(), torch.zeros(5), [(2,), (2,)])


@pytest.mark.parametrize("order", [1, 2])
def test_join_state_inverts_split_state(order):
    # k = 2 with meta_betas (0, 0.999): level 2 carries no m̂ (infinite rate) and one v̂ per tensor.
    field_ = AdamFlow.for_optimizer(rosenbrock_like(), lr=1e-2, k=2, order=order)
    state = field_.initial_state()
    theta, velocity, moments = field_.split_state(state)
    filled = [(m if m is not None else torch.full_like(theta, math.nan), v) for m, v in moments]
    rebuilt = field_.join_state(theta, velocity, filled)
    assert len(rebuilt) == len(state) and all(a is b for a, b in zip(rebuilt, state, strict=True))
    with pytest.raises(ValueError, match="velocity must be given exactly when order == 2"):
        field_.join_state(theta, None if order == 2 else theta, filled)
    with pytest.raises(ValueError, match="one \\(m_hat, v_hat\\) pair per level"):
        field_.join_state(theta, velocity, filled[:1])
