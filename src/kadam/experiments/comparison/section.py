"""The comparison section: which runs the protocol needs (cells), in three phases, and the report it writes.

Phase 1 (:func:`tuning_plan`): every arm trains each workload at the same ``trials`` Sobol points of the
shared search space (and, where enabled, ``lr_only_trials`` learning rates at the arm's defaults), on the
tuning seeds. Phase 2 (:func:`refinement_plan`, from phase 1's results): the second tuning stage, each arm's
stage-1 best point with its lr times each ``refinement_factors``. Phase 3 (:func:`followup_plan`, from
phases 1 and 2): each arm's best configuration of each result (the full search selected over both stages)
on the fresh evaluation seeds, and the lr sensitivity sweep (the best configuration with its lr multiplied
by ``sensitivity_factors``) on the tuning seeds. :func:`followup_cells` gives the runner the cells of phases 2
and 3 that the results it has allow (it is called until it asks for nothing new). :func:`kadam.experiments.comparison.
analysis.analyse` turns the tagged runs into the report's numbers. ``kadam compare`` runs the same plan on
one workload.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kadam.experiments.cells import Cell
from kadam.experiments.comparison import plots
from kadam.experiments.comparison.analysis import analyse, minimum_detectable_effect, one_sided_family, select_best
from kadam.experiments.comparison.config import ComparisonConfig, WorkloadConfig, estimated_runs
from kadam.experiments.comparison.confirmatory import HYPOTHESIS, STUDIES
from kadam.experiments.comparison.protocol import (
    CONTROL,
    EVALUATION_SEED_OFFSET,
    REFERENCE,
    arm_hyperparameters,
    asdict_space,
    lr_only_trials,
    quasirandom_trials,
    refinement_trials,
    train_trial,
)
from kadam.experiments.profiles import profile_sizes
from kadam.experiments.report import Claim, Figure, SectionDocument, Table, format_number
from kadam.experiments.sections import Section

__all__ = [
    "PlannedRun",
    "STUDY_DIRECTORY",
    "CONFIRMATORY_DIRECTORY",
    "build_section",
    "committed_study_answer",
    "tuning_plan",
    "refinement_plan",
    "followup_plan",
    "followup_cells",
    "tagged_records",
    "result_rows",
    "config_for",
    "comparison_config",
    "two_stage_changes",
    "preregistered_test",
    "committed_confirmatory_answer",
]

SECTION = "comparison"
TRAIN_FUNCTION = train_trial


@dataclass(frozen=True)
class PlannedRun:
    """A cell and the tags :func:`~kadam.experiments.comparison.analysis.analyse` needs to place its run."""

    phase: str
    workload: str
    arm: str
    cell: Cell
    trial: int | None = None
    factor: float | None = None


def _cell(
    config: ComparisonConfig,
    workload: WorkloadConfig,
    arm: str,
    hyperparameters: Mapping[str, float],
    seed: int,
    device: str,
    label: str,
) -> Cell:
    kwargs = {
        "workload": workload.name,
        "arm": arm,
        "hyperparameters": dict(hyperparameters),
        "steps": workload.steps,
        "batch_size": workload.batch_size,
        "seed": seed,
        "sizes": workload.size_kwargs,
        "final_lr_fraction": config.final_lr_fraction,
        "curve_points": config.curve_points,
        "device": device,
    }
    return Cell(
        SECTION, f"{workload.name} {arm} {label} seed {seed}", TRAIN_FUNCTION, kwargs, cost=workload.seconds_per_run
    )


def tuning_plan(config: ComparisonConfig, device: str = "cpu") -> list[PlannedRun]:
    """Phase 1: the full-space trials and the lr-only trials of every arm on every workload."""
    shared = quasirandom_trials(config.space, config.trials, config.sobol_seed)
    plan = []
    for workload in config.workloads:
        for arm in workload.arms:
            for index, point in enumerate(shared):
                for seed in config.tuning_seeds:
                    plan.append(
                        PlannedRun(
                            "search",
                            workload.name,
                            arm,
                            _cell(
                                config, workload, arm, arm_hyperparameters(arm, point), seed, device, f"trial {index}"
                            ),
                            trial=index,
                        )
                    )
            if workload.lr_only and config.lr_only_trials > 0:
                for index, point in enumerate(
                    lr_only_trials(config.space, arm, config.lr_only_trials, config.sobol_seed)
                ):
                    for seed in config.tuning_seeds:
                        plan.append(
                            PlannedRun(
                                "lr_only",
                                workload.name,
                                arm,
                                _cell(config, workload, arm, point, seed, device, f"lr-only {index}"),
                                trial=index,
                            )
                        )
    return plan


def _evaluation_seeds(config: ComparisonConfig) -> list[int]:
    return [EVALUATION_SEED_OFFSET + i for i in range(config.seeds)]


def _tuning_runs(
    plan: Sequence[PlannedRun], results: Mapping[str, Any], phases: tuple[str, ...], workload: str, arm: str
) -> list[dict[str, Any]]:
    return [
        {**results[p.cell.key], "trial": p.trial}
        for p in plan
        if p.phase in phases and p.workload == workload and p.arm == arm
    ]


def refinement_plan(config: ComparisonConfig, results: Mapping[str, Any], device: str = "cpu") -> list[PlannedRun]:
    """Phase 2 from phase 1's ``results`` (by cell key): the second tuning stage, each arm's stage-1 best
    point (lowest validation loss) with its lr times each of ``config.refinement_factors``, on the tuning
    seeds; trial indices continue stage 1's (``trials + j``). Empty when there are no refinement factors."""
    if not config.refinement_factors:
        return []
    tuning = tuning_plan(config, device)
    plan = []
    for workload in config.workloads:
        for arm in workload.arms:
            best = select_best(_tuning_runs(tuning, results, ("search",), workload.name, arm))
            for j, point in enumerate(refinement_trials(best["hyperparameters"], config.refinement_factors)):
                index = config.trials + j
                for seed in config.tuning_seeds:
                    plan.append(
                        PlannedRun(
                            "refine",
                            workload.name,
                            arm,
                            _cell(config, workload, arm, point, seed, device, f"refine {index}"),
                            trial=index,
                        )
                    )
    return plan


