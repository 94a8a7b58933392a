"""The named optimizers of the workloads and one mini-batch training run (``train_run``)."""

import math

import pytest
import torch

from kadam.experiments.training.protocol import train_run
from kadam.experiments.workloads import make_optimizer
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
    [
        ("kadam2", 2, (), 0.9, 0.0),
        ("kadam2-elementwise", 2, (3, 4), 0.9, 0.0),
        ("kadam2-naive", 2, (3, 4), 0.9, 0.9),
        ("kadam2-momentum-last", 2, (), 0.0, 0.9),
        ("kadam3", 3, (), 0.9, 0.0),
    ],
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
