"""The switch-off and training protocols of kadam.experiments.stability, through the real KAdam code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kadam import stability
from kadam.experiments.profiles import profile_sizes
from kadam.experiments.stability import analysis, plots
from kadam.experiments.stability import protocol as experiment

# k = 2 configurations with an unstable level 1: the final update's slope is predicted to be 0
KADAM2_FAST = (((0.9, 0.5), (0.5, 0.99)), ((0.8, 0.5), (0.0, 0.99)), ((0.9, 0.7), (0.0, 0.999)), ((0.9, 0.99), (0.5, 0.9)))


@pytest.fixture(scope="module")
def switch_off() -> dict:
    return experiment.switch_off_experiment(kadam2_points=KADAM2_FAST)


def test_switch_off_slopes_match_prediction_on_both_sides(switch_off: dict) -> None:
    single = [row for row in switch_off["rows"] if len(row["betas"]) == 1]
    assert len(single) >= 64
    assert sum(row["stable"] for row in single) >= 16 and sum(not row["stable"] for row in single) >= 16
    for row in switch_off["rows"]:
        tolerance = 0.02 * abs(row["predicted_slope"]) + 1e-3
        assert abs(row["measured_slope"] - row["predicted_slope"]) <= tolerance, row
        assert row["usable_window"] >= 100  # eps = 0: only underflow can end it, and not within 100 steps here
    assert switch_off["all_within_tolerance"]
    # the fitted slope is ln(beta) - ln(gamma)/2 itself for k = 1
    for row in single:
        assert row["predicted_slope"] == pytest.approx(stability.growth_rate(row["betas"][0], row["gammas"][0]), rel=1e-14)


def test_switch_off_discriminates_between_rate_conventions(switch_off: dict) -> None:
    """The paper's continuous rate (b - 2a)/2 is not what the optimizer does: most points miss it."""
    single = [row for row in switch_off["rows"] if len(row["betas"]) == 1]
    misses = [
        abs(row["measured_slope"] - stability.growth_rate(row["betas"][0], row["gammas"][0], "paper"))
        > 0.02 * abs(row["measured_slope"]) + 1e-3
        for row in single
    ]
    assert np.mean(misses) > 0.5


def test_kadam2_unstable_level1_stable_level2(switch_off: dict) -> None:
    kadam2 = [row for row in switch_off["rows"] if len(row["betas"]) == 2]
    rows = [row for row in kadam2 if not stability.is_stable(row["betas"][0], row["gammas"][0])]
    assert len(rows) == 3
    for row in rows:
        level1_rate = stability.growth_rate(row["betas"][0], row["gammas"][0])
        assert row["predicted_slope"] == 0.0 and abs(row["measured_slope"]) <= 1e-3
        # level 2's second moment tracks level 1's exponentially growing output
        assert row["measured_half_log_second_moment_slope"] == pytest.approx(level1_rate, rel=0.02, abs=1e-3)
        assert row["max_abs_update_after_switch"] <= stability.update_bound(row["betas"][1], row["gammas"][1])


def test_switch_off_with_epsilon_ends_the_window_before_epsilon_matters() -> None:
    row = experiment.switch_off_measurement([0.5], [0.3], eps=1e-8, window_steps=400)
    # sqrt(v_t) = 0.3**(t/2) falls below 1e6 * eps = 1e-2 at t = 8: 7 usable steps, too few to fit
    assert row["usable_window"] == 7 and math.isnan(row["measured_slope"])
    long_row = experiment.switch_off_measurement([0.9], [0.99], eps=1e-8, window_steps=400)
    assert long_row["usable_window"] == 400
    assert long_row["measured_slope"] == pytest.approx(long_row["predicted_slope"], rel=0.02, abs=1e-3)


def test_switch_off_grid_covers_both_sides() -> None:
    grid = experiment.switch_off_grid()
    rates = np.array([stability.growth_rate(b, g) for b, g in grid])
    assert len(grid) == 72 and (rates > 0).sum() == 40 and (rates < 0).sum() == 32
    assert all(0 < g < 1 for _, g in grid)


