"""Figures of the transfer section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kadam.experiments.figures import panels, save_figure

_VARIANT_STYLES = (("--", "o"), (":", "s"), ("-.", "^"))
"""Dash pattern and marker per beta rule: transferred curves lying on each other (and on the base) all stay visible."""


def plot_lr_transfer(result: Mapping[str, Any], path: str) -> str:
    """Loss against t = η·step at η and at c·η (transferred, paper-rate, naive betas), one panel per c; the
    base run wide and grey underneath, each rule with its own dash pattern and staggered markers on top."""
    rows = result["rows"]
    figure, axes = panels(1, len(rows), (4.5, 3.5))
    base = result["base_loss_curve"]
    base_t = [result["horizon"] * i / (len(base) - 1) for i in range(len(base))]
    for axis, row in zip(axes[0], rows, strict=True):
        axis.plot(base_t, base, color="k", linewidth=2.5, alpha=0.6, label=f"η = {result['lr']:g}", zorder=2)
        count = len(row["variants"])
        for index, (name, variant) in enumerate(row["variants"].items()):
            curve = variant["loss_curve"]
            style, marker = _VARIANT_STYLES[index % len(_VARIANT_STYLES)]
            every = max(count, len(curve) // 8)  # at least one step per rule: the offsets differ
            axis.plot(
                [result["horizon"] * i / (len(curve) - 1) for i in range(len(curve))],
                curve,
                ls=style,
                lw=1.5,
                marker=marker,
                ms=4,
                mfc="none",
                markevery=(index * every // count, every),
                zorder=3,
                label=f"{row['factor']}η, {name} betas (gap {variant['loss_gap']:.2g})",
            )
        axis.set(
            title=f"{result['problem']}, c = {row['factor']}",
            xlabel="t = η · step",
            ylabel="full-batch loss",
            yscale="log",
        )
        axis.legend(fontsize=7)
    return save_figure(figure, path)


def plot_batch_transfer(task: str, base: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], path: str) -> str:
    """Validation loss against samples seen: the base batch and each (κ, rule), one panel per rule."""
    rules = list(dict.fromkeys(run["rule"] for run in runs))
    figure, axes = panels(1, len(rules), (4.5, 3.5))
    for axis, rule in zip(axes[0], rules, strict=True):
        axis.plot(base["samples_seen"], base["validation_loss"], color="k", linewidth=2, label=f"batch {base['batch']}")
        for run in (r for r in runs if r["rule"] == rule):
            axis.plot(
                run["samples_seen"][: len(run["validation_loss"])],
                run["validation_loss"],
                "--",
                label=f"batch {run['batch']} (lr {run['lr']:.3g})",
            )
        axis.set(title=f"{task}: {rule}", xlabel="samples seen", ylabel="validation loss")
        axis.legend(fontsize=7)
    return save_figure(figure, path)
