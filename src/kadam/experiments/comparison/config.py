"""The comparison section's configuration type; its value per profile is in :mod:`kadam.experiments.profiles`.

Cost model: runs = Σ_workloads arms × (tuning_seeds × (trials + refinement points + lr_only_trials + sensitivity
points) + seeds × (1 + [lr-only on])), each at the workload's seconds per run on one core
(:func:`estimated_runs`; the section's text prints the arithmetic for the chosen profile).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kadam.experiments.comparison.protocol import SearchSpace

__all__ = ["ComparisonConfig", "WorkloadConfig", "estimated_runs"]


@dataclass(frozen=True)
class WorkloadConfig:
    """One workload of the section: its name (a key of ``protocol.WORKLOADS``), sizes, steps, batch size,
    arms, and ``seconds_per_run`` (the estimated wall time of one run on one core, for the ETA only)."""

    name: str
    steps: int
    batch_size: int
    arms: tuple[str, ...]
    sizes: tuple[tuple[str, Any], ...] = ()
    seconds_per_run: float = 1.0
    lr_only: bool = True
    sensitivity_factors: tuple[float, ...] | None = None

    def factors(self, config: ComparisonConfig) -> tuple[float, ...]:
        """The lr multiples of this workload's sensitivity sweep (the configuration's unless overridden)."""
        return config.sensitivity_factors if self.sensitivity_factors is None else self.sensitivity_factors

    @property
    def size_kwargs(self) -> dict[str, Any]:
        return dict(self.sizes)


@dataclass(frozen=True)
class ComparisonConfig:
    """The protocol's budget: ``trials`` Sobol points per arm over ``space`` (stage 1), then the stage-1 best
    point's lr times each of ``refinement_factors`` (stage 2; empty: one stage), ``lr_only_trials`` for the
    lr-only result (0 skips it), ``tuning_seeds``, ``seeds`` fresh evaluation seeds, ``sensitivity_factors``
    (multiples of each arm's best lr, the others at their best, on the tuning seeds), the schedule's
    ``final_lr_fraction``, ``confidence``/``alpha``/``power`` of the statistics, ``sobol_seed``, and
    ``one_sided_arm``: the arm of a preregistered one-sided test against the reference on every workload
    (Holm over the workloads; :func:`~kadam.experiments.comparison.analysis.one_sided_family`), or None."""

    workloads: tuple[WorkloadConfig, ...]
    trials: int
    lr_only_trials: int
    seeds: int
    tuning_seeds: tuple[int, ...] = (0,)
    sensitivity_factors: tuple[float, ...] = (0.1, 0.316227766017, 3.16227766017, 10.0)
    refinement_factors: tuple[float, ...] = (0.25, 0.5, 2.0, 4.0)
    space: SearchSpace = field(default_factory=SearchSpace)
    final_lr_fraction: float = 0.0
    confidence: float = 0.95
    alpha: float = 0.05
    power: float = 0.8
    sobol_seed: int = 0
    curve_points: int = 100
    one_sided_arm: str | None = None


def estimated_runs(config: ComparisonConfig) -> list[tuple[str, int, float]]:
    """(workload, runs, estimated CPU-seconds) per workload, by the cost model of the module docstring."""
    rows = []
    for workload in config.workloads:
        lr_only = config.lr_only_trials if workload.lr_only else 0
        tuning = config.trials + len(config.refinement_factors) + lr_only + len(workload.factors(config))
        per_arm = len(config.tuning_seeds) * tuning
        per_arm += config.seeds * (1 + (lr_only > 0))
        runs = len(workload.arms) * per_arm
        rows.append((workload.name, runs, runs * workload.seconds_per_run))
    return rows
