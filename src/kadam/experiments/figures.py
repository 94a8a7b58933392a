"""Figure plumbing shared by the experiments' plots and the CLI: panels and save.

Figures are :class:`matplotlib.figure.Figure` objects created directly, not through ``pyplot``: they need
no backend (saving a PNG uses the Agg canvas), are never registered with pyplot's figure manager, and leave
a notebook user's backend alone. matplotlib (the ``kadam[experiments]`` extra) is imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

PathLike = TypeVar("PathLike", str, Path)


def new_figure(figsize: tuple[float, float]) -> Any:
    """A new :class:`matplotlib.figure.Figure` of ``figsize`` inches (no pyplot, no backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def panels(rows: int, columns: int, panel_size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure of ``rows × columns`` panels of ``panel_size`` inches each; axes indexed ``[row][column]``."""
    figure = new_figure((panel_size[0] * columns, panel_size[1] * rows))
    return figure, figure.subplots(rows, columns, squeeze=False)


def colormap(name: str) -> Any:
    """The registered matplotlib colormap ``name`` (e.g. "viridis")."""
    import matplotlib

    return matplotlib.colormaps[name]


def save_figure(figure: Any, path: PathLike, *, dpi: int = 120, bbox_tight: bool = False) -> PathLike:
    """Lay out and write ``figure`` to ``path`` as PNG; returns ``path``.

    ``bbox_tight`` crops to the drawn content (``bbox_inches="tight"``) instead of ``tight_layout``.
    """
    if bbox_tight:
        figure.savefig(path, dpi=dpi, bbox_inches="tight")
    else:
        figure.tight_layout()
        figure.savefig(path, dpi=dpi)
    return path
