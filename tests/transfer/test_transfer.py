"""kadam.transfer against brute force: the ODE coefficients it keeps, the trajectories it keeps, its validation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from kadam import stability
from kadam.flow import FlatLoss, discrete, moment_rate, simulate
from kadam.stability import nearest_stable_pair
from kadam.transfer import transfer_batch_size, transfer_lr


@pytest.mark.parametrize("rates", ["exact", "paper"])
@pytest.mark.parametrize("factor", [0.25, 2.0, 8.0])
def test_lr_transfer_keeps_the_ode_coefficients(rates, factor):
    """THEORY §6: in t = ητ the moments relax at a/η and b/η; the transferred pair keeps both, every level."""
    betas = [(0.9, 0.999), (0.0, 0.99), (0.5, 0.95)]
    result = transfer_lr(1e-3, betas, weight_decay=0.1, steps=800, factor=factor, rates=rates)
    assert result.target.lr == pytest.approx(1e-3 * factor, rel=1e-15)
    assert result.target.weight_decay == 0.1 and result.target.eps == result.source.eps
    assert result.target.steps == round(800 / factor)
    for (beta, gamma), (new_beta, new_gamma) in zip(betas, result.target.betas, strict=True):
        for old, new in ((beta, new_beta), (gamma, new_gamma)):
            old_rate, new_rate = moment_rate(old, rates), moment_rate(new, rates)
            if math.isinf(old_rate):
                assert new == 0.0
            else:
                assert new_rate / result.target.lr == pytest.approx(old_rate / 1e-3, rel=1e-12)
    assert result.alternatives["naive"].betas == tuple(betas)
    assert result.alternatives["naive"].lr == result.target.lr
    assert result.stable


def test_exact_lr_rule_is_beta_to_the_power_c_and_keeps_the_region():
    result = transfer_lr(3e-3, (0.9, 0.999), factor=3.0)
    assert result.target.betas == ((0.9**3, 0.999**3),)
    for beta in (0.3, 0.9, 0.99):
        for gamma in (beta**2 * 1.001, beta**2 * 0.999):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                moved = transfer_lr(1e-3, (beta, min(gamma, 0.9999)), factor=5.0)
            assert moved.stable == bool(stability.is_stable(beta, min(gamma, 0.9999)))


def test_to_lr_is_the_same_as_factor():
    assert transfer_lr(1e-3, (0.9, 0.999), to_lr=4e-3).target == transfer_lr(1e-3, (0.9, 0.999), factor=4.0).target


def _quadratic() -> FlatLoss:
    generator = torch.Generator().manual_seed(1)
    curvatures = torch.tensor([1.0, 0.3, 0.05, 0.01], dtype=torch.float64)
    optimum = torch.randn(4, generator=generator, dtype=torch.float64)
    return FlatLoss(
        lambda theta: 0.5 * (curvatures * (theta - optimum) ** 2).sum(), torch.zeros(4, dtype=torch.float64)
    )


def test_transferred_model_follows_the_same_curve_in_t():
    """The continuous model at (η, β, γ) and at (cη, β^c, γ^c) is one curve in t = η·step (exact rates)."""
    loss, factor = _quadratic(), 2
    base = dict(lr=2e-2, betas=(0.9, 0.99), k=1, weight_decay=0.05)
    moved = transfer_lr(base["lr"], base["betas"], base["weight_decay"], steps=40, factor=factor)
    slow = simulate(loss, 40, **base)
    fast = simulate(
        loss,
        moved.target.steps,
        lr=moved.target.lr,
        betas=moved.target.betas[0],
        k=1,
        weight_decay=moved.target.weight_decay,
    )
    torch.testing.assert_close(fast.theta, slow.theta[::factor], rtol=1e-6, atol=1e-8)
    naive = simulate(
        loss, moved.target.steps, lr=moved.target.lr, betas=base["betas"], k=1, weight_decay=base["weight_decay"]
    )
    assert (naive.theta - slow.theta[::factor]).norm() > 1e-3


def test_discrete_runs_transferred_closer_than_naive():
    """At c = 4 the discrete runs' gap in t is smaller with the transferred betas than with the same betas."""
    loss, factor = _quadratic(), 4
    reference = discrete(loss, 400, lr=5e-3, betas=(0.9, 0.99), k=1)
    moved = transfer_lr(5e-3, (0.9, 0.99), steps=400, factor=factor)
    transferred = discrete(loss, moved.target.steps, lr=moved.target.lr, betas=moved.target.betas[0], k=1)
    naive = discrete(loss, moved.target.steps, lr=moved.target.lr, betas=(0.9, 0.99), k=1)
    gap_transferred = (transferred.theta - reference.theta[::factor]).norm(dim=1).max()
    gap_naive = (naive.theta - reference.theta[::factor]).norm(dim=1).max()
    assert gap_transferred < 0.5 * gap_naive


