"""simulate(warm_start=s) against an independent restart; the modified equations' order against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from kadam.experiments.flow.protocol import make_problem, restart_from_discrete
from kadam.flow import FlatLoss, compare, discrete, simulate
from kadam.flow.modified import ModifiedAdamFlow, mean_lag


def _quadratic(dimension: int = 4) -> FlatLoss:
    """A quadratic whose optimum is far enough that no gradient entry reaches zero over the runs below
    (a sign change within a step is outside every expansion in η, docs/flow_second_order.md)."""
    generator = torch.Generator().manual_seed(3)
    curvatures = torch.logspace(0.0, -1.5, dimension, dtype=torch.float64)
    optimum = 2.0 + 0.3 * torch.randn(dimension, generator=generator, dtype=torch.float64)
    return FlatLoss(
        lambda theta: 0.5 * (curvatures * (theta - optimum) ** 2).sum(),
        torch.zeros(dimension, dtype=torch.float64),
        [(dimension // 2,), (dimension - dimension // 2,)],
    )


def test_warm_start_is_the_discrete_run_then_the_restarted_model():
    """Rows before s are KAdam's; from s on the model equals restart_from_discrete (its own implementation)."""
    loss, steps, s = make_problem("quadratic"), 60, 7
    hyperparameters = {"lr": 1e-2, "k": 2}
    reference = discrete(loss, steps, return_moments=True, **hyperparameters)
    warm = simulate(loss, steps, warm_start=s, return_moments=True, **hyperparameters)
    torch.testing.assert_close(warm.theta[: s + 1], reference.theta[: s + 1], rtol=0, atol=0)
    restarted = restart_from_discrete(loss, reference, s, **hyperparameters)
    torch.testing.assert_close(warm.theta, restarted.theta, rtol=1e-9, atol=1e-12)
    for name in ("m1", "v1", "m2", "v2"):
        torch.testing.assert_close(warm.moments[name][s], reference.moments[name][s], rtol=1e-12, atol=1e-15)
    assert torch.isnan(warm.moments["u1"][:s]).all() and torch.isfinite(warm.moments["u1"][s:]).all()
    assert warm.gradient_evaluations > s


def test_warm_start_with_sparse_records_and_paper_rates():
    loss = make_problem("quadratic")
    every = simulate(loss, 50, lr=1e-2, k=1, warm_start=5, rates="paper")
    sparse = simulate(loss, 50, lr=1e-2, k=1, warm_start=5, rates="paper", record_every=20)
    assert sparse.steps.tolist() == [0, 20, 40, 50]
    torch.testing.assert_close(sparse.theta, every.theta[sparse.steps], rtol=1e-7, atol=1e-9)
    second = simulate(loss, 50, lr=1e-2, k=1, warm_start=5, order=2)
    assert compare(second, discrete(loss, 50, lr=1e-2, k=1)).max_rel_error < 0.05


@pytest.mark.parametrize("warm_start", [-1, 50, 1.5, True])
def test_bad_warm_start(warm_start):
    with pytest.raises(ValueError, match="warm_start must be an integer in"):
        simulate(make_problem("quadratic"), 50, lr=1e-2, warm_start=warm_start)


def test_mean_lag_against_quadrature():
    for rate in (1e-6, 1e-3, 0.105, 1.0, 7.0):
        sigma = torch.linspace(0, 1, 200001, dtype=torch.float64)
        weight = rate * torch.exp(-rate * sigma)
        lag = float(torch.trapezoid(sigma * weight, sigma) / torch.trapezoid(weight, sigma))
        assert mean_lag(rate) == pytest.approx(lag, rel=1e-8, abs=1e-10)
    assert mean_lag(math.inf) == 0.0
    with pytest.raises(ValueError, match="rate must be"):
        mean_lag(-1.0)


def _errors(loss, lrs, horizon, **hyperparameters):
    """Final relative errors of both models at ``η·steps = horizon``: O(η) and O(η²) as η → 0."""
    errors = {False: [], True: []}
    for lr in lrs:
        steps = round(horizon / lr)
        reference = discrete(loss, steps, lr=lr, **hyperparameters)
        for modified in errors:
            run = simulate(loss, steps, lr=lr, modified=modified, rtol=1e-10, atol=1e-13, **hyperparameters)
            errors[modified].append(compare(run, reference).final_rel_error)
    return errors


def test_modified_equations_converge_at_second_order():
    """Halving η at a fixed horizon quarters the modified equations' error (moments relax within ~10 steps).

    Measured ratios: 2.8 from η = 1e-2 to 5e-3 and 3.6 from 5e-3 to 2.5e-3 (the O(η³) terms, among them the
    δ²ẏ² of the squared shifted input, still count at 1e-2), so the test halves from 5e-3."""
    errors = _errors(_quadratic(), (5e-3, 2.5e-3), 0.5, k=1, betas=(0.5, 0.9), weight_decay=0.1)
    assert errors[True][0] / errors[True][1] > 3.2
    assert errors[True][1] < errors[False][1] / 50


def test_modified_equations_with_two_levels_tensor_mode_and_coupled_decay():
    """k = 2 (level 2 in tensor mode), Adam's coupled decay: far below the first-order error at this η."""
    errors = _errors(
        _quadratic(),
        (1e-2,),
        0.5,
        k=2,
        betas=(0.5, 0.9),
        meta_betas=(0.5, 0.9),
        weight_decay=0.1,
        decoupled_weight_decay=False,
    )
    assert errors[True][0] < errors[False][0] / 20


def test_modified_equations_refuse_paper_rates_and_order_two():
    loss = _quadratic()
    with pytest.raises(ValueError, match="rates='exact'"):
        ModifiedAdamFlow.for_optimizer(loss, rates="paper", lr=1e-3)
    with pytest.raises(ValueError, match="order must be 1"):
        ModifiedAdamFlow.for_optimizer(loss, order=2, lr=1e-3)


def test_modified_equations_stay_cheap_where_gradient_coordinates_cross_zero():
    """Logistic regression, where coordinates of the gradient change sign: the second-moment shift stays
    smooth (the square of the shifted input), so dopri5 needs a few hundred field evaluations for 125 steps
    (measured 290 at rtol 1e-6; shifting s itself as s·exp(−δṡ/s) took ~2,500 per step) and lands far
    below the first-order model's error (7e-4 against 1.2e-2 at η = 8e-3)."""
    loss, lr = make_problem("logistic"), 8e-3
    steps = round(1.0 / lr)
    reference = discrete(loss, steps, lr=lr)
    # max_num_steps makes a stiff field fail fast instead of running for minutes
    runs = {
        modified: simulate(
            loss, steps, lr=lr, modified=modified, warm_start=1, rtol=1e-6, atol=1e-8, options={"max_num_steps": 1000}
        )
        for modified in (False, True)
    }
    assert runs[True].gradient_evaluations < 3000
    assert compare(runs[True], reference).final_rel_error < compare(runs[False], reference).final_rel_error / 5
