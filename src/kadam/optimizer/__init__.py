"""The k-Adam optimizer (THEORY §1), its levels, and helpers for building its parameter groups."""

from kadam.optimizer.kadam import KAdam
from kadam.optimizer.levels import Level, resolve_levels
from kadam.optimizer.param_groups import param_groups_for

__all__ = ["KAdam", "Level", "param_groups_for", "resolve_levels"]
