"""Two-stage tuning: the same budget for every arm, the lr refinement centred on each arm's stage-1 best point,
and the selection over both stages (on validation), checked on planned runs with hand-set validation losses."""

from dataclasses import replace

import pytest

from kadam.experiments.comparison.analysis import analyse, two_stage_change
from kadam.experiments.comparison.config import ComparisonConfig, WorkloadConfig
from kadam.experiments.comparison.protocol import refinement_trials
from kadam.experiments.comparison.section import (
    _two_stage_findings,
    followup_cells,
    followup_plan,
    refinement_plan,
    tagged_records,
    tuning_plan,
    two_stage_changes,
)

ARMS = ("adamw", "kadam2", "adamw-equal-betas")
CONFIG = ComparisonConfig(
    workloads=(WorkloadConfig("noisy-quadratic", 10, 4, ARMS, (("dimension", 5),), lr_only=False),),
    trials=4,
    lr_only_trials=0,
    seeds=2,
    tuning_seeds=(0, 1),
    sensitivity_factors=(),
    refinement_factors=(0.25, 0.5, 2.0, 4.0),
)


def _run(cell, validation_loss):
    kwargs = cell.kwargs
    return {
        "workload": kwargs["workload"],
        "arm": kwargs["arm"],
        "seed": kwargs["seed"],
        "hyperparameters": kwargs["hyperparameters"],
        "validation_loss": validation_loss,
        "test_loss": validation_loss,
        "initial_test_loss": 10.0,
        "diverged": False,
        "curve": [validation_loss],
        "curve_steps": [kwargs["steps"]],
        "curve_seconds": [0.1],
        "seconds_per_step": 0.01,
        "test_accuracy": None,
    }


def _stage1_results(best_trial):
    """Stage-1 results where each arm's trial ``best_trial[arm]`` has the lowest validation loss."""
    return {
        p.cell.key: _run(p.cell, 1.0 if p.trial == best_trial[p.arm] else 2.0 + p.trial) for p in tuning_plan(CONFIG)
    }


def test_refinement_trials_multiply_the_lr_only():
    best = {"lr": 0.01, "beta": 0.9, "gamma": 0.99, "weight_decay": 0.1, "warmup_fraction": 0.05}
    points = refinement_trials(best, (0.5, 2.0))
    assert [p["lr"] for p in points] == [0.005, 0.02]
    assert all(
        {k: v for k, v in p.items() if k != "lr"} == {k: v for k, v in best.items() if k != "lr"} for p in points
    )
    for factors in ((1.0, 2.0), (2.0, 2.0), (0.0,), (float("inf"),)):
        with pytest.raises(ValueError, match="refinement factors"):
            refinement_trials(best, factors)


def test_every_arm_gets_the_same_budget_and_a_refinement_centred_on_its_stage1_best():
    best_trial = {"adamw": 1, "kadam2": 3, "adamw-equal-betas": 0}
    results = _stage1_results(best_trial)
    stage1 = tuning_plan(CONFIG)
    stage2 = refinement_plan(CONFIG, results)
    budgets = {arm: (sum(p.arm == arm for p in stage1), sum(p.arm == arm for p in stage2)) for arm in ARMS}
    per_seed = len(CONFIG.tuning_seeds)
    assert set(budgets.values()) == {(CONFIG.trials * per_seed, len(CONFIG.refinement_factors) * per_seed)}
    for arm in ARMS:
        centre = next(p for p in stage1 if p.arm == arm and p.trial == best_trial[arm]).cell.kwargs["hyperparameters"]
        refined = [p for p in stage2 if p.arm == arm]
        assert {p.trial for p in refined} == set(range(CONFIG.trials, CONFIG.trials + len(CONFIG.refinement_factors)))
        ratios = sorted({round(p.cell.kwargs["hyperparameters"]["lr"] / centre["lr"], 9) for p in refined})
        assert ratios == list(CONFIG.refinement_factors)
        for p in refined:
            assert {k: v for k, v in p.cell.kwargs["hyperparameters"].items() if k != "lr"} == {
                k: v for k, v in centre.items() if k != "lr"
            }
    # the tied arm runs γ := β at every point of both stages
    assert all(
        p.cell.kwargs["hyperparameters"]["gamma"] == p.cell.kwargs["hyperparameters"]["beta"]
        for p in stage1 + stage2
        if p.arm == "adamw-equal-betas"
    )
    # evaluation waits for the whole second stage
    assert [p.phase for p in followup_cells(CONFIG, results)] == ["refine"] * len(stage2)


@pytest.mark.parametrize("refined_wins", [True, False])
def test_selection_is_over_both_stages_on_validation(refined_wins):
    best_trial = {"adamw": 2, "kadam2": 0, "adamw-equal-betas": 1}
    results = _stage1_results(best_trial)
    stage2 = refinement_plan(CONFIG, results)
    winner = CONFIG.trials + 2  # the lr × 2 point
    for p in stage2:
        results[p.cell.key] = _run(p.cell, 0.5 if refined_wins and p.trial == winner else 3.0)
    plan = followup_plan(CONFIG, results)
    assert {p.phase for p in followup_cells(CONFIG, results)} == {"refine", "evaluate_search"}
    for arm in ARMS:
        evaluated = {p.trial for p in plan if p.arm == arm and p.phase == "evaluate_search"}
        assert evaluated == {winner if refined_wins else best_trial[arm]}
    for p in plan:
        results[p.cell.key] = _run(p.cell, 1.0)
    analysis = analyse(tagged_records(tuning_plan(CONFIG) + stage2 + plan, results))
    block = analysis["workloads"]["noisy-quadratic"]["search"]
    for arm in ARMS:
        change = block["two_stage"][arm]
        assert change["stage1_trial"] == best_trial[arm] and change["moved"] is refined_wins
        assert block["selection"][arm]["trial"] == (winner if refined_wins else best_trial[arm])
        assert change["lr"] == pytest.approx(change["stage1_lr"] * (2.0 if refined_wins else 1.0))
    assert sum(c["moved"] for c in two_stage_changes(analysis)) == (len(ARMS) if refined_wins else 0)
    (finding,) = _two_stage_findings(analysis)
    if refined_wins:
        assert f"moved the selection for {len(ARMS)} of {len(ARMS)}" in finding and "lr × 2:" in finding
    else:
        assert "for 0 of 3 arm–workload pairs; every selection is a stage-1 point" in finding


def test_one_stage_when_there_are_no_refinement_factors():
    config = replace(CONFIG, refinement_factors=())
    results = _stage1_results({"adamw": 0, "kadam2": 0, "adamw-equal-betas": 0})
    assert refinement_plan(config, results) == []
    assert {p.phase for p in followup_cells(config, results)} == {"evaluate_search"}


def test_two_stage_change_reports_a_move_only_when_stage_2_wins():
    runs = [
        {"trial": 0, "stage": 1, "validation_loss": 1.0, "diverged": False, "hyperparameters": {"lr": 0.1}},
        {"trial": 1, "stage": 2, "validation_loss": 1.0, "diverged": False, "hyperparameters": {"lr": 0.2}},
    ]
    assert two_stage_change(runs)["moved"] is False  # a tie keeps the earlier (stage-1) trial
    runs[1]["validation_loss"] = 0.9
    assert two_stage_change(runs) == {
        "stage1_trial": 0,
        "stage1_validation_loss": 1.0,
        "stage1_lr": 0.1,
        "trial": 1,
        "validation_loss": 0.9,
        "lr": 0.2,
        "moved": True,
    }
