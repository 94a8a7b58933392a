"""The sections of ``kadam reproduce``, in report order.

A slice plugs in with one entry: ``kadam/experiments/<slice>/section.py`` defines
``build_section(settings: Settings) -> Section``; add ``"<slice>"`` to :data:`SECTIONS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from kadam.experiments.profiles import Settings
from kadam.experiments.sections import Section

__all__ = ["SECTIONS", "build_sections", "section_builder"]

SECTIONS: tuple[str, ...] = ("stability", "flow", "normalization", "comparison", "monitor", "transfer")
"""Slice names (packages of :mod:`kadam.experiments`), in report order."""


def section_builder(name: str) -> Callable[[Settings], Section]:
    """``kadam.experiments.<name>.section.build_section``."""
    return importlib.import_module(f"kadam.experiments.{name}.section").build_section


def build_sections(settings: Settings) -> list[Section]:
    """The report's sections for ``settings``, in report order."""
    return [section_builder(name)(settings) for name in SECTIONS]
