"""The problems and experiment functions of kadam.experiments.flow (sizes scaled down)."""

from __future__ import annotations

import json

import pytest
import torch

from kadam.experiments.flow import plots as flow_plots
from kadam.experiments.flow.plots import plot_accuracy, plot_convergence
from kadam.experiments.flow.protocol import (
    accuracy_experiment,
    convergence_experiment,
    first_step_experiment,
    log_log_slope,
    make_problem,
    restart_experiment,
    restart_from_discrete,
)
from kadam.flow import FlatLoss, discrete
from tests.figure_helpers import legend_texts


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


def test_experiments_return_json_and_draw(tmp_path, drawn_figures):
    figures = drawn_figures(flow_plots)
    accuracy = accuracy_experiment(("quadratic",), ks=(1, 2), steps=60)
    assert [(row["problem"], row["k"]) for row in accuracy["rows"]] == [("quadratic", 1), ("quadratic", 2)]
    assert all(row["passes"] == (row["max_rel_error"] <= 0.01) for row in accuracy["rows"])
    convergence = convergence_experiment(
        "quadratic", lrs=(4e-3, 2e-3), horizon=0.1, variants=[("exact", 1), ("paper", 2)]
    )
    assert set(convergence["slopes"]) == {"exact/order1", "paper/order2"}
    assert [entry["steps"] for entry in convergence["per_lr"]] == [25, 50]
    json.dumps([accuracy, convergence])
    for path in (plot_accuracy(accuracy, tmp_path / "a.png"), plot_convergence(convergence, tmp_path / "c.png")):
        assert path.read_bytes()[:4] == b"\x89PNG"
    accuracy_figure, convergence_figure = figures
    assert "1% bar" in legend_texts(accuracy_figure)  # the reference line says what it is
    styles = [line.get_linestyle() for line in accuracy_figure.axes[0].get_lines()[:2]]
    assert styles[0] != styles[1]  # k = 1 and k = 2 stay distinguishable where they coincide
    reference = next(
        line
        for line in convergence_figure.axes[0].get_lines()
        if line.get_label() == "slope 1 (first order, through exact/order1)"
    )
    smallest = min(range(2), key=lambda i: convergence["lrs"][i])
    assert reference.get_ydata()[smallest] == pytest.approx(
        convergence["per_lr"][smallest]["variants"]["exact/order1"]["final_rel_error"], rel=1e-12
    )
    assert reference.get_ydata()[0] / reference.get_ydata()[1] == pytest.approx(2.0, rel=1e-12)  # ∝ η: slope 1
    with pytest.raises(ValueError, match="lrs must hold at least two"):
        convergence_experiment("quadratic", lrs=(1e-3,))


def test_first_step_error_is_first_order_on_the_quadratic_and_carried_by_fast_coordinates_on_the_mlp():
    quadratic = first_step_experiment("quadratic", lrs=(1e-3, 2.5e-4))
    assert [row["fast_coordinates"] for row in quadratic["rows"]] == [0, 0]
    assert quadratic["slope"] == pytest.approx(1.0, abs=0.1)
    mlp = first_step_experiment("mlp", lrs=(1e-3, 2.5e-4))
    assert all(row["fast_coordinates"] > 0 and row["fast_share"] > 0.9 for row in mlp["rows"])
    assert mlp["slope"] < 0.8  # sub-linear while fast coordinates exist
    assert mlp["local_slopes"] == [pytest.approx(mlp["slope"], rel=1e-12)]
    json.dumps([quadratic, mlp])
    with pytest.raises(ValueError, match="lrs must hold at least two"):
        first_step_experiment("quadratic", lrs=(1e-3,))


@pytest.mark.parametrize("k", [1, 2])
def test_restart_from_discrete_is_exact_for_a_constant_gradient(k):
    direction = torch.linspace(-2.0, 3.0, 17, dtype=torch.float64) + 0.05
    loss = FlatLoss(lambda theta: direction @ theta, torch.zeros(17, dtype=torch.float64), [(3, 4), (5,)])
    hyperparameters = {"lr": 1e-2, "k": k, "weight_decay": 0.0}
    reference = discrete(loss, 12, return_moments=True, **hyperparameters)
    restarted = restart_from_discrete(loss, reference, 5, **hyperparameters)
    assert torch.equal(restarted.theta[:6], reference.theta[:6])
    torch.testing.assert_close(restarted.theta, reference.theta, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="restart_step must be an integer in"):
        restart_from_discrete(loss, reference, 12, **hyperparameters)
    with pytest.raises(ValueError, match="recorded every step with return_moments"):
        restart_from_discrete(loss, discrete(loss, 12, **hyperparameters), 5, **hyperparameters)


def test_restarts_on_the_mlp_remove_the_error_of_the_first_steps():
    result = restart_experiment("mlp", lr=1e-3, steps=40, restart_steps=(1, 10))
    finals = [row["final_rel_error"] for row in result["rows"]]
    assert [row["restart_step"] for row in result["rows"]] == [0, 1, 10]
    assert finals[0] > finals[1] > finals[2]
    reference_max = result["rows"][0]["max_rel_error"]
    assert reference_max == pytest.approx(
        first_step_experiment("mlp", lrs=(1e-3, 5e-4))["rows"][0]["rel_error_step1"], rel=1e-9
    )
    json.dumps(result)
