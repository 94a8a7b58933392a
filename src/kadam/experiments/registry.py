"""The sections of ``kadam reproduce``, in report order.

A slice plugs in with one entry: ``kadam/experiments/<slice>/section.py`` defines
``build_section(settings: Settings) -> Section``; add ``"<slice>"`` to :data:`SECTIONS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names alone: the command line reads SECTIONS without importing any experiment
    from kadam.experiments.profiles import Settings
    from kadam.experiments.sections import Section

__all__ = ["SECTIONS", "build_sections", "section_builder"]

SECTIONS: tuple[str, ...] = ("stability", "flow", "normalization", "comparison", "monitor", "transfer")
"""Slice names (packages of :mod:`kadam.experiments`), in report order."""


def section_builder(name: str) -> Callable[[Settings], Section]:
    """``kadam.experiments.<name>.section.build_section``."""
    return importlib.import_module(f"kadam.experiments.{name}.section").build_section


def build_sections(settings: Settings, names: Sequence[str] | None = None) -> list[Section]:
    """The report's sections for ``settings``, in report order: every one of :data:`SECTIONS`, or only ``names``.

    Raises ``ValueError`` naming the known sections for an unknown or repeated name, or an empty selection."""
    if names is not None:
        unknown = [name for name in names if name not in SECTIONS]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(
                f"sections must be distinct names among {', '.join(SECTIONS)}, got {', '.join(names) or 'none'}"
            )
    return [section_builder(name)(settings) for name in SECTIONS if names is None or name in names]