def followup_plan(config: ComparisonConfig, results: Mapping[str, Any], device: str = "cpu") -> list[PlannedRun]:
    """Phase 3 from the tuning ``results`` (phases 1 and 2, by cell key): evaluation of each best
    configuration (the full search's selected over both stages) on the fresh seeds and the lr sensitivity
    sweep around the full search's best configuration."""
    tuning = tuning_plan(config, device) + refinement_plan(config, results, device)
    plan = []
    for workload in config.workloads:
        for arm in workload.arms:
            for phases, evaluation_phase in (
                (("search", "refine"), "evaluate_search"),
                (("lr_only",), "evaluate_lr_only"),
            ):
                runs = _tuning_runs(tuning, results, phases, workload.name, arm)
                if not runs:
                    continue
                best = select_best(runs)
                for seed in _evaluation_seeds(config):
                    plan.append(
                        PlannedRun(
                            evaluation_phase,
                            workload.name,
                            arm,
                            _cell(
                                config,
                                workload,
                                arm,
                                best["hyperparameters"],
                                seed,
                                device,
                                f"{evaluation_phase} trial {best['trial']}",
                            ),
                            trial=best["trial"],
                        )
                    )
                if evaluation_phase == "evaluate_search":
                    for factor in workload.factors(config):
                        point = {
                            **best["hyperparameters"],
                            "lr": float(f"{best['hyperparameters']['lr'] * factor:.12g}"),
                        }
                        for seed in config.tuning_seeds:
                            plan.append(
                                PlannedRun(
                                    "sensitivity",
                                    workload.name,
                                    arm,
                                    _cell(config, workload, arm, point, seed, device, f"lr×{factor:.3g}"),
                                    factor=factor,
                                )
                            )
    return plan


def followup_cells(config: ComparisonConfig, results: Mapping[str, Any], device: str = "cpu") -> list[PlannedRun]:
    """The planned runs after phase 1 that ``results`` allow: the refinement stage, and, once every one of
    its runs is in ``results``, the evaluation and sensitivity runs too. A runner calls it until it returns
    no run it has not computed."""
    refinement = refinement_plan(config, results, device)
    if any(p.cell.key not in results for p in refinement):
        return refinement
    return refinement + followup_plan(config, results, device)


