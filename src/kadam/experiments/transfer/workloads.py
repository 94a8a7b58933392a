"""The one place this slice imports its workloads from (:mod:`kadam.experiments.workloads` and the flow slice's problems)."""

from kadam.experiments.flow.protocol import make_problem
from kadam.experiments.workloads import build_task

__all__ = ["build_task", "make_problem"]
