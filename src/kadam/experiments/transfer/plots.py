"""Figures of the transfer section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kadam.experiments.figures import panels, save_figure

_MARKERS = ("o", "s", "^", "v", "D", "P", "X")
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


def plot_regret(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    """Regret (mean, 95% interval) against the batch factor κ, one line per rule, one panel per (workload, regime);
    the tolerance as a shaded band around zero; κ on a log axis, each rule nudged sideways so bars stay apart."""
    panels_keys = list(dict.fromkeys((row["workload"], row["regime"]) for row in rows))
    rules = list(dict.fromkeys(row["rule"] for row in rows))
    columns = min(3, len(panels_keys)) or 1
    figure, axes = panels(-(-len(panels_keys) // columns), columns, (4.8, 3.6))
    for axis, (workload, regime) in zip(axes.flat, panels_keys):
        mine = [row for row in rows if row["workload"] == workload and row["regime"] == regime]
        tolerance = max(row["tolerance"] for row in mine)
        axis.axhspan(-tolerance, tolerance, color="0.85", zorder=0)
        axis.axhline(0.0, color="k", linewidth=0.8)
        for index, rule in enumerate(rules):
            points = sorted((row for row in mine if row["rule"] == rule), key=lambda row: row["factor"])
            nudge = 1.0 + 0.035 * (index - (len(rules) - 1) / 2)
            x = [row["factor"] * nudge for row in points]
            y = [row["regret"] for row in points]
            errors = [[row["regret"] - row["low"] for row in points], [row["high"] - row["regret"] for row in points]]
            axis.errorbar(x, y, yerr=errors, marker=_MARKERS[index % len(_MARKERS)], ms=4, capsize=2, lw=1, label=rule)
        axis.set(
            xscale="log", title=f"{workload}, equal {regime}", xlabel="batch factor κ", ylabel="regret (test loss)"
        )
        axis.set_yscale("symlog", linthresh=max(tolerance, 1e-3))
    for axis in list(axes.flat)[len(panels_keys) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    return save_figure(figure, path)


def plot_tuned_lr(surges: Mapping[str, Mapping[str, Any]], config: Any, path: str) -> str:
    """Tuned lr against the batch size per workload (log–log), with the square-root and linear predictions
    from the base batch's tuned lr."""
    figure, axes = panels(1, 1, (5.0, 3.8))
    axis = axes[0][0]
    for index, (workload, surge) in enumerate(surges.items()):
        factors = sorted(surge["tuned_lr"])
        batches = [config.base_batch * f for f in factors]
        tuned = [surge["tuned_lr"][f] for f in factors]
        line = axis.plot(
            batches, tuned, marker=_MARKERS[index % len(_MARKERS)], label=f"{workload} ({surge['verdict']})"
        )
        base = surge["tuned_lr"][1]
        colour = line[0].get_color()
        axis.plot(batches, [base * f**0.5 for f in factors], ls=":", color=colour, lw=1)
        axis.plot(batches, [base * f for f in factors], ls="--", color=colour, lw=0.8, alpha=0.6)
    axis.set(
        xscale="log", yscale="log", xlabel="batch size", ylabel="tuned lr", title="dotted: √κ, dashed: κ from the base"
    )
    axis.legend(fontsize=7)
    return save_figure(figure, path)
