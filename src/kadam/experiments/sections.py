"""A section of the ``kadam reproduce`` report: its cells and how its results become a document.

Each slice's ``section.py`` builds one :class:`Section` from the run's
:class:`~kadam.experiments.profiles.Settings` (``build_section(settings)``); :mod:`kadam.experiments.registry`
lists them in report order. Phase 1 runs ``cells``; phase 2 runs ``followup(results)``, cells that depend on
phase 1's results (the comparison's evaluation of the selected configurations); ``finish`` turns the results into
a :class:`~kadam.experiments.report.SectionDocument` and draws its figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadam.experiments.cells import Cell
from kadam.experiments.profiles import Settings
from kadam.experiments.report import Figure, SectionDocument

__all__ = ["CONFIDENCE", "Section", "Settings", "draw_figure", "p_value_text", "seed_interval", "signed_percent"]


@dataclass
class Section:
    """A report section: its configuration, phase-1 cells, phase-2 cells (built from phase-1 results) and writer.

    ``finish(results_by_key, figures_directory)`` draws the figures and returns the document;
    ``followup_cost`` estimates phase 2's seconds before phase 1 has run (for the ETA).
    """

    name: str
    title: str
    configuration: dict[str, Any]
    cells: list[Cell]
    finish: Callable[[Mapping[str, Any], Path], SectionDocument]
    followup: Callable[[Mapping[str, Any]], list[Cell]] = lambda results: []
    followup_cost: float = 0.0


def draw_figure(figures: Path, name: str, draw: Callable[[str], Any], caption: str, appendix: bool = False) -> Figure:
    """Draw ``figures/name`` with ``draw(path)`` and return it with its caption (``appendix``: shown there)."""
    path = str(figures / name)
    draw(path)
    return Figure(path, caption, appendix)


def p_value_text(p: float) -> str:
    """A p-value as "= 0.03" or "< 0.001"."""
    return "< 0.001" if p < 1e-3 else f"= {p:.2g}"


def signed_percent(value: float | None) -> str:
    """A relative error as "+1.2%" ("—" for None)."""
    return "—" if value is None else f"{100 * value:+.1f}%"


CONFIDENCE = 0.95
"""Coverage of :func:`seed_interval`."""


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and two-sided :data:`CONFIDENCE` Student-t interval ``mean ± t·s/√n`` of ``values`` (one per seed);
    a single value gives the degenerate interval (value, value, value)."""
    count = len(values)
    mean = math.fsum(values) / count
    if count < 2:
        return mean, mean, mean
    from scipy.stats import t

    spread = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (count - 1))
    half = float(t.ppf(0.5 + CONFIDENCE / 2, count - 1)) * spread / math.sqrt(count)
    return mean, mean - half, mean + half
