"""Reading what a figure shows: its legend entries."""

from typing import Any


def legend_texts(figure: Any) -> list[str]:
    """Every entry of every legend of ``figure`` (the axes' legends and the figure's own)."""
    legends = [axis.get_legend() for axis in figure.axes] + list(figure.legends)
    return [text.get_text() for legend in legends if legend is not None for text in legend.get_texts()]