def test_batch_square_root_rule_against_its_formulas():
    result = transfer_batch_size(
        3e-3, [(0.9, 0.999), (0.0, 0.999)], 32, weight_decay=0.01, steps=1000, to_batch_size=256, eps=1e-8, rule="sqrt"
    )
    kappa = 8.0
    assert result.factor == kappa and result.rule == "batch-sqrt"
    target = result.target
    assert target.lr == pytest.approx(3e-3 * math.sqrt(kappa), rel=1e-15)
    expected = [1 - kappa * 0.1, 1 - kappa * 0.001, 0.0, 1 - kappa * 0.001]  # a level with beta = 0 keeps it
    assert [value for pair in target.betas for value in pair] == pytest.approx(expected, rel=1e-12)
    assert target.eps == pytest.approx(1e-8 / math.sqrt(kappa), rel=1e-15)
    assert target.weight_decay == pytest.approx(0.01 * math.sqrt(kappa), rel=1e-15)
    assert (target.steps, target.batch_size) == (125, 256)
    assert result.alternatives["linear"].lr == pytest.approx(3e-3 * kappa)
    assert result.alternatives["linear"].betas == result.source.betas
    assert result.alternatives["unchanged"].lr == 3e-3
    coupled = transfer_batch_size(
        3e-3, (0.9, 0.999), 32, weight_decay=0.01, factor=2, decoupled_weight_decay=False, rule="sqrt"
    )
    assert coupled.target.weight_decay == 0.01
    assert result.to_dict()["target"]["batch_size"] == 256


def test_batch_rule_refuses_a_negative_beta():
    with pytest.raises(ValueError, match=r"factor must be <= 10"):
        transfer_batch_size(1e-3, (0.9, 0.999), 32, factor=16, rule="sqrt")


def test_unstable_target_warns_with_the_nearest_stable_pair():
    """The paper rule keeps the paper region, not γ > β²: (0.9, 0.815) at c = 1/10 leaves it."""
    with pytest.warns(UserWarning, match=r"outside the stable region.*nearest pair") as record:
        result = transfer_lr(1e-3, (0.9, 0.815), factor=0.1, rates="paper")
    assert len(record) == 1 and not result.stable
    level = result.stability[0]
    assert level.margin < 0
    beta, gamma = level.nearest_stable
    assert gamma - beta**2 == pytest.approx(1e-3, rel=1e-9)
    with pytest.warns(UserWarning):
        transfer_batch_size(1e-3, (0.9, 0.82), 32, factor=2, rule="sqrt")


