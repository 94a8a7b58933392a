"""The AdamW random walk of a scale-invariant tensor against THEORY §4's predictions."""

import pytest

from kadam.experiments.normalization.protocol import random_walk


@pytest.fixture(scope="module")
def walk():
    # d = 256, eta = 1e-3, lambda = 0.1: relaxation time 5,000 steps; 5 of them (25,000 steps), measured
    # over the last 2 (after the transient of 3)
    return random_walk(
        d=256,
        lr=1e-3,
        weight_decay=0.1,
        betas=(0.0, 0.5, 0.9, 0.99),
        gamma=0.999,
        relaxation_times=5.0,
        transient_times=3.0,
        record_every=5,
        seed=0,
    )


def test_runs_at_least_five_relaxation_times(walk):
    assert walk["steps"] >= 5 * walk["relaxation_steps"]


@pytest.mark.parametrize("index", range(4))
def test_corrected_prediction_matches_norm_within_3_and_angle_within_5_percent(walk, index):
    row = walk["by_beta"][index]
    assert abs(row["corrected_norm_error"]) < 0.03, row
    assert abs(row["corrected_angular_error"]) < 0.05, row
    # the cross term itself: E<W_{n-1}, u_n> = -eta E|u|^2 beta / (1 - q beta)
    assert row["measured_inner"] == pytest.approx(row["predicted_inner"], rel=0.1, abs=2e-3)


def test_orthogonal_prediction_fails_more_as_beta_grows(walk):
    norm_errors = [abs(row["orthogonal_norm_error"]) for row in walk["by_beta"]]
    angle_errors = [abs(row["orthogonal_angular_error"]) for row in walk["by_beta"]]
    assert norm_errors[0] < 0.03  # beta = 0: no correlation, both readings coincide
    assert norm_errors == sorted(norm_errors) and angle_errors == sorted(angle_errors)
    assert norm_errors[-1] > 0.9 and angle_errors[-1] > 10  # beta = 0.99: norm 14x too small, angle 14x too large


def test_batched_adamw_is_torch_adamw_row_by_row():
    import torch

    from kadam.experiments.normalization.protocol import batched_adamw, spherical_noise_gradient
    from kadam.normalization import NormTracker

    betas, d, steps, lr, weight_decay = (0.0, 0.5, 0.9, 0.99), 16, 300, 1e-2, 0.5
    noise = torch.randn(steps, len(betas), d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = torch.randn(len(betas), d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = start.clone()
    recorded, statistics = batched_adamw(
        weights,
        lambda w, n: spherical_noise_gradient(w, noise[n - 1]),
        steps,
        lr,
        weight_decay,
        betas,
        0.999,
        record_every=7,
    )
    parameters = [torch.nn.Parameter(row.clone()) for row in start]
    optimizer = torch.optim.AdamW(
        [{"params": [p], "betas": (b, 0.999)} for p, b in zip(parameters, betas)], lr=lr, weight_decay=weight_decay
    )
    tracker = NormTracker(optimizer, [(str(i), p) for i, p in enumerate(parameters)], every=7)
    for n in range(steps):
        with torch.no_grad():
            for i, p in enumerate(parameters):
                p.grad = spherical_noise_gradient(p, noise[n, i])
        optimizer.step()
    torch.testing.assert_close(weights, torch.stack([p.detach() for p in parameters]), rtol=1e-12, atol=1e-14)
    history = tracker.history()
    assert list(recorded) == list(history["steps"])
    for i in range(len(betas)):
        torch.testing.assert_close(
            torch.tensor(statistics[:, i, 0]), torch.tensor(history["norm"][str(i)]), rtol=1e-12, atol=0
        )
        torch.testing.assert_close(
            torch.tensor(statistics[:, i, 3]), torch.tensor(history["angular_update"][str(i)]), rtol=1e-9, atol=0
        )
