"""The switch-off and training protocols of kadam.experiments.stability, through the real KAdam code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kadam import stability
from kadam.experiments.profiles import profile_sizes
from kadam.experiments.stability import analysis, plots
from kadam.experiments.stability import protocol as experiment

# k = 2 configurations with an unstable level 1: the final update's slope is predicted to be 0
KADAM2_FAST = (
    ((0.9, 0.5), (0.5, 0.99)),
    ((0.8, 0.5), (0.0, 0.99)),
    ((0.9, 0.7), (0.0, 0.999)),
    ((0.9, 0.99), (0.5, 0.9)),
)


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
        assert row["predicted_slope"] == pytest.approx(
            stability.growth_rate(row["betas"][0], row["gammas"][0]), rel=1e-14
        )


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


def test_growth_test_flags_a_growing_series_and_not_a_flat_noisy_one() -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(1000)
    noise = np.exp(0.5 * rng.standard_normal(1000))  # the run's own fluctuation, a factor ~1.6 per step
    growing = experiment.growth_test(3.0 * np.exp(0.01 * steps) * noise)
    assert growing["grows"] and growing["interval"][0] < 0.01 < growing["interval"][1]
    flat = experiment.growth_test(3.0 * noise)
    assert not flat["grows"] and flat["interval"][0] < 0.0 < flat["interval"][1]
    # significant but small: the fitted growth over the window is below a factor 2
    slow = experiment.growth_test(np.exp(0.0003 * steps))
    assert slow["interval"][0] > 0 and not slow["grows"]
    assert experiment.growth_test(np.exp(0.0003 * steps), factor=1.0)["grows"]
    # a burst that comes back (rise then fall) is not sustained growth
    burst = np.exp(np.minimum(0.02 * steps, 0.02 * (1000 - steps)))
    assert not experiment.growth_test(burst)["grows"]
    assert experiment.growth_test(3.0 * np.exp(0.01 * steps) * noise, 500)["slope"] == pytest.approx(0.01, abs=0.003)
    short = experiment.growth_test([1.0, 2.0, 4.0])
    assert math.isnan(short["slope"]) and not short["grows"]


def test_growth_test_recovers_an_exponential_exactly() -> None:
    norms = 3.0 * np.exp(0.07 * np.arange(300))
    result = experiment.growth_test(norms, 150)
    assert result["slope"] == pytest.approx(0.07, rel=1e-10) and result["grows"] and result["steps"] == 150


def test_subnormals_are_flushed_inside_a_run_and_the_setting_restored() -> None:
    def flushing() -> bool:
        return float(torch.tensor(1e-300, dtype=torch.float64) * 1e-10) == 0.0

    before = flushing()
    with experiment._denormals_flushed():
        assert flushing()
    assert flushing() == before


def test_a_loss_of_45316_has_diverged() -> None:
    assert experiment.loss_diverged(45_315.96, untrained_loss=4.3)
    assert experiment.loss_diverged(float("nan"), 4.3) and experiment.loss_diverged(None, 4.3)
    assert not experiment.loss_diverged(6.4, 4.3)  # worse than untrained, but not twice: did not train, not diverged
    assert experiment.loss_diverged(6.4, 4.3, factor=1.0)
    with pytest.raises(ValueError, match="factor"):
        experiment.loss_diverged(1.0, 1.0, factor=0.0)


def test_classify_run_reads_only_the_runs_loss_and_norms() -> None:
    steps = np.arange(400)
    flat, losses = np.ones(400), list(np.linspace(3.7, 0.1, 400))
    stable = experiment.classify_run(flat, losses)
    assert not stable["unstable"] and not stable["late_unstable"] and not stable["diverged"]
    late = experiment.classify_run(np.where(steps < 200, 1.0, np.exp(0.02 * (steps - 200))), losses)
    assert late["late_unstable"] and late["late_grows"] and not late["diverged"]
    early = experiment.classify_run(np.minimum(np.exp(0.01 * steps), 10.0), losses)
    assert early["unstable"] and not early["late_unstable"]  # a rise that settled: the whole run only
    jump = experiment.classify_run(np.minimum(np.exp(0.05 * steps), 50.0), losses)
    assert not jump["unstable"]  # a jump within the first blocks, then flat: not sustained growth
    blown = experiment.classify_run(flat, [3.7] + [10.0] * 399)
    assert blown["diverged"] and blown["unstable"] and blown["late_unstable"]
    assert experiment.classify_run(flat[:10], losses[:10], stopped=True)["late_unstable"]


def test_protocol_grid_places_points_in_every_region() -> None:
    grid = experiment.protocol_grid((0.5, 0.9, 0.95), rates=(0.1,), between=2, gammas=(0.999,))
    regions = [experiment.region_of(b, g) for b, g in grid]
    assert regions.count("outside both") == 3 and regions.count("between") == 6 and regions.count("inside both") == 3
    for beta, gamma in grid:
        if experiment.region_of(beta, gamma) == "between":
            assert beta**2 < gamma <= beta / (2 - beta)
    assert (0.5, float(f"{0.25 * math.exp(-0.2):.6g}")) in grid and grid == sorted(set(grid))
    with pytest.raises(ValueError, match="between"):
        experiment.protocol_grid((0.9,), between=-1)


def test_profiles_grid_meets_the_design() -> None:
    """At least five points between the boundaries, beta and gamma >= 0.95, points outside both, >= 3 seeds."""
    for profile in ("quick", "full"):
        config = profile_sizes(profile).stability
        grid = experiment.protocol_grid(config.betas, config.rates, config.between, config.gammas)
        assert sum(experiment.region_of(b, g) == "between" for b, g in grid) >= 5
        assert any(b >= 0.95 and g >= 0.95 for b, g in grid)
        assert sum(experiment.region_of(b, g) == "outside both" for b, g in grid) >= 2
        assert len(config.seeds) >= 3 and len(config.margin_seeds) >= 3 and len(config.learning_rates) >= 2


def test_training_updates_obey_the_bound_of_a_stable_pair() -> None:
    """Real training gradients, ε = 1e-8: ‖u_n‖_∞ ≤ B_n(β, γ) at every step; u_1 = sign(g) up to ε."""
    beta, gamma, steps = 0.9, 0.95, 60
    run = experiment.train_recording_updates(
        beta, gamma, 1e-2, experiment.TrainingSizes(steps=steps, corpus_chars=128, width=8, heads=1)
    )
    norms = np.asarray(run["update_inf_norms"])
    assert len(norms) == steps and not run["stopped"]
    assert norms[0] == pytest.approx(1.0, rel=1e-6)
    assert (norms <= np.asarray(stability.update_bound(beta, gamma, np.arange(1, steps + 1))) * (1 + 1e-9)).all()
    assert run["losses"][-1] < run["losses"][0]


def test_training_experiment_structure_and_outputs(tmp_path) -> None:
    result = analysis.training_experiment(
        points=[(0.5, 0.3), (0.9, 0.5), (0.9, 0.95)],
        learning_rates=(1e-2, 1e-3),
        seeds=(0, 1),
        sizes=experiment.TrainingSizes(steps=40, corpus_chars=128, width=8, heads=1),
    )
    json.dumps(result, allow_nan=False)
    assert len(result["rows"]) == 12 and result["seeds"] == [0, 1]
    for summary in result["per_learning_rate"]:
        assert summary["points"] == 3 and 0.0 <= summary["late_agreement_exact"] <= 1.0
        assert summary["predicted_unstable_exact"] == 1 and summary["predicted_unstable_paper"] == 2
    assert result["criterion"] == experiment.CRITERION and "neither β, γ nor either boundary" in result["criterion"]
    row = result["rows"][0]
    assert row["curve_every"] == 1 and len(row["update_inf_norms"]) == 40 and row["region"] in experiment.REGIONS
    classification, slopes = tmp_path / "classes.png", tmp_path / "slopes.png"
    plots.plot_classification(result, str(classification))
    plots.plot_slopes(None, analysis.growth_rates(result["rows"]), str(slopes))
    for path in (classification, slopes):
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000


def test_margin_runs_cell_holds_its_references() -> None:
    cell = experiment.margin_runs(
        [(0.9, 0.5), (0.9, 0.999)],
        1e-2,
        0,
        steps=3,
        batch_size=4,
        task_sizes={"corpus_chars": 2000, "context": 8, "width": 8, "heads": 1, "layers": 1},
    )
    assert len(cell["runs"]) == 2 and cell["runs"][0]["betas"] == [0.9, 0.5]
    assert 0 < cell["constant_predictor_loss"] < cell["untrained_validation_loss"]
    assert "train_loss_curve" not in cell["runs"][0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: experiment.switch_off_measurement([0.9], [0.5], window_steps=4), "window_steps must be"),
        (lambda: experiment.switch_off_experiment(point_limit=0), "point_limit must be"),
        (lambda: experiment.optimizer_updates(np.zeros((2, 2, 2)), [0.9], [0.5]), "inputs must have shape"),
        (lambda: experiment.full_batch_characters(8, 16), "need 1 <= context <= corpus_chars"),
        (lambda: experiment.TrainingSizes(steps=0), "steps must be an integer >= 1"),
        (lambda: experiment.growth_test([1.0] * 30, blocks=2), "blocks must be"),
        (lambda: experiment.growth_test([1.0] * 30, factor=0.5), "factor"),
        (lambda: profile_sizes("huge"), "profile must be one of"),
    ],
)
def test_bad_arguments_raise_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
