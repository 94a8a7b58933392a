"""The one place this slice imports its workloads from (they are moving to ``kadam.experiments.workloads``)."""

from kadam.experiments.flow import make_problem
from kadam.experiments.tasks import build_task

__all__ = ["build_task", "make_problem"]
