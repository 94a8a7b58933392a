"""The k-Adam optimizer (THEORY §1) and helpers for building its parameter groups."""

from kadam.optimizer.kadam import KAdam
from kadam.optimizer.param_groups import param_groups_for

__all__ = ["KAdam", "param_groups_for"]
