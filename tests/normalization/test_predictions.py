"""Predictions of THEORY §4 against brute-force recursions and their stated limits."""

import math

import numpy as np
import pytest

from kadam.normalization import (
    correlation_factor,
    effective_lr_schedule,
    equilibrium_angular_update,
    equilibrium_norm,
    noise_update_sq_norm,
    norm_trajectory,
    relaxation_steps,
)


def brute_force_norms(initial, lr, weight_decay, squares, factor):
    q = 1 - lr * weight_decay
    norms_sq = [initial**2]
    for square in squares:
        norms_sq.append(q * q * norms_sq[-1] + lr * lr * factor * square)
    return np.sqrt(norms_sq)


@pytest.mark.parametrize("assumption", ["corrected", "orthogonal"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1, 3.0])
def test_trajectory_matches_the_recursion_with_measured_updates(assumption, weight_decay):
    rng = np.random.default_rng(0)
    squares = rng.uniform(50, 300, size=400)
    lr, beta = 1e-2, 0.9
    factor = (
        (1 + (1 - lr * weight_decay) * beta) / (1 - (1 - lr * weight_decay) * beta) if assumption == "corrected" else 1
    )
    got = norm_trajectory(0.7, lr, weight_decay, beta, update_sq_norms=squares, assumption=assumption)
    np.testing.assert_allclose(got, brute_force_norms(0.7, lr, weight_decay, squares, factor), rtol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("assumption", ["corrected", "orthogonal"])
def test_equilibrium_is_the_fixed_point_of_the_noise_trajectory(beta, assumption):
    lr, weight_decay, d = 1e-2, 0.5, 256
    tau = relaxation_steps(lr, weight_decay)
    long_run = norm_trajectory(1.0, lr, weight_decay, beta, d=d, steps=int(60 * tau), assumption=assumption)
    assert long_run[-1] == pytest.approx(equilibrium_norm(lr, weight_decay, d, beta, assumption=assumption), rel=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_small_decay_limits_of_the_equilibrium(beta):
    lr, weight_decay, d = 1e-4, 0.1, 256
    # corrected: |W|^2 -> eta d / (2 lambda), whatever beta; orthogonal: smaller by (1 - beta)/(1 + beta)
    corrected = equilibrium_norm(lr, weight_decay, d, beta)
    orthogonal = equilibrium_norm(lr, weight_decay, d, beta, assumption="orthogonal")
    assert corrected**2 == pytest.approx(lr * d / (2 * weight_decay), rel=1e-3)
    assert orthogonal**2 / corrected**2 == pytest.approx((1 - beta) / (1 + beta), rel=2e-3 / (1 - beta))
    angle = equilibrium_angular_update(lr, weight_decay, beta)
    assert angle == pytest.approx(math.sqrt(2 * lr * weight_decay * (1 - beta) / (1 + beta)), rel=1e-3)


def test_orthogonal_angular_update_is_arccos_of_the_shrink():
    # orthogonal u, |u|^2 = E|u|^2 and |W| at equilibrium: tan(theta) = eta|u|/(q|W|) = sqrt(1-q^2)/q
    lr, weight_decay = 1e-2, 2.0
    assert equilibrium_angular_update(lr, weight_decay, 0.3, assumption="orthogonal") == pytest.approx(
        math.acos(1 - lr * weight_decay), rel=1e-12
    )


def test_relaxation_time_is_the_efold_of_the_deviation():
    lr, weight_decay, beta, d = 1e-2, 0.5, 0.9, 64
    tau = relaxation_steps(lr, weight_decay)
    assert tau == pytest.approx(1 / (2 * lr * weight_decay), rel=1e-2)
    norms = norm_trajectory(5.0, lr, weight_decay, beta, d=d, steps=2000)
    target = equilibrium_norm(lr, weight_decay, d, beta) ** 2
    deviation = norms**2 - target
    n = 1000
    assert deviation[n] / deviation[0] == pytest.approx(math.exp(-n / tau), rel=1e-9)


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_adam_effective_lr_falls_like_one_over_sqrt_n(beta):
    lr, d = 1e-3, 100
    schedule = effective_lr_schedule(1e-3, lr, 0.0, beta, d, 100_000)
    factor = correlation_factor(beta)
    expected = math.sqrt((1 + beta) / (d * factor * (1 - beta)))
    n = np.array([10_000, 100_000])
    np.testing.assert_allclose(schedule[n] * np.sqrt(n), expected, rtol=1e-4)


def test_noise_update_norm_is_the_variance_of_an_ema_of_white_noise():
    rng = np.random.default_rng(1)
    beta, d, steps = 0.8, 64, 20000
    m = np.zeros(d)
    squares = []
    for noise in rng.standard_normal((steps, d)):
        m = beta * m + (1 - beta) * noise
        squares.append(m @ m)
    assert np.mean(squares[100:]) == pytest.approx(noise_update_sq_norm(d, beta), rel=0.03)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: equilibrium_norm(1e-3, 0.0, 10, 0.9), "weight_decay"),
        (lambda: equilibrium_norm(-1.0, 0.1, 10, 0.9), "lr"),
        (lambda: equilibrium_norm(1e-3, 0.1, 0, 0.9), "d"),
        (lambda: equilibrium_norm(1e-3, 0.1, 10, 1.0), "beta"),
        (lambda: equilibrium_norm(1e-3, 0.1, 10, 0.9, assumption="other"), "assumption"),
        (lambda: relaxation_steps(1.0, 2.0), "lr \\* weight_decay"),
        (lambda: equilibrium_angular_update(1e-3, 0.1, -0.1), "beta"),
        (lambda: norm_trajectory(1.0, 1e-3, 0.1, 0.9), "exactly one"),
        (lambda: norm_trajectory(1.0, 1e-3, 0.1, 0.9, d=4), "steps"),
        (lambda: norm_trajectory(-1.0, 1e-3, 0.1, 0.9, d=4, steps=3), "initial_norm"),
        (lambda: norm_trajectory(1.0, 1e-3, 0.1, 0.9, update_sq_norms=[1.0, -1.0]), "update_sq_norms"),
        (lambda: correlation_factor(0.5, shrink=0.0), "shrink"),
    ],
)
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