def test_nearest_stable_pair_is_the_nearest_point_by_brute_force():
    margin = 1e-3
    for beta, gamma in [(0.8, 0.64), (0.95, 0.5), (0.99, 0.97), (0.3, 0.0)]:
        found = nearest_stable_pair(beta, gamma, margin)
        grid = torch.linspace(0, math.sqrt(1 - margin) - 1e-9, 200001, dtype=torch.float64)
        distances = (grid - beta) ** 2 + (grid**2 + margin - gamma) ** 2
        best = float(grid[distances.argmin()])
        assert found[0] == pytest.approx(best, abs=1e-5)
        assert found[1] - found[0] ** 2 == pytest.approx(margin, rel=1e-9)
    assert nearest_stable_pair(0.9, 0.999) == (0.9, 0.999)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: transfer_lr(0.0, (0.9, 0.999), factor=2), "lr must be a finite number > 0"),
        (lambda: transfer_lr(1e-3, (0.9, 1.0), factor=2), "gamma of level 1 must be in"),
        (lambda: transfer_lr(1e-3, (0.9, 0.999)), "exactly one of factor and to_lr"),
        (lambda: transfer_lr(1e-3, (0.9, 0.999), factor=2, to_lr=1e-2), "exactly one of factor and to_lr"),
        (lambda: transfer_lr(1e-3, (0.9, 0.999), factor=-1), "factor must be a finite number > 0"),
        (lambda: transfer_lr(1e-3, (0.9, 0.999), factor=2, rates="taylor"), "rates must be one of"),
        (lambda: transfer_lr(1e-3, (0.9, 0.999), steps=0, factor=2), "steps must be an integer >= 1"),
        (lambda: transfer_lr(1e-3, (0.9, 0.999), weight_decay=-1, factor=2), "weight_decay must be"),
        (lambda: transfer_lr(1e-3, [(0.9,)], factor=2), "betas of level 1 must be a pair"),
        (
            lambda: transfer_batch_size(1e-3, (0.9, 0.999), 0, factor=2, rule="sqrt"),
            "batch_size must be an integer >= 1",
        ),
        (
            lambda: transfer_batch_size(1e-3, (0.9, 0.999), 32, factor=1.01, rule="sqrt"),
            "batch_size \\* factor must be an integer",
        ),
    ],
)
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("kappa", [0.25, 2.0, 8.0])
def test_every_named_batch_rule_against_its_formula(kappa):
    from kadam.transfer import BATCH_RULES

    lr, (beta, gamma), decay = 3e-3, (0.9, 0.99), 0.1
    expected = {
        "sqrt": (lr * kappa**0.5, (1 - kappa * 0.1, 1 - kappa * 0.01), decay * kappa**0.5, 1e-8 / kappa**0.5),
        "linear": (lr * kappa, (beta, gamma), decay, 1e-8),
        "sqrt-lr": (lr * kappa**0.5, (beta, gamma), decay, 1e-8),
        "sqrt-lr+half-life": (lr * kappa**0.5, (beta, gamma**kappa), decay, 1e-8),
        "linear+half-life": (lr * kappa, (beta, gamma**kappa), decay, 1e-8),
        "power-lines": (lr, (beta, gamma), decay * kappa, 1e-8),
        "unchanged": (lr, (beta, gamma), decay, 1e-8),
    }
    assert set(expected) == set(BATCH_RULES)
    for rule, (new_lr, betas, new_decay, eps) in expected.items():
        result = transfer_batch_size(lr, (beta, gamma), 32, decay, 800, kappa, rule=rule)
        assert result.rule == f"batch-{rule}"
        assert result.target.lr == pytest.approx(new_lr, rel=1e-14)
        assert result.target.betas[0] == pytest.approx(betas, rel=1e-14)
        assert result.target.weight_decay == pytest.approx(new_decay, rel=1e-14)
        assert result.target.eps == pytest.approx(eps, rel=1e-14)
        assert (result.target.steps, result.target.batch_size) == (round(800 / kappa), round(32 * kappa))
        assert set(result.alternatives) == set(BATCH_RULES) - {rule}
        coupled = transfer_batch_size(
            lr, (beta, gamma), 32, decay, factor=kappa, rule=rule, decoupled_weight_decay=False
        )
        assert coupled.target.weight_decay == decay  # L2 decay is part of the loss: every rule keeps it


def test_batch_rule_errors_and_the_square_roots_limit():
    with pytest.raises(ValueError, match="rule must be one of"):
        transfer_batch_size(1e-3, (0.9, 0.999), 32, factor=2, rule="cubic")
    with pytest.raises(ValueError, match="factor must be <= 10"):
        transfer_batch_size(1e-3, (0.9, 0.999), 32, factor=16, rule="sqrt")
    linear = transfer_batch_size(1e-3, (0.9, 0.999), 32, factor=16, rule="linear")  # other rules have no limit
    assert linear.target.lr == pytest.approx(1.6e-2) and "sqrt" not in linear.alternatives
