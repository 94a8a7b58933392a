"""Figure plumbing shared by the experiment modules and the CLI: the Agg backend, panels, save-and-close.

matplotlib is imported on first use, so importing an experiment module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

PathLike = TypeVar("PathLike", str, Path)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are written as PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels(rows: int, columns: int, panel_size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure of ``rows × columns`` panels of ``panel_size`` inches each; axes indexed ``[row][column]``."""
    return pyplot().subplots(
        rows, columns, figsize=(panel_size[0] * columns, panel_size[1] * rows), squeeze=False
    )


def save_figure(figure: Any, path: PathLike, *, dpi: int = 120, bbox_tight: bool = False) -> PathLike:
    """Lay out, write ``figure`` to ``path`` as PNG and close it (figures are not kept open); returns ``path``.

    ``bbox_tight`` crops to the drawn content (``bbox_inches="tight"``) instead of ``tight_layout``.
    """
    if bbox_tight:
        figure.savefig(path, dpi=dpi, bbox_inches="tight")
    else:
        figure.tight_layout()
        figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path