def tagged_records(plan: Sequence[PlannedRun], results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The records :func:`analyse` takes: each planned run's tags and its result."""
    return [
        {
            "phase": p.phase,
            "workload": p.workload,
            "arm": p.arm,
            "trial": p.trial,
            "factor": p.factor,
            "run": results[p.cell.key],
        }
        for p in plan
    ]


def comparison_config(profile: str) -> ComparisonConfig:
    """The comparison's configuration at ``profile``: a comparison-only study of
    :data:`~kadam.experiments.comparison.confirmatory.STUDIES`, else the profile's
    (:func:`~kadam.experiments.profiles.profile_sizes`)."""
    return STUDIES[profile] if profile in STUDIES else profile_sizes(profile).comparison


def config_for(settings: Any) -> ComparisonConfig:
    """The profile's configuration, with ``settings.seeds`` (if given) as the number of evaluation seeds."""
    config = comparison_config(settings.profile)
    return replace(config, seeds=settings.seeds) if settings.seeds else config


# --------------------------------------------------------------------------------------------------------
# Tables and text
# --------------------------------------------------------------------------------------------------------

RESULT_COLUMNS = (
    "arm",
    "best lr",
    "β",
    "γ",
    "λ",
    "warmup",
    "test loss (mean ± std)",
    "diverged",
    "Δ vs AdamW [adjusted CI]",
    "p (Holm)",
    "smallest detectable Δ",
    "steps to target (median)",
    "seconds to target (median)",
    "ms/step",
)


def _plus_minus(spread: Mapping[str, Any] | None) -> str:
    if spread is None:
        return "—"
    std = spread["std"]
    return f"{format_number(spread['mean'])} ± {format_number(std) if std is not None else '—'}"


def result_rows(block: Mapping[str, Any]) -> list[list[str]]:
    """One formatted row per arm of one workload's result block (see :data:`RESULT_COLUMNS`)."""
    rows = []
    for arm, summary in block.get("arms", {}).items():
        chosen = block["selection"][arm]["hyperparameters"]
        comparison = block.get("versus_reference", {}).get(arm)
        if comparison is None:
            delta, p_holm, mde = "reference", "—", "—"
        elif arm == CONTROL:
            delta = f"{comparison['mean']:+.3g} (control; must be exactly 0)"
            p_holm, mde = "—", "—"
        else:
            delta = (
                f"{comparison['mean']:+.4f} [{comparison['ci_adjusted_low']:+.4f}, "
                f"{comparison['ci_adjusted_high']:+.4f}]" + (" *" if comparison["significant"] else "")
            )
            p_holm, mde = format_number(comparison["p_holm"], 2), format_number(comparison["mde"], 3)
        steps = summary["steps_to_target"]
        seconds = summary["seconds_to_target"]
        n = len(summary["seeds"])
        rows.append(
            [
                arm,
                format_number(chosen["lr"], 3),
                format_number(chosen["beta"], 3),
                format_number(chosen["gamma"], 4),
                format_number(chosen["weight_decay"], 2),
                format_number(chosen["warmup_fraction"], 2),
                _plus_minus(summary["test_loss"]),
                f"{summary['diverged']}/{n}",
                delta,
                p_holm,
                mde,
                f"{format_number(steps['median'])} ({summary['target_reached']}/{n})" if steps else f"— (0/{n})",
                format_number(seconds["median"], 3) if seconds else "—",
                format_number(1e3 * summary["seconds_per_step"], 3),
            ]
        )
    return rows


def _budget_lines(config: ComparisonConfig) -> list[str]:
    lines = []
    total_runs, total_seconds = 0, 0.0
    for (name, runs, seconds), workload in zip(estimated_runs(config), config.workloads):
        lines.append(
            f"{name}: {len(workload.arms)} arms × ({len(config.tuning_seeds)} tuning seed(s) × ({config.trials} "
            f"trials + {len(config.refinement_factors)} refinement + {config.lr_only_trials if workload.lr_only else 0} lr-only + "
            f"{len(workload.factors(config))} sensitivity) + {config.seeds} seeds × "
            f"{1 + (workload.lr_only and config.lr_only_trials > 0)} evaluations) = {runs} runs × "
            f"{workload.seconds_per_run:g} s = {seconds:,.0f} CPU-s"
        )
        total_runs += runs
        total_seconds += seconds
    lines.append(f"total: {total_runs} runs, {total_seconds:,.0f} CPU-s ≈ {total_seconds / 2 / 3600:.2f} h on 2 cores")
    return lines


def _resolution_sentence(analysis: Mapping[str, Any], config: ComparisonConfig) -> list[str]:
    """What the budget can and cannot resolve, per workload: the smallest detectable difference."""
    sentences = []
    family = analysis["families"].get("search", [])
    if not family:
        return []
    m = max(len(family), 1)
    for workload, entry in analysis["workloads"].items():
        comparisons = [c for arm, c in entry.get("search", {}).get("versus_reference", {}).items() if arm != CONTROL]
        if not comparisons:
            continue
        spreads = sorted(c["std"] for c in comparisons)
        median_std = spreads[len(spreads) // 2]
        n = comparisons[0]["n"]
        mde = minimum_detectable_effect(median_std, n, config.alpha, config.power, m)
        reference_loss = entry["search"]["arms"][REFERENCE]["test_loss"]["mean"]
        sentences.append(
            f"{workload}: with {n} paired seeds and a family of {m} comparisons, a true difference in test loss "
            f"smaller than {mde['exact']:.3g} (the median seed-to-seed std of the paired differences, {median_std:.3g}, "
            f"at Holm's strictest level {mde['level']:.3g} and {config.power:.0%} power; "
            f"{100 * mde['exact'] / abs(reference_loss):.2g}% of AdamW's test loss {reference_loss:.4g}) is likely "
            f"to go undetected; a non-significant row says only that the difference is below that size."
        )
    return sentences


def _findings(analysis: Mapping[str, Any], config: ComparisonConfig) -> list[str]:
    findings = (
        [
            f"The k = 1 control (KAdam(k=1) against torch AdamW, both foreach=False) reproduced AdamW bit for "
            f"bit in all {analysis['control_pairs_checked']} paired runs checked (tuning and evaluation): every "
            f"paired difference is exactly 0, so the pairing (init, data order, schedule) is sound."
        ]
        if analysis["control_pairs_checked"]
        else ["No k = 1 control ran in this profile, so no run checks the pairing by an exact tie here."]
    )
    findings += _two_stage_findings(analysis)
    for result, name in (("search", "full search"), ("lr_only", "lr-only tuning")):
        family = analysis["families"].get(result, [])
        if not family:
            continue
        significant = []
        for item in family:
            comparison = item["comparison"]
            if comparison["significant"]:
                direction = "better" if comparison["mean"] < 0 else "worse"
                significant.append(
                    f"{item['arm']} on {item['workload']} ({direction}, Δ = {comparison['mean']:+.4f}, "
                    f"p_Holm = {comparison['p_holm']:.2g})"
                )
        findings.append(
            f"{name}: {len(significant)} of {len(family)} comparisons with AdamW are significant after "
            "Holm's correction" + (": " + "; ".join(significant) if significant else "") + "."
        )
    gaps = {(gap["workload"], gap["arm"]): gap for gap in tuning_gaps(analysis)}
    for pairing in analysis.get("central_pairings", []):
        c = pairing["comparison"]
        (with_norm, first_arm), (without_norm, second_arm) = pairing["first"], pairing["second"]
        caveats = [
            f" {arm} on {workload} is under-tuned (its lr × {gaps[workload, arm]['factor']:.3g} had a lower "
            f"validation loss), so the difference is biased {'in favour of' if arm == first_arm else 'against'} "
            f"{second_arm}."
            for workload, arm in ((with_norm, first_arm), (without_norm, second_arm))
            if (workload, arm) in gaps
        ]
        findings.append(
            f"THEORY §4 pairing: {second_arm} on {without_norm} minus {first_arm} on {with_norm} (paired by seed): "
            f"Δ test loss = {c['mean']:+.4f}, adjusted interval [{c['ci_adjusted_low']:+.4f}, {c['ci_adjusted_high']:+.4f}], "
            f"p_Holm = {c['p_holm']:.2g} — {'significant' if c['significant'] else 'not significant'} (sign convention: "
            "a negative Δ would mean 2-Adam without normalization does better than Adam with it)." + "".join(caveats)
        )
    findings += _tuning_gaps(analysis)
    findings += _resolution_sentence(analysis, config)
    return findings


def two_stage_changes(analysis: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per (workload, arm) of the full search with a second tuning stage: what it changed
    (:func:`~kadam.experiments.comparison.analysis.two_stage_change`), with ``workload`` and ``arm``."""
    return [
        {"workload": workload, "arm": arm, **change}
        for workload, entry in analysis["workloads"].items()
        for arm, change in entry.get("search", {}).get("two_stage", {}).items()
    ]


def _two_stage_findings(analysis: Mapping[str, Any]) -> list[str]:
    changes = [c for c in two_stage_changes(analysis) if c["arm"] != CONTROL]
    if not changes:
        return []
    moved = [c for c in changes if c["moved"]]
    listed = "; ".join(
        f"{c['arm']} on {c['workload']} (lr × {c['lr'] / c['stage1_lr']:.3g}: validation "
        f"{format_number(c['stage1_validation_loss'])} → {format_number(c['validation_loss'])})"
        for c in moved
    )
    return [
        f"Two-stage tuning: the lr refinement around the stage-1 best point moved the selection for {len(moved)} of "
        f"{len(changes)} arm–workload pairs" + (f": {listed}." if moved else "; every selection is a stage-1 point.")
    ]


TUNING_GAP_TOLERANCE = 0.01
"""A sweep point must beat the selection's validation loss by more than this fraction to count as a tuning gap."""


def tuning_gaps(analysis: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Arms whose lr sensitivity sweep (tuning seed) found a validation loss lower than the selected configuration's
    by more than :data:`TUNING_GAP_TOLERANCE` (relative).

    Each entry: ``workload``, ``arm``, ``factor`` (the sweep's best lr multiplier), ``selected`` and ``found``
    (validation losses at factor 1 and at ``factor``). Such an arm's search did not reach its best learning rate:
    its reported row is an upper bound on what the arm can do, not its tuned performance.
    """
    gaps = []
    for workload, entry in analysis["workloads"].items():
        for arm, curve in entry.get("sensitivity", {}).items():
            if arm == CONTROL:
                continue
            points = [(f, v) for f, v in zip(curve["factor"], curve["validation_loss"]) if v is not None]
            selected = next((v for f, v in points if math.isclose(f, 1.0)), None)
            others = [(v, f) for f, v in points if not math.isclose(f, 1.0)]
            if selected is None or not others:
                continue
            found, factor = min(others)
            if found < selected * (1 - TUNING_GAP_TOLERANCE):
                gaps.append({"workload": workload, "arm": arm, "factor": factor, "selected": selected, "found": found})
    return gaps


def _tuning_gaps(analysis: Mapping[str, Any]) -> list[str]:
    gaps = tuning_gaps(analysis)
    swept = sum(
        len([a for a in entry.get("sensitivity", {}) if a != CONTROL]) for entry in analysis["workloads"].values()
    )
    if not swept:
        return []
    if not gaps:
        return [
            f"Tuning coverage: for all {swept} arm–workload pairs swept, no lr multiple of the selected configuration "
            f"had a validation loss more than {TUNING_GAP_TOLERANCE:.0%} below the selection's."
        ]
    listed = "; ".join(
        f"{g['arm']} on {g['workload']} (lr × {g['factor']:.3g}: {g['found']:.4g} against {g['selected']:.4g})"
        for g in gaps
    )
    return [
        f"Tuning coverage: for {len(gaps)} of {swept} arm–workload pairs the lr sweep around the selected "
        f"configuration found a validation loss more than {TUNING_GAP_TOLERANCE:.0%} below the selection's, so the search did not reach that arm's "
        f"best learning rate and its row is an upper bound on its tuned loss, not a measurement of it: {listed}."
    ]


def document(
    analysis: Mapping[str, Any], config: ComparisonConfig, figures: Path, command: str = "kadam reproduce"
) -> SectionDocument:
    """The section's document: method (the protocol and its budget), findings, tables, figures, data."""
    space = asdict_space(config.space)
    method = (
        "Does k-Adam train better than AdamW? Every arm gets the same budget: "
        f"{config.trials} points of one scrambled Sobol sequence (seed {config.sobol_seed}) over one search space "
        f"shared by all arms — peak lr log-uniform in {space['lr']}, 1 − β in {space['one_minus_beta']} and 1 − γ in "
        f"{space['one_minus_gamma']} (log-uniform, first level), weight decay log-uniform in {space['weight_decay']}, "
        f"warmup fraction uniform in {space['warmup_fraction']} — "
        + (
            f"then its stage-1 best point at lr × {list(config.refinement_factors)} (selection over both) — "
            if config.refinement_factors
            else ""
        )
        + (
            f"and, for the lr-only result, {config.lr_only_trials} learning rates at each arm's defaults. "
            if config.lr_only_trials
            else "(no lr-only result in this profile). "
        )
        + f"Schedule: linear warmup then cosine decay to {config.final_lr_fraction:g} × the peak at the last step. "
        f"Selection on the validation loss of tuning seed(s) {list(config.tuning_seeds)}; the best configuration "
        f"is retrained on {config.seeds} fresh seeds and reported on the test split. A seed fixes the "
        "initialisation and the data order, so the arms' runs on one seed are paired.\n\nPaired t intervals; Holm's "
        f"correction over the family of comparisons (α = {config.alpha}); intervals are Bonferroni-adjusted "
        "(simultaneous), so a row can be significant under Holm's step-down test (more powerful than Bonferroni) "
        "while its interval still touches 0. A diverged run enters the statistics as the test loss of the untrained model of its seed "
        "and is counted. The smallest detectable difference is the true mean difference δ that the two-sided paired t "
        "test at Holm's strictest level α/m detects with 80% power given the measured std s of the paired differences "
        "(the root of the noncentral-t power; ≈ (t_{1−α/(2m), n−1} + t_{0.8, n−1}) · s/√n). The target loss is the worst final training loss among AdamW's seeds; steps and "
        "wall-clock seconds to reach it charge each optimizer's cost per step. KAdam k = 1 is the control and must "
        "tie AdamW exactly (asserted).\n\nBudget (trials × arms × workloads × seeds × seconds per run, estimated "
        "per run on one core):\n\n" + "\n".join(f"- {line}" for line in _budget_lines(config))
    )
    tables = []
    for workload, entry in analysis["workloads"].items():
        for result, name in (("search", "full search"), ("lr_only", "lr-only tuning")):
            if result in entry and "arms" in entry[result]:
                target = entry[result]["target_train_loss"]
                tables.append(
                    Table(
                        f"{workload}, {name}: best configuration per arm, test loss over {config.seeds} fresh seeds, paired "
                        f"difference to AdamW (* = significant after Holm), training-loss target "
                        f"{format_number(target)}",
                        RESULT_COLUMNS,
                        result_rows(entry[result]),
                    )
                )
    drawn = plots.draw_all(analysis, figures)
    captions = plots.CAPTIONS
    figure_list = [Figure(path, captions[name]) for name, path in drawn.items()]
    findings = _findings(analysis, config)
    headline = [("k = 1 control pairs tied exactly", str(analysis["control_pairs_checked"]))]
    for result in ("search",):
        family = analysis["families"].get(result, [])
        count = sum(item["comparison"]["significant"] for item in family)
        headline.append(("significant vs AdamW after Holm (full search)", f"{count} of {len(family)}"))
    data = {"analysis": analysis, "budget": _budget_lines(config), "command": command, "config": json_config(config)}
    claims = comparison_claims(analysis)
    if config.one_sided_arm is not None:
        test = one_sided_family(analysis, config.one_sided_arm, config.alpha, config.power)
        data["preregistered_test"] = test
        findings = [preregistered_finding(test), *findings]
        claims.append(preregistered_test(test))
    return SectionDocument(
        SECTION,
        "Does k-Adam train better? (tuned, paired, corrected)",
        method,
        findings,
        tables,
        figure_list,
        headline,
        data,
        claims=claims,
    )


COMPARISON_MIN_WORKLOADS = 2
"""A general verdict "k-Adam trains better" needs at least this many workloads."""

DEFAULT_KADAM_ARM = "kadam2"
"""The arm a user gets from ``KAdam(params)``: k = 2, the default meta levels."""


def _is_kadam_versus_adamw(item: Mapping[str, Any]) -> bool:
    """A family row comparing a k ≥ 2 arm with AdamW (not Adam, not the control, not a THEORY §4 pairing)."""
    return item["arm"].startswith("kadam") and item["arm"] != CONTROL and not item.get("pairing")


def comparison_claims(analysis: Mapping[str, Any]) -> list[Claim]:
    """The verdict on "KAdam's default (k = 2) reaches a lower test loss than tuned AdamW" (full search family).

    A general claim: confirmed when the default arm is significantly better (Holm) on every workload (at least
    :data:`COMPARISON_MIN_WORKLOADS`), refuted when it is significantly worse on at least one, not resolved
    otherwise. The evidence also counts every k ≥ 2 arm's significant rows; Adam's rows and the THEORY §4
    pairings are not k-Adam against AdamW and are left out.
    """
    family = [item for item in analysis["families"].get("search", []) if _is_kadam_versus_adamw(item)]
    default = [item for item in family if item["arm"] == DEFAULT_KADAM_ARM]
    if not default:
        return []

    def significant(items: Sequence[Mapping[str, Any]], sign: int) -> list[Mapping[str, Any]]:
        return [item for item in items if item["comparison"]["significant"] and sign * item["comparison"]["mean"] > 0]

    better, worse = significant(default, -1), significant(default, +1)
    if len(better) == len(default) and len(default) >= COMPARISON_MIN_WORKLOADS:
        verdict = "confirmed"
    elif worse:
        verdict = "refuted"
    else:
        verdict = "not resolved at this budget"

    def rows(items: Sequence[Mapping[str, Any]]) -> str:
        return "; ".join(
            f"{item['workload']} Δ = {item['comparison']['mean']:+.4f} "
            f"[{item['comparison']['ci_adjusted_low']:+.4f}, {item['comparison']['ci_adjusted_high']:+.4f}]"
            f"{' *' if item['comparison']['significant'] else ''}"
            for item in items
        )

    def names(items: Sequence[Mapping[str, Any]]) -> str:
        return ", ".join(f"{item['arm']} on {item['workload']}" for item in items) or "none"

    all_better, all_worse = significant(family, -1), significant(family, +1)
    return [
        Claim(
            "KAdam's default (k = 2) reaches a lower test loss than tuned AdamW on every workload (tuned, "
            "paired, Holm-corrected)",
            verdict,
            f"{DEFAULT_KADAM_ARM} − AdamW test loss (adjusted interval, * = significant after Holm): "
            f"{rows(default)}. All k ≥ 2 arms: {len(all_better)} of {len(family)} rows significantly better "
            f"({names(all_better)}), {len(all_worse)} significantly worse ({names(all_worse)})",
        )
    ]


def preregistered_finding(test: Mapping[str, Any]) -> str:
    """One sentence per workload of the preregistered one-sided test and its verdict."""
    rows = "; ".join(
        f"{t['workload']}: Δ = {t['mean']:+.4f} (one-sided upper bound {t['upper_bound']:+.4f}, p_Holm = "
        f"{t['p_holm']:.2g}, {'rejects' if t['rejects'] else 'does not reject'} H0; smallest detectable "
        f"{t['mde']:.3g}; {t['n']} seeds)"
        for t in test["tests"]
    )
    return (
        f"Preregistered test of “{HYPOTHESIS}” ({test['arm']} − AdamW, one-sided paired t, Holm over the "
        f"{test['family_size']} workloads, α = {test['alpha']}): {rows}. Verdict: {test['verdict']}."
    )


def preregistered_test(test: Mapping[str, Any]) -> Claim:
    """The preregistered hypothesis as a claim: confirmed when the one-sided test rejects on every workload
    (:func:`one_sided_family`), refuted when on some workload the two-sided interval lies above 0 (k = 2 worse),
    not resolved otherwise."""
    if test["verdict"] == "confirmed":
        verdict = "confirmed"
    elif any(t["worse"] for t in test["tests"]):
        verdict = "refuted"
    else:
        verdict = "not resolved at this budget"
    evidence = "; ".join(
        f"{t['workload']} Δ = {t['mean']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}], one-sided p_Holm = "
        f"{t['p_holm']:.2g}, smallest detectable {t['mde']:.3g}"
        for t in test["tests"]
    )
    return Claim(
        f"{HYPOTHESIS} (preregistered, one-sided)",
        verdict,
        f"{evidence} ({test['verdict']})",
        criterion=f"one-sided paired t per workload, Holm over {test['family_size']} workloads at α = {test['alpha']}: "
        "confirmed if every workload rejects; refuted if a two-sided Bonferroni interval lies above 0",
        seeds=min((t["n"] for t in test["tests"]), default=None),
    )


def json_config(config: ComparisonConfig) -> dict[str, Any]:
    """The configuration as JSON (search space bounds as lists, workload sizes as dicts)."""
    value = dataclasses.asdict(config)
    value["space"] = asdict_space(config.space)
    value["workloads"] = [
        {**dataclasses.asdict(w), "sizes": w.size_kwargs, "arms": list(w.arms)} for w in config.workloads
    ]
    return value


def build_section(settings: Any) -> Section:
    """The comparison section at ``settings.profile``'s sizes (:func:`~kadam.experiments.profiles.profile_sizes`)."""
    config = config_for(settings)
    tuning = tuning_plan(config, settings.device)
    followup_runs = sum(
        len(w.arms)
        * (
            config.seeds * (1 + (w.lr_only and config.lr_only_trials > 0))
            + len(config.tuning_seeds) * (len(w.factors(config)) + len(config.refinement_factors))
        )
        * w.seconds_per_run
        for w in config.workloads
    )

    def followup(results: Mapping[str, Any]) -> list[Cell]:
        return [p.cell for p in followup_cells(config, results, settings.device)]

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        plan = tuning + followup_cells(config, results, settings.device)
        analysis = analyse(
            tagged_records(plan, results), confidence=config.confidence, alpha=config.alpha, power=config.power
        )
        return document(analysis, config, figures)

    return Section(
        SECTION,
        "Does k-Adam train better? (tuned, paired, corrected)",
        json_config(config),
        [p.cell for p in tuning],
        finish,
        followup,
        followup_runs,
    )


STUDY_DIRECTORY = Path(__file__).resolve().parents[4] / "results" / "comparison-study"
"""The committed study profile's report (``kadam compare --study``) in a source checkout."""

CONFIRMATORY_DIRECTORY = Path(__file__).resolve().parents[4] / "results" / "confirmatory-study"
"""The committed preregistered test's report (``kadam compare --study --profile confirmatory``) in a source
checkout."""


def committed_study_answer(directory: str | Path | None = None) -> dict[str, Any] | None:
    """What the committed study says about KAdam's default against tuned AdamW, read from its ``results.json``.

    Per workload of the full search: the paired test-loss difference ``kadam2 − AdamW`` (mean, Bonferroni
    interval, Holm p, significant or not, seeds), sorted into better / worse / not resolved; the study's own
    claim (verdict, evidence), its command and start time. None when the directory or file is missing or
    unreadable (an installed package carries no study).
    """
    path = Path(directory or STUDY_DIRECTORY) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        family = results["sections"]["comparison"]["data"]["analysis"]["families"]["search"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rows = [
        {
            "workload": item["workload"],
            "mean": item["comparison"]["mean"],
            "low": item["comparison"]["ci_adjusted_low"],
            "high": item["comparison"]["ci_adjusted_high"],
            "p_holm": item["comparison"]["p_holm"],
            "significant": bool(item["comparison"]["significant"]),
            "seeds": item["comparison"]["n"],
        }
        for item in family
        if item["arm"] == DEFAULT_KADAM_ARM
    ]
    claim = next((c for c in results.get("claims", []) if c.get("section") == "comparison"), None)
    return {
        "directory": str(path.parent),
        "command": results.get("command"),
        "started_utc": results.get("started_utc"),
        "rows": rows,
        "better": [r["workload"] for r in rows if r["significant"] and r["mean"] < 0],
        "worse": [r["workload"] for r in rows if r["significant"] and r["mean"] > 0],
        "unresolved": [r["workload"] for r in rows if not r["significant"]],
        "verdict": None if claim is None else claim.get("verdict"),
        "evidence": None if claim is None else claim.get("evidence"),
    }


def committed_confirmatory_answer(directory: str | Path | None = None) -> dict[str, Any] | None:
    """The committed preregistered test (:func:`one_sided_family`, judged by :func:`preregistered_test`), read from
    its ``results.json``: the verdict, per workload the paired mean ``kadam2 − AdamW`` with its Bonferroni interval,
    one-sided Holm p, smallest detectable difference and seeds, and the command. None when the directory or file
    is missing or holds no preregistered test (the runs are not finished, or an installed package carries none).
    """
    path = Path(directory or CONFIRMATORY_DIRECTORY) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        test = results["sections"]["comparison"]["data"]["preregistered_test"]
        claim = preregistered_test(test)
        rows = [
            {
                "workload": t["workload"],
                "mean": t["mean"],
                "low": t["ci_low"],
                "high": t["ci_high"],
                "p_holm": t["p_holm"],
                "mde": t["mde"],
                "seeds": t["n"],
            }
            for t in test["tests"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"directory": str(path.parent), "command": results.get("command"), "verdict": claim.verdict, "rows": rows}
