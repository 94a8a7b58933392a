"""The k-Adam optimizer (THEORY §1), its levels, its state level by level, and helpers for its parameter groups."""

from kadam.optimizer.kadam import KAdam
from kadam.optimizer.levels import resolve_levels
from kadam.optimizer.param_groups import param_groups_for
from kadam.optimizer.state import LevelState, level_states, level_updates, param_group_levels
from kadam.vocabulary import Level

__all__ = [
    "KAdam",
    "Level",
    "LevelState",
    "level_states",
    "level_updates",
    "param_group_levels",
    "param_groups_for",
    "resolve_levels",
]
