"""The batch-size study's metric and verdict rules against hand-computed cases, and its cells' design."""

from __future__ import annotations

import math

import pytest

from kadam.experiments.profiles import PROFILE_SIZES
from kadam.experiments.transfer import analysis
from kadam.experiments.transfer.study import BatchStudy
from kadam.transfer import BATCH_RULES, transfer_batch_size


def _run(seed, test, initial=2.0, diverged=False, validation=None):
    return {
        "seed": seed,
        "test_loss": None if diverged else test,
        "validation_loss": None if diverged else (test if validation is None else validation),
        "initial_test_loss": initial,
        "diverged": diverged,
    }


def test_regret_is_paired_by_seed_with_a_t_interval():
    optimum = [_run(0, 1.0), _run(1, 1.2), _run(2, 1.1)]
    rule = [_run(2, 1.15), _run(0, 1.1), _run(1, 1.2)]  # order does not matter: paired by seed
    row = analysis.regret(rule, optimum)
    assert row["differences"] == pytest.approx([0.1, 0.0, 0.05])
    assert row["regret"] == pytest.approx(0.05)
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, 2) · s / √n, s = 0.05
    assert (row["low"], row["high"]) == pytest.approx((0.05 - half, 0.05 + half))
    drop = 2.0 - 1.1
    assert row["tolerance"] == pytest.approx(analysis.TOLERANCE_FRACTION * drop)
    assert row["relative"] == pytest.approx(0.05 / drop)
    assert row["verdict"] == "not resolved"


def test_a_diverged_run_counts_at_its_initial_loss():
    optimum = [_run(0, 1.0), _run(1, 1.0), _run(2, 1.0)]
    rule = [_run(0, None, diverged=True), _run(1, 1.0), _run(2, 1.0)]
    row = analysis.regret(rule, optimum)
    assert row["differences"][0] == pytest.approx(1.0) and row["diverged"] == 1
    with pytest.raises(ValueError, match="same evaluation seeds"):
        analysis.regret(rule[:2], optimum)


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [(-0.01, 0.009, "holds"), (0.011, 0.03, "fails"), (-0.01, 0.011, "not resolved"), (0.0, 0.01, "holds")],
)
def test_rule_verdict_against_the_tolerance(low, high, verdict):
    assert analysis.rule_verdict(low, high, 0.01) == verdict


def test_select_and_tuned_lr_use_the_mean_validation_over_tuning_seeds():
    points = {
        (1e-3, 0.999): [_run(0, 1.0, validation=0.5), _run(1, 1.0, validation=0.9)],  # mean 0.7
        (2e-3, 0.999): [_run(0, 1.0, validation=0.6), _run(1, 1.0, validation=0.6)],  # mean 0.6: selected
        (4e-3, 0.999): [_run(0, 1.0, validation=0.1), _run(1, 1.0, diverged=True)],  # a divergence: inf
    }
    assert analysis.select(points) == (2e-3, 0.999)
    sweeps = {1: {lr: runs for (lr, _), runs in points.items()}}
    assert analysis.tuned_lr_indices(sweeps, [1e-3, 2e-3, 4e-3]) == {1: 1}


@pytest.mark.parametrize(
    ("indices", "shape"),
    [
        ({0.25: 1, 1: 3, 8: 2}, "surges"),
        ({0.25: 1, 1: 2, 8: 4}, "rises"),
        ({0.25: 2, 1: 2, 8: 2}, "flat"),
        ({0.25: 3, 1: 2, 8: 2}, "not resolved"),  # falls at the small end: no surge, no rise
        ({0.25: 1, 8: 2}, "not resolved"),  # two batch sizes cannot show a rise and a fall
    ],
)
def test_surge_shapes(indices, shape):
    assert analysis.surge(indices) == shape


def test_rule_points_are_the_library_rules():
    config = PROFILE_SIZES["full"].transfer.batch
    for rule in BATCH_RULES:
        for factor in config.factors:
            point = analysis.rule_point(config, rule, factor, 3e-3)
            target = transfer_batch_size(
                3e-3, (config.beta, config.gamma), config.base_batch, config.weight_decay, factor=factor, rule=rule
            ).target
            assert point["lr"] == pytest.approx(target.lr, rel=1e-11)
            assert (point["beta"], point["gamma"]) == pytest.approx(target.betas[0], rel=1e-11)
            assert point["weight_decay"] == pytest.approx(target.weight_decay, rel=1e-11)


def test_grids_and_sizes():
    config = PROFILE_SIZES["full"].transfer.batch
    lrs = analysis.lr_grid(config)
    assert len(lrs) == config.lr_points and lrs[0] == config.lr_low and lrs[-1] == pytest.approx(config.lr_high)
    assert all(b / a == pytest.approx(lrs[1] / lrs[0]) for a, b in zip(lrs, lrs[1:]))
    assert analysis.gamma_grid(config, 1) == [config.gamma]
    assert analysis.gamma_grid(config, 4) == pytest.approx([config.gamma, config.gamma**4])
    assert analysis.batch_of(config, 0.25) == config.base_batch // 4
    assert analysis.steps_of(config, 8, "samples") * config.base_batch * 8 == config.samples
    assert analysis.steps_of(config, 8, "steps") == analysis.steps_of(config, 1, "samples")
    with pytest.raises(ValueError, match="regime"):
        analysis.steps_of(config, 2, "epochs")
    with pytest.raises(ValueError, match="whole number"):
        analysis.batch_of(config, 0.3)


def test_the_study_tunes_every_gamma_a_rule_moves_to_at_equal_budget():
    config = PROFILE_SIZES["full"].transfer.batch
    study = BatchStudy(config)
    cells = study.sweep_cells()
    per_factor = {}
    for cell in cells:
        kwargs = cell.kwargs
        per_factor.setdefault((kwargs["workload"], kwargs["batch_size"]), set()).add(
            (kwargs["hyperparameters"]["lr"], kwargs["hyperparameters"]["gamma"], kwargs["seed"])
        )
        assert kwargs["arm"] == "adamw" and kwargs["seed"] in config.tuning_seeds
        assert kwargs["steps"] * kwargs["batch_size"] == config.samples
    for (_, batch), points in per_factor.items():
        factor = batch / config.base_batch
        assert len(points) == config.lr_points * len(analysis.gamma_grid(config, factor)) * len(config.tuning_seeds)
    assert len(per_factor) == len(config.workloads) * (1 + len(config.factors))


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [(-0.01, 0.01, "holds"), (-0.02, 0.0, "not resolved"), (0.011, 0.03, "fails"), (-0.05, -0.011, "fails")],
)
def test_the_lr_transfer_keeps_the_loss_only_within_the_tolerance_on_both_sides(low, high, verdict):
    assert analysis.equivalence_verdict(low, high, 0.01) == verdict
