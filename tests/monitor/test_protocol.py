"""The monitor's validation protocol: the instability definition, the baselines and the scoring, on
hand-made records (brute force), and one tiny real run through the section's cell."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kadam.experiments.monitor import protocol
from kadam.experiments.monitor.section import build_section, summarize
from kadam.experiments.profiles import profile_sizes


def test_instability_step_is_nonfinite_or_twice_the_running_minimum() -> None:
    losses = [5.0, 4.0, 3.0, 2.0, 3.9, 4.1, 1.0]
    assert protocol.instability_step(losses, start=0, window=1) == 6  # 4.1 > 2 × 2.0 (3.9 is not)
    assert protocol.instability_step(losses, start=6, window=1) is None
    assert protocol.instability_step(losses, start=0) is None  # medians of 5: 5, 4.5, 4, 3.5, 3.9, 3.9, 3.0
    assert protocol.instability_step([3.0, 2.0, math.nan], start=1) == 3
    assert protocol.instability_step([3.0, 9.0, 2.5], start=1, window=1) == 2
    assert protocol.instability_step([3.0, 10.0, 2.5], start=1) == 2  # median of (3, 10) = 6.5 > 2 × 3


def test_one_unlucky_batch_is_not_an_instability_but_a_lasting_rise_is() -> None:
    """The median of the last 5 losses against twice its running minimum: a single batch at 2.5× the
    minimum does not count, three in a row do (at the step where they are the median's majority)."""
    single = [4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 2.5, 1.0, 1.0, 1.0]
    assert protocol.instability_step(single, start=0, window=1) == 7
    assert protocol.instability_step(single, start=0) is None
    lasting = [4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]
    assert protocol.instability_step(lasting, start=0) == 9  # median(1, 1, 3, 3, 3) = 3 > 2 × 1
    assert protocol.instability_step([math.nan, 2.0, 2.0], start=1) is None  # before start: not counted


def test_failures_whose_onset_is_within_the_lead_are_left_out_of_recall() -> None:
    early = {**record("lr", "failing", 21, [5], []), "onset_step": 3}
    late = {**record("ramp", "failing", 80, [60], []), "onset_step": 80}
    scores = protocol.score([early, late, record("lr", "healthy", None, [], [])])
    assert scores["failures"] == 1 and scores["failures_with_onset_before_lead"] == 1
    assert scores["detectors"]["monitor"]["recall"] == 1.0 and scores["detectors"]["monitor"]["per_knob"] == {
        "ramp": {"failures": 1, "caught": 1}}


def test_the_default_monitor_leaves_spike_factor_events_out() -> None:
    run = {"spec": {"knob": "silence", "arm": "healthy"}, "instability_step": None,
           "monitor_events": [{"step": 40, "quantity": "spike_factor"}, {"step": 50, "quantity": "gamma"}],
           "baselines": {"grad_norm_spike": [], "update_param_ratio": []}}
    warned = protocol.warning_steps(run)
    assert warned["monitor"] == [50] and warned["monitor_with_spike_factor"] == [40, 50]
    assert warned["monitor_without_sharpness"] == [50]


def test_baselines_against_their_definitions() -> None:
    window = protocol.GRAD_WINDOW
    grads = [1.0] * window + [protocol.GRAD_SPIKE_FACTOR * 1.01, 1.0, math.inf]
    ratios = [0.0, protocol.UPDATE_RATIO * 2, protocol.UPDATE_RATIO / 2, math.nan]
    warned = protocol.baseline_warnings(grads, ratios)
    assert warned["grad_norm_spike"] == [window + 1, window + 3]
    assert warned["update_param_ratio"] == [2, 4]


def record(knob: str, arm: str, event: int | None, monitor_steps: list[int], grad_steps: list[int],
           final: float = 1.0) -> dict:
    """A hand-made run record; ``final`` is its training loss over the last steps (the constant predictor's is 2)."""
    return {"spec": {"task": "mnist1d-mlp", "knob": knob, "arm": arm, "steps": 12}, "instability_step": event,
            "losses": [3.0, 2.5] + [final] * 10, "constant_loss": 2.0,
            "monitor_events": [{"step": s, "quantity": "gamma" if s == 0 else "sharpness"} for s in monitor_steps],
            "baselines": {"grad_norm_spike": grad_steps, "update_param_ratio": []}}


def test_score_counts_recall_at_lead_lead_times_and_false_alarms() -> None:
    runs = [
        record("lr", "failing", 50, [0, 45], [49]),        # monitor lead 50: caught; grad lead 1: not
        record("lr", "failing", 50, [45], []),             # lead 5 < 10: not caught
        record("region", "failing", None, [0], []),        # set to fail, did not: no recall, no false alarm
        record("lr", "healthy", None, [3, 7], [9]),        # 2 monitor warnings
        record("lr", "healthy", None, [], []),
        record("region", "healthy", 30, [], []),           # a healthy-arm run that failed
    ]
    scores = protocol.score(runs)
    assert (scores["failures"], scores["healthy"]) == (2, 2)
    assert scores["failing_arm_without_event"] == 1 and scores["healthy_arm_with_event"] == 1
    monitor = scores["detectors"]["monitor"]
    assert monitor["recall"] == 0.5 and monitor["lead_times"] == [5, 50]
    assert monitor["false_alarms_per_healthy_run"] == 1.0 and monitor["healthy_runs_warned"] == 0.5
    assert monitor["healthy_warned"] == 1
    grad = scores["detectors"]["grad_norm_spike"]
    assert grad["recall"] == 0.0 and grad["lead_times"] == [1] and grad["healthy_runs_warned"] == 0.5
    table = summarize(scores)
    assert table.rows[0][1] == "1/2 (50%)"
    without = scores["detectors"]["monitor_without_sharpness"]  # only the step-0 (γ) warnings remain
    assert without["recall"] == 0.5 and without["lead_times"] == [50] and without["healthy_runs_warned"] == 0.0


def test_healthy_arm_runs_that_did_not_train_are_not_false_alarms() -> None:
    """A healthy-arm run whose final loss is not below the constant predictor's learned nothing from its inputs:
    it is counted apart, and its warnings are not false alarms."""
    runs = [record("warmup", "healthy", None, [15], [], final=2.0),   # at the constant predictor: not trained
            record("warmup", "healthy", None, [15], [], final=1.99),  # just below: trained, warned
            record("lr", "healthy", None, [], []),
            {**record("lr", "healthy", None, [], []), "losses": [3.0, 1.0]}]  # stopped early: not trained
    assert [protocol.trained(r) for r in runs] == [False, True, True, False]
    assert protocol.final_loss(runs[0]) == 2.0 and math.isnan(protocol.final_loss({"losses": [1.0, math.nan]}))
    scores = protocol.score(runs)
    assert scores["healthy"] == 2 and scores["healthy_arm_not_trained"] == 2
    assert scores["detectors"]["monitor"]["healthy_runs_warned"] == 0.5
    from kadam.experiments.monitor.section import untrained_finding
    text = untrained_finding(runs)
    assert "knob warmup: 1 (final loss 2 against 2; 1 warned" in text and "knob lr: 1" in text


def test_smoke_section_runs_end_to_end(tmp_path: Path) -> None:
    class Settings:
        profile, device, seeds = "smoke", "cpu", None

    section = build_section(Settings())
    assert len(section.cells) == 2 * len(profile_sizes("smoke").monitor.seeds)
    results = {}
    for cell in section.cells:
        results[cell.key] = cell.function(**cell.kwargs)
    document = section.finish(results, tmp_path)
    assert document.tables[0].rows and "failed by the definition" in document.findings[0]
    run = results[section.cells[0].key]
    assert len(run["losses"]) <= profile_sizes("smoke").monitor.steps and run["recorded_steps"][0] == 1


def test_the_sharpness_factor_sweep_recomputes_the_monitors_own_rule(tmp_path: Path) -> None:
    """At ×1 the recomputed sharpness warnings are the monitor's own events, step for step, on a real run; a
    higher multiple keeps a subset; the sweep scores each multiple like :func:`protocol.score`."""
    sizes = profile_sizes("smoke").monitor.tasks["mnist1d-mlp"]
    run = protocol.monitored_run("mnist1d-mlp", "lr", "healthy", 1, 40, 16, sizes)
    own = sorted(e["step"] for e in run["monitor_events"] if e["quantity"] == "sharpness")
    estimates = [(step, v) for step, v in zip(run["recorded_steps"], run["sharpness"]) if v is not None]
    assert len(estimates) == 40 // protocol.SHARPNESS_EVERY
    recomputed = protocol.with_sharpness_factor(run, 1.0)
    assert sorted(e["step"] for e in recomputed["monitor_events"] if e["quantity"] == "sharpness") == own
    largest = max(v for _, v in estimates) / run["sharpness_threshold"]
    stricter = protocol.with_sharpness_factor(run, 2 * max(largest, 1.0))
    assert [e for e in stricter["monitor_events"] if e["quantity"] == "sharpness"] == []
    failing = {**record("lr", "failing", 50, [], []), "sharpness_threshold": 1.0, "recorded_steps": [10, 30, 45],
               "sharpness": [0.5, 3.0, 20.0]}
    healthy = {**record("lr", "healthy", None, [], []), "sharpness_threshold": 1.0, "recorded_steps": [10, 20],
               "sharpness": [1.5, None]}
    rows = protocol.sharpness_factor_sweep([failing, healthy], factors=(1.0, 2.5, 10.0))
    assert [(r["caught"], r["healthy_runs_warned"]) for r in rows] == [(1, 1.0), (1, 0.0), (0, 0.0)]
    # ×10: only the estimate at step 45 is above, 5 steps before the event: too late to count


def test_unknown_knob_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="knob must be one of"):
        protocol.monitored_run("mnist1d-mlp", "temperature", "failing", 0, 5, 4, {"hidden": 8, "depth": 1})


def test_the_sharpness_finding_contrasts_rates_above_and_below_the_edge() -> None:
    from kadam.experiments.monitor.section import sharpness_finding

    def run(lr, ratios, final, threshold=38.0):
        return {"lr": lr, "sharpness": [r * threshold for r in ratios], "sharpness_threshold": threshold,
                "share_above": sum(r > 1 for r in ratios) / len(ratios), "losses": [4.0, final]}

    text = sharpness_finding([run(1e-3, [0.01, 0.02], 3.0), run(1e-2, [0.1, 0.08], 2.3), run(1e-1, [3.0, 50.0], 3.1)])
    assert "lr 0.1: median 50× the edge, 100% of estimates above, final loss 3.1" in text
    assert "(0.1) train worse than a smaller rate" in text
    text = sharpness_finding([run(1e-3, [0.01], 3.0), run(1e-1, [3.0], 2.0)])
    assert "do not all train worse" in text
    assert "No rate's run sits above" in sharpness_finding([run(1e-3, [0.01], 3.0)])
