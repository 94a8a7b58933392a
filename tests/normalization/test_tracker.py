"""NormTracker against statistics recomputed by hand from snapshots of the weights."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from kadam import KAdam
from kadam.normalization import NormTracker, norm_trajectory


def quadratic_steps(optimizer, weights, steps, seed=0):
    """Run ``steps`` steps on a random quadratic; return the float64 snapshots W_0..W_steps of each weight."""
    generator = torch.Generator().manual_seed(seed)
    snapshots = [[w.detach().double().clone()] for w in weights]
    for _ in range(steps):
        for w in weights:
            target = torch.randn(w.shape, generator=generator, dtype=w.dtype)
            w.grad = (w.detach() - target) * 0.3
        optimizer.step()
        for snapshot, w in zip(snapshots, weights):
            snapshot.append(w.detach().double().clone())
    return snapshots


def expected_statistics(snapshot, lr, decoupled_decay):
    rows = []
    for before, after in zip(snapshot[:-1], snapshot[1:]):
        update = ((1 - lr * decoupled_decay) * before - after) / lr
        cosine = float(before @ after / (before.norm() * after.norm()))
        rows.append(
            [
                float(after.norm()),
                float(update.norm()),
                float(before @ update),
                math.acos(min(1.0, cosine)),
                lr / float(before.norm()),
            ]
        )
    return np.array(rows)


def make_weights(count=2, d=50, dtype=torch.float64):
    generator = torch.Generator().manual_seed(3)
    return [nn.Parameter(torch.randn(d, generator=generator, dtype=dtype)) for _ in range(count)]


@pytest.mark.parametrize(
    "build, decoupled",
    [
        (lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.3), True),
        (lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.3), False),
        (lambda p: KAdam(p, lr=0.05, k=2, weight_decay=0.3), True),
        (lambda p: KAdam(p, lr=0.05, k=1, weight_decay=0.3, decoupled_weight_decay=False), False),
        (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.3), False),
    ],
)
def test_statistics_match_a_recomputation(build, decoupled):
    weights = make_weights()
    optimizer = build(weights)
    tracker = NormTracker(optimizer, {"a": weights[0], "b": weights[1]})
    snapshots = quadratic_steps(optimizer, weights, 30)
    history = tracker.history()
    np.testing.assert_array_equal(history["steps"], np.arange(1, 31))
    for name, snapshot in zip("ab", snapshots):
        expected = expected_statistics(snapshot, 0.05, 0.3 if decoupled else 0.0)
        got = np.stack(
            [history[key][name] for key in ("norm", "update_norm", "inner", "angular_update", "effective_lr")], 1
        )
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_records_every_nth_step_and_stops_after_remove():
    weights = make_weights(1)
    optimizer = torch.optim.AdamW(weights, lr=0.05, weight_decay=0.3)
    with NormTracker(optimizer, [("w", weights[0])], every=4) as tracker:
        snapshots = quadratic_steps(optimizer, weights, 10)
    quadratic_steps(optimizer, weights, 5)
    history = tracker.history()
    np.testing.assert_array_equal(history["steps"], [4, 8])
    expected = expected_statistics(snapshots[0], 0.05, 0.3)
    np.testing.assert_allclose(history["norm"]["w"], expected[[3, 7], 0], rtol=1e-12)


def test_small_angles_are_accurate_in_float32():
    # a rotation by 1e-4 rad: acos of the float32 cosine cannot resolve it, the chord formula can
    w0 = torch.ones(1000, dtype=torch.float64)
    perpendicular = torch.zeros(1000, dtype=torch.float64)
    perpendicular[0], perpendicular[1] = 1.0, -1.0
    perpendicular *= w0.norm() / perpendicular.norm()
    theta = 1e-4
    w1 = math.cos(theta) * w0 + math.sin(theta) * perpendicular
    weight = nn.Parameter(w0.float())
    optimizer = torch.optim.SGD([weight], lr=1.0)
    tracker = NormTracker(optimizer, [("w", weight)])
    weight.grad = (w0 - w1).float()
    optimizer.step()
    stored = weight.detach().double()
    exact = math.acos(float(w0 @ stored / (w0.norm() * stored.norm())))
    assert exact == pytest.approx(theta, rel=1e-2)
    assert tracker.history()["angular_update"]["w"][0] == pytest.approx(exact, rel=1e-3)
    before, after = w0.float(), weight.detach()
    naive = float(torch.arccos(torch.clamp(before @ after / (before.norm() * after.norm()), -1, 1)))
    assert abs(naive - exact) > 0.1 * exact


def test_orthogonal_trajectory_is_exact_for_a_normalized_gradient():
    # level 1 = normalized gradient (beta = gamma = 0, tensor mode, eps = 0) on a scale-invariant loss:
    # <W, u> = 0, so the orthogonal trajectory driven by the tracked |u_n|^2 is AdamW's norm exactly
    generator = torch.Generator().manual_seed(0)
    weight = nn.Parameter(torch.randn(128, generator=generator, dtype=torch.float64))
    optimizer = KAdam([weight], lr=0.01, k=1, betas=(0.0, 0.0), eps=0.0, norm="tensor", weight_decay=0.5)
    tracker = NormTracker(optimizer, [("w", weight)])
    initial = tracker.initial_norms()["w"]
    for _ in range(500):
        noise = torch.randn(128, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            direction = weight / weight.norm()
            weight.grad = (noise - direction * (direction @ noise)) / weight.norm()
        optimizer.step()
    history = tracker.history()
    predicted = norm_trajectory(
        initial, 0.01, 0.5, 0.0, update_sq_norms=history["update_norm"]["w"] ** 2, assumption="orthogonal"
    )
    np.testing.assert_allclose(predicted[1:], history["norm"]["w"], rtol=1e-12)
    assert np.max(np.abs(history["inner"]["w"])) < 1e-12


def test_bad_input_names_the_argument():
    weights = make_weights(1)
    optimizer = torch.optim.AdamW(weights)
    with pytest.raises(ValueError, match="every"):
        NormTracker(optimizer, [("w", weights[0])], every=0)
    with pytest.raises(ValueError, match="not a parameter of the optimizer"):
        NormTracker(optimizer, [("other", nn.Parameter(torch.ones(3)))])
    with pytest.raises(ValueError, match="at least one"):
        NormTracker(optimizer, [])
    with pytest.raises(ValueError, match="optimizer"):
        NormTracker("adam", [("w", weights[0])])
