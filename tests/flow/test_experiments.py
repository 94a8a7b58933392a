"""The problems and experiment functions of kadam.experiments.flow (sizes scaled down)."""

from __future__ import annotations

import json

import pytest
import torch

from kadam.experiments.flow import (
    accuracy_experiment,
    convergence_experiment,
    log_log_slope,
    make_problem,
    plot_accuracy,
    plot_convergence,
)


def test_quadratic_is_100_dimensional_with_condition_number_1e3():
    loss = make_problem("quadratic")
    hessian = torch.autograd.functional.hessian(loss.fn, loss.theta0)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert loss.theta0.numel() == 100
    assert float(eigenvalues.max() / eigenvalues.min()) == pytest.approx(1e3, rel=1e-9)


@pytest.mark.parametrize("name", ["quadratic", "logistic", "mlp"])
def test_problems_are_seeded(name):
    first, again, other = make_problem(name, 0), make_problem(name, 0), make_problem(name, 1)
    assert torch.equal(first.fn(first.theta0), again.fn(again.theta0))
    assert not torch.equal(first.fn(first.theta0), other.fn(other.theta0))


def test_unknown_problem():
    with pytest.raises(ValueError, match="problem must be one of"):
        make_problem("cifar")


def test_log_log_slope_recovers_a_power_law():
    lrs = [4e-3, 2e-3, 1e-3, 4e-4]
    assert log_log_slope(lrs, [3.0 * lr**1.5 for lr in lrs]) == pytest.approx(1.5, rel=1e-12)


def test_experiments_return_json_and_draw(tmp_path):
    accuracy = accuracy_experiment(("quadratic",), ks=(1, 2), steps=60)
    assert [(row["problem"], row["k"]) for row in accuracy["rows"]] == [("quadratic", 1), ("quadratic", 2)]
    assert all(row["passes"] == (row["max_rel_error"] <= 0.01) for row in accuracy["rows"])
    convergence = convergence_experiment("quadratic", lrs=(4e-3, 2e-3), horizon=0.1, variants=[("exact", 1), ("paper", 2)])
    assert set(convergence["slopes"]) == {"exact/order1", "paper/order2"}
    assert [entry["steps"] for entry in convergence["per_lr"]] == [25, 50]
    json.dumps([accuracy, convergence])
    for path in (plot_accuracy(accuracy, tmp_path / "a.png"), plot_convergence(convergence, tmp_path / "c.png")):
        assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="lrs must hold at least two"):
        convergence_experiment("quadratic", lrs=(1e-3,))
