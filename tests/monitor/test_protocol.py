"""The monitor's validation protocol: the outcome rule, the split, the detectors and the scores on hand-made
records (brute force), the replay against the live monitor on a real run, and the section end to end."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from kadam.experiments.monitor import analysis, protocol, section
from kadam.experiments.monitor.section import build_section, mcnemar, monitor_claims
from kadam.experiments.profiles import profile_sizes
from kadam.monitor import StabilityMonitor, Thresholds
from kadam.monitor.monitor import global_grad_norm


def test_instability_is_nonfinite_twice_the_running_minimum_or_a_lost_lesson() -> None:
    losses = [5.0, 4.0, 3.0, 2.0, 3.9, 4.1, 1.0]
    assert protocol.instability_step(losses, start=0, window=1) == 6  # 4.1 > 2 × 2.0 (3.9 is not)
    assert protocol.instability_step(losses, start=0) is None  # medians of 5 never double
    assert protocol.instability_step([3.0, 2.0, math.nan], start=1) == 3
    single = [4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 2.5, 1.0, 1.0, 1.0]
    assert protocol.instability_step(single, start=0) is None  # one unlucky batch is not an instability
    # learned (running minimum 1.5 < 0.8 × 2.3), then back above the loss of ignoring the inputs: a failure,
    # although the medians never double
    collapse = [2.3, 1.9, 1.6, 1.5, 1.5, 1.5, 2.4, 2.4, 2.4, 2.4]
    assert protocol.instability_step(collapse, start=0) is None
    assert protocol.instability_step(collapse, start=0, constant_loss=2.3) == 9
    assert protocol.instability_step([2.3] * 10 + [2.4] * 5, start=0, constant_loss=2.3) is None  # never learned


def record(
    family: str,
    arm: str,
    losses: list[float],
    *,
    workload: str = "digits-cnn",
    seed: int = 1,
    intervention: str = "none",
    grads: list[float] | None = None,
    ratios: list[float | None] | None = None,
    constant: float = 2.0,
) -> dict:
    """A hand-made run record with the outcome fields computed as validation_run computes them."""
    n = len(losses)
    spec = {"workload": workload, "family": family, "arm": arm, "seed": seed, "steps": n, "intervention": intervention}
    onset = protocol.instability_step(losses, 1, constant)
    return {
        "spec": spec,
        "split": protocol.split_of(workload, family, seed),
        "constant_loss": constant,
        "losses": losses,
        "grad_norms": grads or [1.0] * n,
        "update_ratios": [0.01] * n,
        "monitor_update_ratio": ratios or [0.01] * n,
        "curvature": [None] * n,
        "edge": [38.0] * n,
        "clip_rms": [0.5] * n,
        "instability_step": protocol.instability_step(losses, protocol.SETTLE, constant),
        "onset_step": onset,
        "sudden": bool(onset is not None and protocol._sudden(losses, onset)),
        "monitor_events": [],
    }


HEALTHY = [3.0, 2.5] + [1.0] * 78
RAMP = [3.0, 2.5] + [1.0] * 48 + [1.0 + 0.1 * i for i in range(30)]  # a loss that climbs: developing
JUMP = [3.0, 2.5] + [1.0] * 58 + [5.0] * 20  # flat, then at once far above: sudden


def test_the_outcome_is_the_runs_not_the_arms() -> None:
    assert protocol.outcome(record("lr", "failing", HEALTHY)) == "healthy"  # set to fail, trained: healthy
    assert protocol.outcome(record("lr", "healthy", RAMP)) == "failed"
    assert protocol.outcome(record("lr", "healthy", [2.5] * 80)) == "untrained"  # not below the constant loss
    ramp, jump = record("ramp", "failing", RAMP), record("jump", "failing", JUMP)
    assert not ramp["sudden"] and jump["sudden"] and jump["onset_step"] == 63


def test_the_split_is_declared_by_workload_family_and_seed() -> None:
    assert protocol.split_of("mnist1d-mlp", "ramp", 1) == "development"
    assert protocol.split_of("mnist1d-mlp", "ramp", 11) == "development"  # development whatever the seed
    assert protocol.split_of("char-transformer", "jump", 1) == "seen"  # a held-out family, a seed run before
    assert protocol.split_of("char-transformer", "jump", 11) == "held-out"  # ... and with a reserved seed
    assert protocol.split_of("digits-cnn", "ramp", 3) == "seen"  # a held-out workload
    assert protocol.split_of("digits-cnn", "ramp", 12) == "held-out"
    assert protocol.split_of("digits-cnn-bn", "lr", 1) == "held-out"  # a workload no earlier version ran
    assert not set(protocol.SEEN_SEEDS) & set(protocol.HELD_OUT_SEEDS)
    held_out_workloads = set(protocol.WORKLOADS) - set(protocol.DEVELOPMENT_WORKLOADS)
    held_out_families = set(protocol.FAMILIES) - set(protocol.DEVELOPMENT_FAMILIES)
    assert len(held_out_workloads) >= 2 and len(held_out_families) >= 2


def test_the_full_profile_scores_fresh_held_out_runs_with_reserved_seeds_only() -> None:
    config = dataclasses.replace(profile_sizes("full").monitor, seen_seeds=(1,))
    cells = section.run_cells(config, "cpu")
    splits = {protocol.split_of(c.kwargs["workload"], c.kwargs["family"], c.kwargs["seed"]) for c in cells}
    assert splits == {"development", "held-out", "seen"}
    for c in cells:
        split = protocol.split_of(c.kwargs["workload"], c.kwargs["family"], c.kwargs["seed"])
        if split == "seen":
            assert c.kwargs["intervention"] == "none"  # seen runs are shown for comparison only
        if split == "development" and c.kwargs["intervention"] != "none":
            assert c.kwargs["intervention"] in config.development_interventions
    with pytest.raises(ValueError, match="held_out_seeds"):
        section.run_cells(dataclasses.replace(config, held_out_seeds=(1,)), "cpu")


def test_score_reads_recall_at_the_lead_sudden_flags_and_healthy_warnings() -> None:
    ratios_early = [0.01] * 39 + [5.0] + [0.01] * 40  # the update-rise check fires at step 40 (recorded)
    runs = [
        record("ramp", "failing", RAMP, ratios=ratios_early),  # warned at 40, long before its event
        record("ramp", "failing", RAMP),  # never warned
        record("jump", "failing", JUMP, grads=[1.0] * 62 + [math.inf] + [1.0] * 17),  # flagged at its onset
        record("lr", "healthy", HEALTHY, ratios=ratios_early),  # a false alarm
        record("lr", "healthy", HEALTHY),
        record("lr", "healthy", HEALTHY, intervention="guard"),  # interventions are not scored here
    ]
    scores = analysis.score(runs)
    assert (scores["runs"], scores["developing"], scores["sudden"], scores["healthy"]) == (5, 2, 1, 2)
    monitor = scores["detectors"]["monitor"]
    assert (monitor["caught"], monitor["sudden_flagged"], monitor["healthy_warned"]) == (1, 1, 1)
    assert monitor["recall_interval"][0] < 0.5 < monitor["recall_interval"][1]
    lead = runs[0]["instability_step"] - 40
    assert lead >= protocol.LEAD and monitor["lead_quartiles"] == [lead] * 3
    quiet = analysis.score(runs, dataclasses.replace(protocol.MONITOR_THRESHOLDS, update_ratio=None, update_rise=None))
    assert quiet["detectors"]["monitor"]["caught"] == 0


def test_the_loss_spike_baseline_is_llm_foundrys_rule() -> None:
    """> 2× the mean of the last 100 losses, for more than ``patience`` = 4 steps in a row."""
    losses = [1.0] * 100 + [2.5] * 4 + [1.0] + [2.5] * 5
    assert analysis._loss_spike(losses) == [110]
    # the window fills at step 100 (with the first 5.0 in it): outliers from 101 on, the fifth in a row at 105
    assert analysis._loss_spike([1.0] * 99 + [5.0] * 10) == [105, 106, 107, 108, 109]
    assert analysis._grad_spike([1.0] * 20 + [5.1, 4.9, math.inf]) == [21, 23]


def test_choose_thresholds_takes_most_failures_caught_within_the_false_alarm_budget() -> None:
    ratios_late = [0.01] * 49 + [2.0] + [0.01] * 30
    runs = [record("ramp", "failing", RAMP, workload="mnist1d-mlp", ratios=ratios_late)] + [
        record("lr", "healthy", HEALTHY, workload="mnist1d-mlp", seed=s) for s in range(25)
    ]
    runs.append(
        record("lr", "healthy", HEALTHY, workload="mnist1d-mlp", seed=99, ratios=[0.01] * 9 + [0.6] + [0.01] * 70)
    )
    chosen, table = analysis.choose_thresholds(runs)
    scores = analysis.score(runs, chosen)
    assert scores["detectors"]["monitor"]["caught"] == 1 and scores["detectors"]["monitor"]["healthy_warned"] <= 1
    assert (chosen.update_ratio or 0.0) > 0.6 or chosen.update_ratio is None  # 0.5 would warn the 0.6 run
    assert {row["caught"] for row in table} == {0, 1} and len(table) == math.prod(
        len(values) for values in analysis.SELECTION_GRID.values()
    )


def test_guard_scores_rescue_against_the_healthy_band_and_pair_healthy_runs_by_seed() -> None:
    failed = record("ramp", "failing", RAMP)
    rescued = record("ramp", "failing", HEALTHY, intervention="guard")
    healthy = [record("lr", "healthy", HEALTHY, seed=s) for s in (1, 2, 3)]
    guarded = [
        record("lr", "healthy", [v + 0.01 * s for v in HEALTHY], seed=s, intervention="guard") for s in (1, 2, 3)
    ]
    scores = analysis.guard_scores([failed, rescued, *healthy, *guarded])
    guard = scores["interventions"]["guard"]
    assert (guard["failures"], guard["rescued"]) == (1, 1) and "clip" not in scores["interventions"]
    pooled = guard["healthy_paired"]["all"]
    assert pooled["pairs"] == 3 and pooled["mean"] == pytest.approx(0.02)
    assert pooled["interval"][0] < 0.02 < pooled["interval"][1]


def test_mcnemar_and_the_claims_read_the_same_runs() -> None:
    ratios_early = [0.01] * 39 + [5.0] + [0.01] * 40
    runs = [record("ramp", "failing", RAMP, ratios=ratios_early, seed=s) for s in range(20)]
    runs += [record("lr", "healthy", HEALTHY, seed=s) for s in range(20)]
    rows = mcnemar(runs)
    assert rows["loss_spike"]["only_monitor"] == 20 and rows["loss_spike"]["only_baseline"] == 0
    assert rows["loss_spike"]["better"] is True
    claims = monitor_claims(analysis.score(runs), rows, analysis.guard_scores(runs), seeds=3)
    assert all(
        c.verdict == "not resolved at this budget"
        for c in monitor_claims(analysis.score(runs), rows, analysis.guard_scores(runs), seeds=1)
    )
    # 20/20 caught: exact interval 83–100%, above 80%; 0/20 healthy warned: up to 17%, not within 5%
    assert claims[0].verdict == "confirmed" and claims[2].verdict == "not resolved at this budget"
    claims = monitor_claims(
        analysis.score(runs[:8] + runs[20:]), mcnemar(runs[:8] + runs[20:]), {"interventions": {}}, seeds=3
    )
    assert claims[0].verdict == "not resolved at this budget"  # 8/8: the interval reaches down to 63%


def test_the_replay_is_what_the_live_monitor_warns() -> None:
    """A default-attached monitor (every 10 steps, default thresholds) on a learning-rate ramp, and the replay of
    its running checks from an every-step monitor's series: the same warning steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.06**i)
    series = StabilityMonitor(
        optimizer, every=1, warn=False, thresholds=Thresholds(update_ratio=None, update_rise=None)
    )
    live = StabilityMonitor(optimizer, warn=False)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    losses, grads = [], []
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        grads.append(float(global_grad_norm([p.grad for p in model.parameters()])))
        live.observe_loss(loss)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
    history = series.history
    table = history.values[:, :, history.quantities.index("update_param_ratio")]
    run = {
        "losses": losses,
        "grad_norms": grads,
        "monitor_update_ratio": [float(max(row)) for row in table],
        "curvature": list(history.model["curvature"]),
        "edge": list(history.model["edge"]),
    }
    live_steps = sorted({e.step for e in live.events if e.kind == "running"})
    assert live_steps, "the ramp should make the default monitor warn"
    assert analysis.monitor_warnings(run) == live_steps


def test_smoke_section_runs_end_to_end(tmp_path: Path) -> None:
    class Settings:
        profile, device, seeds = "smoke", "cpu", None

    section = build_section(Settings())
    config = profile_sizes("smoke").monitor
    # both arms; each intervention on the failing run and on the healthy pair's seeds (with their plain twins)
    assert len(section.cells) == 2 + len(config.interventions) * (1 + len(config.pair_seeds))
    results = {cell.key: cell.function(**cell.kwargs) for cell in section.cells}
    document = section.finish(results, tmp_path)
    assert document.tables[0].rows and document.claims
    run = results[section.cells[0].key]
    assert len(run["losses"]) <= config.steps and len(run["lrs"]) == len(run["losses"])


def test_unknown_family_or_intervention_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="family must be one of"):
        protocol.validation_run("mnist1d-mlp", "temperature", "failing", 0, 5, 4, {"hidden": 8, "depth": 1})
    with pytest.raises(ValueError, match="intervention must be one of"):
        protocol.validation_run("mnist1d-mlp", "lr", "failing", 0, 5, 4, {"hidden": 8, "depth": 1}, "prayer")
