"""The monitor's running checks (kadam.monitor.rules) against their definitions, and live against replayed."""

from __future__ import annotations

import math

import torch

from kadam.monitor import StabilityMonitor, rules


def test_edge_check_needs_patience_after_its_first_step_and_ignores_missing_estimates() -> None:
    check = rules.EdgeCheck(ratio=1.0, patience=2, after=10)
    assert not check.update(5, 100.0, 38.0)  # before ``after``
    assert not check.update(10, 100.0, 38.0) and check.streak == 1
    assert not check.update(11, math.nan, 38.0) and check.streak == 1  # no estimate: count kept
    assert check.update(12, 39.0, 38.0) and check.above
    assert not check.update(13, 37.0, 38.0) and not check.above and check.streak == 0


def test_growth_check_is_factor_times_the_median_of_its_window() -> None:
    check = rules.GrowthCheck(factor=3.0, window=4)
    assert check.replay([1.0, 2.0, 1.0, 2.0]) == [False] * 4  # the window fills first
    assert not check.update(4.4)  # median(1, 2, 1, 2) = 1.5: 4.4 < 4.5 (a mean of 1.5 too; a minimum would fire)
    check = rules.GrowthCheck(factor=3.0, window=4)
    check.replay([1.0, 1.0, 1.0, 5.0])
    assert check.update(3.1)  # median 1 (the mean, 2, would not fire)
    check = rules.GrowthCheck(factor=2.0, window=2)
    assert check.replay([1.0, math.inf, 1.0, math.nan, 2.1]) == [False, False, False, False, True]
    assert list(check.history) == [1.0, 2.1]  # non-finite values never enter the window


def test_rise_check_is_factor_times_the_running_minimum() -> None:
    check = rules.RiseCheck(factor=10.0, after=2)
    assert [check.update(v) for v in (1.0, 0.5, 4.9, 5.1, math.nan, 0.2, 2.1)] == [
        False,
        False,
        False,
        True,
        False,
        False,
        True,
    ]


def test_secant_curvature_is_the_rayleigh_quotient_on_a_quadratic() -> None:
    """Full-batch Adam on ½θᵀHθ: the monitor's curvature at step n equals ⟨Δg, Δθ⟩/⟨Δθ, PΔθ⟩ computed by
    brute force in float64 from the stored gradients, parameters and second moment."""
    torch.manual_seed(0)
    h = torch.diag(torch.tensor([10.0, 1.0, 0.1], dtype=torch.float64))
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    lr = 0.05
    optimizer = torch.optim.AdamW([theta], lr=lr, weight_decay=0.1)
    monitor = StabilityMonitor(optimizer, every=1, warn=False)
    gradients, parameters = [], [theta.detach().clone()]
    for _ in range(6):
        optimizer.zero_grad()
        (0.5 * theta @ h @ theta).backward()
        gradients.append(theta.grad.detach().clone())
        optimizer.step()
        parameters.append(theta.detach().clone())
    monitor.remove()
    state = optimizer.state[theta]
    n = 6
    v_hat = state["exp_avg_sq"] / (1 - 0.999**n)
    weights = (v_hat.sqrt() + 1e-8) / lr
    change = parameters[n] - parameters[n - 1]
    expected = float(torch.dot(gradients[n - 1] - gradients[n - 2], change) / torch.sum(weights * change**2))
    recorded = monitor.history.model["curvature"]
    assert math.isnan(recorded[0])  # no previous gradient at the first step
    assert math.isclose(recorded[-1], expected, rel_tol=1e-9)
    assert math.isclose(monitor.history.model["edge"][-1], (2 + 2 * 0.9) / (1 - 0.9), rel_tol=1e-12)
