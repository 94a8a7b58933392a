"""Smoke sizes of the normalization experiments: they run, report sane numbers and draw their figures."""

import json
import math

import pytest

from kadam.experiments.normalization.plots import plot_digits_norms, plot_meta_adaptive, plot_random_walk
from kadam.experiments.normalization.protocol import (
    digits_norms,
    meta_adaptive_drift,
    meta_adaptive_network,
    random_walk,
)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_digits_norms_tracks_the_hidden_weights_and_the_corrected_prediction_is_closer(norm, tmp_path):
    result = digits_norms(norm=norm, optimizer="adamw", lr=1e-2, weight_decay=0.5, steps=400, hidden=32)
    json.dumps(result)
    assert result["tracked"] == ["0.weight", "3.weight"]
    for layer in result["layers"]:
        assert abs(layer["corrected_norm_error"]) < abs(layer["orthogonal_norm_error"])
        assert abs(layer["corrected_angular_error"]) < abs(layer["orthogonal_angular_error"])
    # 400 steps at ηλ = 5e-3 are 4 relaxation times: the run is equilibrated, read after 3 of them
    assert result["equilibrated"] and result["window_start"] == pytest.approx(3 * result["relaxation_steps"])
    path = tmp_path / "norms.png"
    plot_digits_norms([result], str(path))
    assert path.stat().st_size > 1000


def test_a_run_shorter_than_four_relaxation_times_is_not_read_as_equilibrated():
    result = digits_norms(norm="batch", optimizer="adamw", lr=1e-2, weight_decay=0.01, steps=200, hidden=16)
    assert not result["equilibrated"] and result["relaxation_times_run"] < 4
    assert result["window_start"] == 100  # the second half, where only the replay is read


def test_digits_norms_with_adam_has_no_equilibrium():
    result = digits_norms(norm="batch", optimizer="adam", steps=100, hidden=16)
    assert result["weight_decay"] == 0.0 and result["relaxation_steps"] is None
    assert all("corrected_equilibrium_norm" not in layer for layer in result["layers"])
    # Adam without decay: the norms only grow
    for layer in result["layers"]:
        norms = layer["curves"]["measured_norm"]["values"]
        assert norms[-1] > layer["initial_norm"]


def test_meta_adaptive_network_and_figures(tmp_path):
    network = meta_adaptive_network(steps=150, hidden=16, configs=((0.9, 0.999, "elementwise"),))
    json.dumps(network)
    (config,) = network["configs"]
    assert [layer["name"] for layer in config["layers"]] == ["0.weight", "3.weight"]
    assert all(-1 <= layer["final_cosine"] <= 1 and layer["angular_update_ratio"] > 0 for layer in config["layers"])
    # beside 2-Adam: 2-Adam at the corrected step and the control (AdamW, another batch order), each with its loss
    assert config["copies"] == ["adamw", "sphere", "control", "sphere_corrected"]
    assert config["step_scale"] == pytest.approx(math.sqrt((1 - 0.9 * 0.999) / (1 + 0.9 * 0.999)))
    for layer in config["layers"]:
        assert all(-1 <= layer[copy]["final_cosine"] <= 1 for copy in ("sphere", "sphere_corrected", "control"))
        # the corrected copy turns faster relative to AdamW than plain 2-Adam: its steps are smaller
        assert layer["sphere_corrected"]["angular_update_ratio"] > layer["sphere"]["angular_update_ratio"]
    assert set(config["losses"]) == set(config["copies"]) and not any(v["diverged"] for v in config["losses"].values())
    drift = meta_adaptive_drift(d=32, steps=100, lr=1e-2, weight_decay=0.5, configs=((0.9, 0.99, "tensor"),))
    walk = random_walk(d=32, lr=1e-2, weight_decay=0.5, gamma=0.9, relaxation_times=3.0, transient_times=1.0)
    json.dumps(walk)
    for draw, arguments in ((plot_meta_adaptive, (drift, network)), (plot_random_walk, (walk,))):
        path = tmp_path / f"{draw.__name__}.png"
        draw(*arguments, str(path))
        assert path.stat().st_size > 1000
    assert all(math.isfinite(row["measured_norm"]) for row in walk["by_beta"])


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: digits_norms(optimizer="sgd"), "optimizer"),
        (lambda: digits_norms(norm="group"), "norm"),
        (lambda: random_walk(relaxation_times=2.0, transient_times=3.0), "transient_times"),
    ],
)
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