def test_classify_run_uses_the_stable_ceiling() -> None:
    beta = 0.9
    ceilings = np.asarray(stability.stable_update_ceiling(beta, np.arange(1, 201)))
    below = ceilings * 0.999
    assert experiment.classify_run(beta, below)["unstable"] is False
    spiked = below.copy()
    spiked[49] = ceilings[49] * 1.01
    verdict = experiment.classify_run(beta, spiked)
    assert verdict["unstable"] is True and verdict["first_exceeding_step"] == 50
    assert verdict["excess"] == pytest.approx(1.01)
    assert experiment.classify_run(beta, below[:10], diverged=True)["unstable"] is True
    # u_1 = sign(g) sits exactly on C_1 = 1: rounding there is not instability
    assert experiment.classify_run(beta, [1.0 + 1e-12])["unstable"] is False


def test_late_phase_slope_recovers_an_exponential() -> None:
    norms = 3.0 * np.exp(0.07 * np.arange(300))
    assert experiment.late_phase_slope(norms) == pytest.approx(0.07, rel=1e-10)


def test_training_updates_obey_the_bound_of_a_stable_pair() -> None:
    """Real training gradients, ε = 1e-8: ‖u_n‖_∞ ≤ B_n(β, γ) at every step; u_1 = sign(g) up to ε."""
    beta, gamma, steps = 0.9, 0.95, 60
    run = experiment.train_recording_updates(
        beta, gamma, 1e-2, experiment.TrainingSizes(steps=steps, corpus_chars=128, width=8, heads=1)
    )
    norms = np.asarray(run["update_inf_norms"])
    assert len(norms) == steps and not run["diverged"]
    assert norms[0] == pytest.approx(1.0, rel=1e-6)
    assert (norms <= np.asarray(stability.update_bound(beta, gamma, np.arange(1, steps + 1))) * (1 + 1e-9)).all()
    assert run["losses"][-1] < run["losses"][0]


def test_training_experiment_structure_and_outputs(tmp_path) -> None:
    result = analysis.training_experiment(
        betas=(0.5, 0.9), gammas=(0.3, 0.95), learning_rates=(1e-2, 1e-3),
        sizes=experiment.TrainingSizes(steps=40, corpus_chars=128, width=8, heads=1),
    )
    json.dumps(result, allow_nan=False)
    assert len(result["rows"]) == 8
    for summary in result["per_learning_rate"]:
        assert summary["points"] == 4 and 0.0 <= summary["agreement_exact"] <= 1.0
        assert summary["predicted_unstable_exact"] == 1 and summary["predicted_unstable_paper"] == 2
    widening_keys = {"largest_learning_rate", "smallest_learning_rate", "trend", "late_trend", "widens", "widens_late",
                     "excess_shrinks"}
    assert set(result["widening"]) == widening_keys
    assert result["criterion"].startswith("unstable iff")
    stable_rows = [row for row in result["rows"] if row["stable_exact"]]
    assert not any(row["unstable"] for row in stable_rows)  # the criterion cannot flag a stable pair (THEORY §2)
    heatmap, scatter, excess = tmp_path / "heat.png", tmp_path / "slopes.png", tmp_path / "excess.png"
    plots.plot_training_heatmaps(result, str(heatmap))
    plots.plot_slope_scatter(None, result, str(scatter))
    plots.plot_excess_by_learning_rate(result, str(excess))
    for path in (heatmap, scatter, excess):
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: experiment.switch_off_measurement([0.9], [0.5], window_steps=4), "window_steps must be"),
        (lambda: experiment.switch_off_experiment(point_limit=0), "point_limit must be"),
        (lambda: experiment.optimizer_updates(np.zeros((2, 2, 2)), [0.9], [0.5]), "inputs must have shape"),
        (lambda: experiment.full_batch_characters(8, 16), "need 1 <= context <= corpus_chars"),
        (lambda: experiment.TrainingSizes(steps=0), "steps must be an integer >= 1"),
        (lambda: profile_sizes("huge"), "profile must be one of"),
    ],
)
def test_bad_arguments_raise_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
