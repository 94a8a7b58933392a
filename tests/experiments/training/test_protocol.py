"""Section 4's protocol: optimizers, training runs, learning-rate selection, paired comparisons."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from kadam.experiments.training.analysis import (
    CENTRAL_PAIRING,
    paired_comparison,
    select_learning_rates,
    summarize_training,
)
from kadam.experiments.training.protocol import train_run
from kadam.experiments.workloads import OPTIMIZERS, make_optimizer
from kadam.optimizer import KAdam

TINY_MLP = {"hidden": 16, "depth": 1}


def _state_after_one_step(name):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 4))
    optimizer = make_optimizer(name, [weight], 1e-3)
    weight.grad = torch.randn(3, 4)
    optimizer.step()
    return optimizer, optimizer.state[weight]


@pytest.mark.parametrize(
    "name, k, level2_shape, level1_beta, level2_beta",
    [("kadam2", 2, (), 0.9, 0.0), ("kadam2-elementwise", 2, (3, 4), 0.9, 0.0), ("kadam2-naive", 2, (3, 4), 0.9, 0.9),
     ("kadam2-momentum-last", 2, (), 0.0, 0.9), ("kadam3", 3, (), 0.9, 0.0)],
)
def test_strategies_configure_the_levels_they_document(name, k, level2_shape, level1_beta, level2_beta):
    optimizer, state = _state_after_one_step(name)
    gradient = optimizer.param_groups[0]["params"][0].grad
    assert isinstance(optimizer, KAdam) and optimizer.param_groups[0]["k"] == k
    assert tuple(state["exp_avg_sq_2"].shape) == level2_shape  # () is tensor mode: one second moment per tensor
    assert f"exp_avg_sq_{k}" in state and f"exp_avg_sq_{k + 1}" not in state
    # After one step m = (1 − β)·input. Level 1's input is g; its output m̂/(√v̂ + ε) = g/(|g| + ε) ≈ sign(g).
    torch.testing.assert_close(state["exp_avg"], (1 - level1_beta) * gradient)
    if level2_beta == 0.0:
        assert "exp_avg_2" not in state  # beta1 = 0: m = x, not stored
    else:
        torch.testing.assert_close(state["exp_avg_2"], (1 - level2_beta) * torch.sign(gradient), rtol=1e-6, atol=1e-6)


def test_adam_and_adamw_are_torchs():
    assert type(_state_after_one_step("adam")[0]) is torch.optim.Adam
    optimizer = _state_after_one_step("adamw")[0]
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["weight_decay"] == 0.01


def test_make_optimizer_rejects_bad_input():
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("sgd", [weight], 1e-3)
    for lr in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="lr must be"):
            make_optimizer("adam", [weight], lr)


def test_train_run_is_determined_by_its_seed():
    first = train_run("mnist1d-mlp", "kadam2", 1e-2, 30, 16, seed=3, task_sizes=TINY_MLP, curve_points=5)
    again = train_run("mnist1d-mlp", "kadam2", 1e-2, 30, 16, seed=3, task_sizes=TINY_MLP, curve_points=5)
    other = train_run("mnist1d-mlp", "kadam2", 1e-2, 30, 16, seed=4, task_sizes=TINY_MLP, curve_points=5)
    for key in ("train_loss_curve", "validation_loss", "test_loss", "test_accuracy"):
        assert first[key] == again[key]
    assert first["test_loss"] != other["test_loss"]
    assert len(first["train_loss_curve"]) == 5 and first["curve_window"] == 6
    assert first["train_loss_curve"][-1] < first["train_loss_curve"][0]  # it learns
    assert not first["diverged"]


def test_train_run_marks_divergence_and_stops():
    run = train_run("mnist1d-mlp", "adam", 1e30, 40, 16, seed=0, task_sizes=TINY_MLP, curve_points=40)
    assert run["diverged"] and run["validation_loss"] is None and run["test_loss"] is None
    assert len(run["train_loss_curve"]) < 40 and math.isnan(run["train_loss_curve"][-1])
    with pytest.raises(ValueError, match="steps and batch_size"):
        train_run("mnist1d-mlp", "adam", 1e-3, 0, 16, seed=0)


@pytest.mark.parametrize("seed", range(5))
def test_paired_comparison_matches_scipy_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    first, second = rng.normal(size=n), rng.normal(size=n) + rng.normal() * 0.5
    comparison = paired_comparison(first.tolist(), second.tolist(), confidence=0.9)
    reference = stats.ttest_rel(first, second)
    interval = reference.confidence_interval(0.9)
    assert comparison["ci_low"] == pytest.approx(interval.low, rel=1e-12)
    assert comparison["ci_high"] == pytest.approx(interval.high, rel=1e-12)
    assert comparison["mean_difference"] == pytest.approx(float(np.mean(first - second)), rel=1e-12)
    assert comparison["significant"] == bool(reference.pvalue < 0.1)


def test_paired_comparison_claims_only_when_the_interval_excludes_zero():
    assert paired_comparison([1.0, 1.1, 0.9, 1.05], [0.0, 0.1, -0.1, 0.0])["significant"]
    assert not paired_comparison([1.0, -1.0], [0.0, 0.0])["significant"]
    diverged = paired_comparison([math.inf, 1.0], [0.5, 0.5])
    assert diverged["mean_difference"] is None and not diverged["significant"]
    with pytest.raises(ValueError, match="pair up"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_comparison([1.0], [1.0])
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_comparison([1.0, 2.0], [1.0, 1.0], confidence=1.0)


def _run(task, optimizer, lr, seed, validation, test=None):
    return {"task": task, "optimizer": optimizer, "lr": lr, "seed": seed, "validation_loss": validation,
            "test_loss": test, "test_accuracy": None if test is None else 0.5, "diverged": validation is None,
            "train_loss_curve": [2.0, 1.0], "curve_window": 5}


def test_select_learning_rates_uses_mean_validation_loss_and_counts_divergence_as_worst():
    runs = [
        _run("t", "adamw", 1e-3, 0, 1.0), _run("t", "adamw", 1e-3, 1, 0.6),  # mean 0.8
        _run("t", "adamw", 1e-2, 0, 0.5), _run("t", "adamw", 1e-2, 1, None),  # one diverged: +inf
        _run("t", "adamw", 1e-1, 0, 0.9), _run("t", "adamw", 1e-1, 1, 0.9),
        _run("t", "kadam2", 1e-3, 0, 0.7), _run("t", "kadam2", 1e-2, 0, 0.7),  # a tie keeps the smaller rate
    ]
    selection = select_learning_rates(runs)["t"]
    assert selection["adamw"]["lr"] == 1e-3 and selection["adamw"]["validation_loss"] == pytest.approx(0.8)
    assert selection["adamw"]["at_grid_edge"]
    assert selection["adamw"]["grid"][repr(1e-2)] is None
    assert selection["kadam2"]["lr"] == 1e-3


def test_summary_reports_ratios_pairs_and_the_central_pairing():
    (bn_task, adam), (plain_task, kadam2) = CENTRAL_PAIRING
    tuning = [_run(task, name, lr, 0, loss) for task in (bn_task, plain_task) for name, lr, loss in
              [("adamw", 1e-3, 0.5), ("adamw", 1e-2, 0.6), (adam, 1e-3, 0.7), (adam, 1e-2, 0.4),
               (kadam2, 1e-3, 0.3), (kadam2, 1e-2, 0.9)]]
    test_losses = {"adamw": [0.50, 0.52, 0.49], adam: [0.40, 0.41, 0.43], kadam2: [0.45, 0.60, 0.47]}
    evaluation = [_run(task, name, 0.0, 100 + i, 0.0, loss) for task in (bn_task, plain_task)
                  for name, losses in test_losses.items() for i, loss in enumerate(losses)]
    summary = summarize_training(tuning, evaluation)
    assert summary["lr_ratio_to_adamw"][bn_task] == {"adamw": 1.0, adam: 10.0, kadam2: 1.0}
    versus = summary["versus_adamw"][bn_task]
    assert versus[adam]["significant"] and versus[adam]["mean_difference"] == pytest.approx(-0.09)
    assert not versus[kadam2]["significant"]
    assert summary["evaluation"][plain_task][kadam2]["test_loss"]["std"] == pytest.approx(np.std([0.45, 0.6, 0.47], ddof=1))
    central = summary["central_pairing"]
    assert central["first"]["optimizer"] == adam and central["second"]["task"] == plain_task
    assert central["difference"]["mean_difference"] == pytest.approx(np.mean([0.40 - 0.45, 0.41 - 0.60, 0.43 - 0.47]))
    assert set(summary["optimizers"]) == {"adamw", adam, kadam2} and set(OPTIMIZERS) >= set(summary["optimizers"])
    assert summary["curves"][bn_task][adam] == {"steps": [5, 10], "loss": [2.0, 1.0]}
