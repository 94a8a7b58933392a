"""The coupled problems, the zero-crossing diagnostic against brute force, and the modified equations'
order where the derivation's assumption holds and where it does not."""

from __future__ import annotations

import pytest
import torch

from kadam.experiments.flow.extra import first_zero_crossing, make_flow_problem, modified_convergence_experiment


def test_first_zero_crossing_closed_form_on_the_coupled_problem():
    """From (−1, 1): g = (−8, 3), θ̇ = η(1, −1), ġ = ∇²L θ̇ = η(7, −3): coordinate 1 reaches zero after 1/η steps."""
    lr = 4e-3
    assert first_zero_crossing(make_flow_problem("coupled"), lr) == {
        "steps": pytest.approx(1 / lr, rel=1e-6),
        "coordinate": 1,
        "within_10_steps": 0,
    }
    at_rest = first_zero_crossing(make_flow_problem("coupled-from-rest"), lr)
    assert at_rest["steps"] == 0.0 and at_rest["coordinate"] == 1 and at_rest["within_10_steps"] == 1


def test_first_zero_crossing_against_finite_differences_of_the_gradient():
    """Logistic regression: the gradient's change along Adam's first velocity, by a central difference."""
    loss, lr = make_flow_problem("logistic"), 8e-3
    theta = loss.theta0
    _, gradient = loss.value_and_grad(theta)
    velocity = -lr * gradient / (gradient.abs() + 1e-8)
    h = 1e-3
    change = (loss.value_and_grad(theta + h * velocity)[1] - loss.value_and_grad(theta - h * velocity)[1]) / (2 * h)
    steps = torch.where(change != 0, (gradient / change).abs(), torch.inf)
    result = first_zero_crossing(loss, lr)
    assert result["coordinate"] == int(steps.argmin())
    assert result["steps"] == pytest.approx(float(steps.min()), rel=1e-5)
    assert result["within_10_steps"] == int((steps < 10).sum()) > 0


def test_modified_equations_are_second_order_unless_a_gradient_starts_at_zero():
    """Halving η quarters the modified equations' error on the smooth start (slope 2.1 measured over
    4e-3…1e-3), while a gradient coordinate at zero at θ₀ leaves them first order (0.65 measured): Adam's
    update of that coordinate follows the step count, not η·steps."""
    smooth = modified_convergence_experiment("coupled", lrs=(4e-3, 2e-3), horizon=0.5, warm_start=1)
    assert smooth["slopes"]["modified"]["final"] >= 1.8
    assert 0.75 <= smooth["slopes"]["first_order"]["final"] <= 1.25
    at_rest = modified_convergence_experiment("coupled-from-rest", lrs=(4e-3, 2e-3), horizon=0.5, warm_start=1)
    assert at_rest["slopes"]["modified"]["final"] < 1.2
    assert at_rest["per_lr"][0]["first_zero_crossing"]["steps"] == 0.0
