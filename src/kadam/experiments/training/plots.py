"""Section 4's figures: training curves, the learning-rate grid, paired differences to AdamW."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kadam.experiments.figures import panels, save_figure

__all__ = ["plot_training"]


def _task_panels(tasks: Sequence[str], draw: Callable[[Any, str], None], path: str, legend: bool = True) -> str:
    """One panel per task, at most two per row (readable at a page's width), each drawn by ``draw(axis, task)``;
    saved to ``path``."""
    columns = min(len(tasks), 2)
    rows = -(-len(tasks) // columns)
    figure, axes = panels(rows, columns, (4.6, 3.8))
    flat = [axis for row in axes for axis in row]
    for axis, task in zip(flat, tasks):
        draw(axis, task)
    for axis in flat[len(tasks):]:
        axis.set_visible(False)
    if legend:
        flat[0].legend(fontsize=7)
    save_figure(figure, path, dpi=110)
    return path


def plot_training(summary: Mapping[str, Any], directory: str) -> list[str]:
    """Draw section 4's figures into ``directory``; returns the PNG paths.

    ``training_curves.png``: mean training loss against step per task (evaluation seeds, best rates).
    ``training_lr_grid.png``: validation loss against learning rate per task (tuning grid).
    ``training_vs_adamw.png``: paired test-loss difference to AdamW with its confidence interval.
    """
    tasks = sorted(summary["evaluation"])

    def curves(axis: Any, task: str) -> None:
        for optimizer, curve in sorted(summary["curves"].get(task, {}).items()):
            axis.plot(curve["steps"], curve["loss"], label=optimizer, lw=1.2)
        axis.set(title=task, xlabel="step", ylabel="training loss (window mean)", yscale="log")

    def grid(axis: Any, task: str) -> None:
        for optimizer, chosen in sorted(summary["selection"][task].items()):
            losses = [np.nan if v is None else v for v in chosen["grid"].values()]
            axis.plot([float(lr) for lr in chosen["grid"]], losses, marker="o", ms=3, label=optimizer, lw=1)
        finite = [v for chosen in summary["selection"][task].values() for v in chosen["grid"].values()
                  if v is not None and np.isfinite(v) and v > 0]
        # one diverged rate (a loss far above the rest) would flatten a linear axis
        scale = "log" if finite and max(finite) > 10 * min(finite) else "linear"
        axis.set(title=task, xscale="log", yscale=scale, xlabel="learning rate", ylabel="validation loss (tuning seeds)")

    def versus(axis: Any, task: str) -> None:
        comparisons = summary["versus_adamw"].get(task, {})
        names = [name for name in sorted(comparisons) if comparisons[name]["mean_difference"] is not None]
        means = [comparisons[name]["mean_difference"] for name in names]
        errors = [[m - comparisons[n]["ci_low"] for n, m in zip(names, means)],
                  [comparisons[n]["ci_high"] - m for n, m in zip(names, means)]]
        colors = [("tab:blue" if m < 0 else "tab:red") if comparisons[n]["significant"] else "tab:gray"
                  for n, m in zip(names, means)]
        axis.barh(names, means, xerr=errors, color=colors, capsize=3)
        axis.axvline(0, color="black", lw=0.8)
        axis.set(title=task, xlabel="test loss − AdamW's\n(blue: better, red: worse, CI excludes 0)")
        axis.tick_params(axis="y", labelsize=7)
        axis.locator_params(axis="x", nbins=5)  # long tick labels (−0.075) collide at the default density

    return [
        _task_panels(tasks, curves, os.path.join(directory, "training_curves.png")),
        _task_panels(tasks, grid, os.path.join(directory, "training_lr_grid.png")),
        _task_panels(tasks, versus, os.path.join(directory, "training_vs_adamw.png"), legend=False),
    ]
