"""The preregistered confirmatory test of KAdam's default against tuned AdamW on transformer language models.

**Hypothesis.** KAdam k = 2 with the default meta levels (``kadam2``: levels ≥ 2 (β, γ) = (0, 0.999) in tensor
mode) reaches a lower final test loss than tuned AdamW on pre-LN transformer language models.

**Workloads** (:data:`CONFIRMATORY`): three pre-LN character GPTs on the standard library's docstrings
(:mod:`kadam.experiments.workloads.stdlib_docs`), a text the exploratory study never used, at shapes it never
used — *wide* (width 128, 2 layers, context 64), *deep* (width 128, 4 layers, context 32) and *long*
(context 128, 2 layers) — each trained for 1,500 steps.

**Protocol.** The comparison protocol (:mod:`kadam.experiments.comparison.protocol`) with two-stage tuning:
8 Sobol points of the shared search space, then the stage-1 best point's lr × (¼, ½, 2, 4), selection on the
validation loss of tuning seed 0 over both stages, the selected configuration retrained on 8 fresh paired
seeds (1000–1007) and reported on the test split. Arms: ``adamw`` (the reference), ``kadam2`` (the
hypothesis) and, for context only, ``muon-adamw``, ``schedulefree-adamw`` and ``adamw-equal-betas``; every
arm gets the same budget.

**Test** (:func:`~kadam.experiments.comparison.analysis.one_sided_family`, ``one_sided_arm = "kadam2"``): per
workload the one-sided paired t test of H0: mean(loss_kadam2 − loss_AdamW) ≥ 0 against H1: < 0 over the 8
seeds; the family is the three workloads, Holm's adjustment at α = 0.05. The hypothesis is *confirmed* when
all three reject, *partly supported* when one or two do, *not confirmed* when none does. The context arms'
rows are descriptive (two-sided, Holm over every arm–workload comparison with AdamW, as the protocol reports
them) and take no part in the verdict.
"""

from __future__ import annotations

from kadam.experiments.comparison.config import ComparisonConfig, WorkloadConfig

__all__ = ["CONFIRMATORY", "CONFIRMATORY_ARMS", "HYPOTHESIS", "STUDIES"]

HYPOTHESIS = (
    "KAdam k = 2 with the default meta levels reaches a lower final test loss than tuned AdamW on pre-LN "
    "transformer language models"
)

CONFIRMATORY_ARMS = ("adamw", "kadam2", "muon-adamw", "schedulefree-adamw", "adamw-equal-betas")

_CORPUS = (("corpus_chars", 1_800_000), ("evaluation_windows", 512))
_STEPS = 1500

CONFIRMATORY = ComparisonConfig(
    workloads=(
        WorkloadConfig(
            "docs-gpt-wide",
            _STEPS,
            16,
            CONFIRMATORY_ARMS,
            (*_CORPUS, ("context", 64), ("width", 128), ("heads", 4), ("layers", 2)),
            55.0,
            lr_only=False,
        ),
        WorkloadConfig(
            "docs-gpt-deep",
            _STEPS,
            16,
            CONFIRMATORY_ARMS,
            (*_CORPUS, ("context", 32), ("width", 128), ("heads", 4), ("layers", 4)),
            64.0,
            lr_only=False,
        ),
        WorkloadConfig(
            "docs-gpt-long",
            _STEPS,
            8,
            CONFIRMATORY_ARMS,
            (*_CORPUS, ("context", 128), ("width", 128), ("heads", 4), ("layers", 2)),
            58.0,
            lr_only=False,
        ),
    ),
    trials=8,
    lr_only_trials=0,
    seeds=8,
    tuning_seeds=(0,),
    sensitivity_factors=(),
    refinement_factors=(0.25, 0.5, 2.0, 4.0),
    curve_points=50,
    one_sided_arm="kadam2",
)
"""The confirmatory study's configuration (fixed by the preregistration in results/confirmatory-study). A
workload's ``seconds_per_run`` is its measured CPU cost per run (ETA only; results/confirmatory-study/budget.py)."""

STUDIES = {"confirmatory": CONFIRMATORY}
"""Comparison-only profiles of ``kadam compare --study --profile NAME`` (no other section has them)."""
