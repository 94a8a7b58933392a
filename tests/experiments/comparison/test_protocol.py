"""The protocol's search space, schedule, pairing (the k = 1 control ties AdamW exactly) and divergence
handling, on tiny workloads."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kadam.experiments.comparison.analysis import check_control_ties, outcome, select_best, summarize_arm
from kadam.experiments.comparison.protocol import (
    SearchSpace,
    _ScheduleAndClock,
    lr_multiplier,
    lr_only_trials,
    quasirandom_trials,
    train_trial,
)
from kadam.experiments.comparison.section import build_section, tuning_plan
from kadam.experiments.profiles import Settings, profile_sizes

NQM = {"dimension": 20}
HP = {"lr": 0.05, "beta": 0.9, "gamma": 0.999, "weight_decay": 0.01, "warmup_fraction": 0.1}


# ---------------------------------------------------------------------------------------------- search space


def test_sobol_trials_are_reproducible_and_cover_the_space():
    space = SearchSpace()
    first, again = quasirandom_trials(space, 16, seed=7), quasirandom_trials(space, 16, seed=7)
    assert first == again
    assert quasirandom_trials(space, 16, seed=8) != first
    assert quasirandom_trials(space, 5, seed=7) == first[:5]  # a smaller budget is a prefix of the same sequence
    lrs = np.array([t["lr"] for t in first])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-1 and lrs.max() / lrs.min() > 30
    for point in first:
        assert 0.7 <= point["beta"] <= 0.98 and 0.95 <= point["gamma"] <= 0.9999
        assert 1e-4 <= point["weight_decay"] <= 0.3 and 0.0 <= point["warmup_fraction"] <= 0.2
    # Sobol balance: each half of the unit interval of log-lr holds exactly half of 16 points
    unit = np.log(lrs / 1e-4) / np.log(1e3)
    assert np.sum(unit < 0.5) == 8


def test_search_space_rejects_narrow_or_invalid_ranges():
    with pytest.raises(ValueError, match="2 decades"):
        SearchSpace(lr=(1e-3, 5e-2))
    with pytest.raises(ValueError, match="warmup_fraction"):
        SearchSpace(warmup_fraction=(0.0, 1.0))
    with pytest.raises(ValueError, match="trials"):
        quasirandom_trials(SearchSpace(), 0)


def test_every_arm_gets_the_same_trials_equal_budget():
    config = profile_sizes("quick").comparison
    plan = tuning_plan(config)
    for workload in config.workloads:
        per_arm = {}
        for run in plan:
            if run.workload == workload.name and run.phase == "search":
                per_arm.setdefault(run.arm, []).append(run.cell.kwargs["hyperparameters"])
        assert set(per_arm) == set(workload.arms)
        budgets = list(per_arm.values())
        assert all(len(b) == config.trials * len(config.tuning_seeds) for b in budgets)
        assert all(b == budgets[0] for b in budgets)  # identical points, not transferred best values


def test_lr_only_trials_use_each_arms_defaults():
    adam, adamw = lr_only_trials(SearchSpace(), "adam", 4), lr_only_trials(SearchSpace(), "adamw", 4)
    assert [t["lr"] for t in adam] == [t["lr"] for t in adamw]
    assert {t["weight_decay"] for t in adam} == {0.0} and {t["weight_decay"] for t in adamw} == {0.01}
    assert {(t["beta"], t["gamma"]) for t in adamw} == {(0.9, 0.999)}


# ---------------------------------------------------------------------------------------------- schedule


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    steps, warmup = 200, 0.1
    values = [lr_multiplier(t, steps, warmup, 0.05) for t in range(1, steps + 1)]
    assert values[:20] == pytest.approx([t / 20 for t in range(1, 21)])  # linear to the peak at W = 20
    assert max(values) == 1.0
    decay = values[19:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert values[-1] == pytest.approx(0.05) and values[-1] <= 0.1
    assert lr_multiplier(110, steps, warmup, 0.0) == pytest.approx(0.5)  # cosine midpoint
    assert lr_multiplier(1, 10, 0.0, 0.0) < 1.0 and lr_multiplier(10, 10, 0.0, 0.0) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"final_lr_fraction": 0.2}, "final_lr_fraction"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"step": 0}, "step"),
    ],
)
def test_schedule_rejects_bad_input(kwargs, match):
    arguments = {"step": 1, "steps": 10, "warmup_fraction": 0.1, "final_lr_fraction": 0.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        lr_multiplier(**arguments)


def test_schedule_hook_sets_the_lr_the_optimizer_uses():
    weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([weight], lr=123.0)
    clock = _ScheduleAndClock(optimizer, 0.5, 10, 0.2, 0.1, window=5)
    seen = []
    for _ in range(10):
        weight.grad = torch.ones(1, dtype=torch.float64)
        before = weight.detach().clone()
        optimizer.step()
        seen.append(float(before - weight.detach()))  # SGD: the step is exactly the lr used
    clock.remove()
    assert seen == pytest.approx([0.5 * lr_multiplier(t, 10, 0.2, 0.1) for t in range(1, 11)], rel=1e-12)
    assert len(clock.window_seconds) == 2


# ---------------------------------------------------------------------------------------------- pairing


@pytest.mark.parametrize(
    "workload, sizes, steps", [("noisy-quadratic", NQM, 40), ("digits-cnn-bn", {"channels": 2}, 15)]
)
def test_control_ties_adamw_exactly(workload, sizes, steps):
    adamw = train_trial(workload, "adamw", HP, steps, 16, seed=3, sizes=sizes, curve_points=5)
    control = train_trial(workload, "kadam1", HP, steps, 16, seed=3, sizes=sizes, curve_points=5)
    assert control["curve"] == adamw["curve"] and control["test_loss"] == adamw["test_loss"]
    assert control["validation_loss"] == adamw["validation_loss"]
    assert check_control_ties([control], [adamw]) == 1
    other_seed = train_trial(workload, "adamw", HP, steps, 16, seed=4, sizes=sizes, curve_points=5)
    assert other_seed["test_loss"] != adamw["test_loss"]  # the seed does change the run


def test_broken_pairing_is_caught():
    adamw = train_trial("noisy-quadratic", "adamw", HP, 20, 8, seed=0, sizes=NQM, curve_points=5)
    perturbed = {**adamw, "arm": "kadam1", "test_loss": adamw["test_loss"] + 1e-7}
    with pytest.raises(AssertionError, match="pairing is broken"):
        check_control_ties([perturbed], [adamw])


def test_train_trial_is_deterministic_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    first = train_trial("noisy-quadratic", "kadam2", HP, 30, 8, seed=1, sizes=NQM, curve_points=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = train_trial("noisy-quadratic", "kadam2", HP, 30, 8, seed=1, sizes=NQM, curve_points=5)
    timing = {"seconds", "training_seconds", "seconds_per_step", "curve_seconds"}
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
    assert first["steps_done"] == 30 and first["curve_steps"] == [6, 12, 18, 24, 30]


def test_train_trial_rejects_bad_input():
    with pytest.raises(ValueError, match="missing warmup_fraction"):
        train_trial("noisy-quadratic", "adamw", {k: v for k, v in HP.items() if k != "warmup_fraction"}, 5, 4, 0, NQM)
    with pytest.raises(ValueError, match="arm must be one of"):
        train_trial("noisy-quadratic", "sgd", HP, 5, 4, 0, NQM)
    with pytest.raises(ValueError, match="workload must be one of"):
        train_trial("imagenet", "adamw", HP, 5, 4, 0)


# ---------------------------------------------------------------------------------------------- divergence


def test_a_diverged_run_is_an_outcome_not_a_gap():
    blown = train_trial(
        "noisy-quadratic", "adam", {**HP, "lr": 1e30, "warmup_fraction": 0.0}, 20, 8, seed=0, sizes=NQM, curve_points=10
    )
    assert blown["diverged"] and blown["test_loss"] is None and math.isfinite(blown["initial_test_loss"])
    assert outcome(blown) == blown["initial_test_loss"]  # enters the statistics as "no training"
    fine = train_trial("noisy-quadratic", "adam", HP, 20, 8, seed=1, sizes=NQM, curve_points=10)
    summary = summarize_arm([blown, fine], target=fine["curve"][-1])
    assert summary["diverged"] == 1 and summary["test_loss"]["n"] == 2
    assert summary["test_loss"]["max"] == blown["initial_test_loss"]
    assert summary["target_reached"] == 1  # a diverged run never reaches the target
    best = select_best([{**blown, "trial": 0}, {**fine, "trial": 1}])
    assert best["trial"] == 1 and best["diverged_trials"] == 1


def test_all_trials_diverged_selects_the_first_and_says_so():
    run = {"validation_loss": None, "diverged": True, "hyperparameters": HP}
    best = select_best([{**run, "trial": 1}, {**run, "trial": 0}])
    assert best["trial"] == 0 and best["validation_loss"] is None and best["diverged_trials"] == 2


def test_section_end_to_end_on_the_smoke_profile(tmp_path):
    section = build_section(Settings(profile="smoke", device="cpu", seeds=None))
    config = profile_sizes("smoke").comparison
    results = {cell.key: train_trial(**cell.kwargs) for cell in section.cells}
    while new := [cell for cell in section.followup(results) if cell.key not in results]:  # stage 2, then evaluation
        results.update({cell.key: train_trial(**cell.kwargs) for cell in new})
    document = section.finish(results, tmp_path)
    analysis = document.data["analysis"]
    entry = analysis["workloads"]["noisy-quadratic"]
    refined = len(config.refinement_factors)
    assert analysis["control_pairs_checked"] == config.trials + refined + config.lr_only_trials + 2 * config.seeds
    assert all(len(runs) == config.trials + refined for runs in entry["search"]["trials"].values())
    assert set(entry["search"]["two_stage"]) == {"adamw", "kadam1", "kadam2"}
    assert entry["search"]["versus_reference"]["kadam1"]["mean"] == 0.0
    assert entry["search"]["versus_reference"]["kadam1"]["std"] == 0.0
    assert [(i["workload"], i["arm"]) for i in analysis["families"]["search"]] == [("noisy-quadratic", "kadam2")]
    assert "p_holm" in entry["search"]["versus_reference"]["kadam2"]
    assert entry["sensitivity"]["adamw"]["factor"] == [0.1, 1.0]
    assert entry["search"]["lr_ratio_to_reference"]["kadam1"] == 1.0
    assert len(document.figures) == 5 and all((tmp_path / Path(f.path).name).exists() for f in document.figures)
    assert any("smaller than" in finding for finding in document.findings)  # the resolution statement
    assert any(finding.startswith("Two-stage tuning:") for finding in document.findings)
    assert [len(table.rows) for table in document.tables] == [3, 3]
