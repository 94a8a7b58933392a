"""The flow section's configuration type; its value per profile is in :mod:`kadam.experiments.profiles`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["FlowConfig"]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class FlowConfig:
    """Section 2: the accuracy runs as (problem, k), the convergence experiment at a fixed horizon η·steps
    (``convergence_lrs``, or a problem's own rates in ``convergence_lrs_by_problem``: a run costs ∝ Σ 1/η),
    the problems of the first-step diagnostic, and (empty: not run) the kwargs of the warm-start experiment,
    of the modified equations' convergence experiment per problem, of the transformer problem
    (:mod:`kadam.experiments.flow.extra`) and of the restart experiment (the model started from the discrete
    run's state, :func:`~kadam.experiments.flow.protocol.restart_experiment`); ``seeds``: the accuracy and
    convergence experiments run at each (seed 0 first; a seed draws the problem's data or initialisation)."""

    accuracy_runs: tuple[tuple[str, int], ...]
    accuracy_steps: int
    convergence_problems: tuple[str, ...]
    convergence_lrs: tuple[float, ...]
    convergence_horizon: float
    first_step: tuple[str, ...] = ()
    convergence_lrs_by_problem: Mapping[str, tuple[float, ...]] = field(default_factory=_empty)
    warm_start: Mapping[str, Any] = field(default_factory=_empty)
    modified: Mapping[str, Mapping[str, Any]] = field(default_factory=_empty)
    transformer: Mapping[str, Any] = field(default_factory=_empty)
    restart: Mapping[str, Any] = field(default_factory=_empty)
    seeds: tuple[int, ...] = (0,)

    def convergence_lrs_for(self, problem: str) -> tuple[float, ...]:
        """The learning rates of ``problem``'s convergence experiment."""
        return tuple(self.convergence_lrs_by_problem.get(problem, self.convergence_lrs))
