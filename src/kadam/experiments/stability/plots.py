"""Section 1's figures: the (β, γ) map, the training-protocol heatmaps, measured vs predicted slopes, and
validation loss against the stability margin."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kadam.experiments.figures import colormap, new_figure, save_figure
from kadam import stability

__all__ = [
    "plot_excess_by_learning_rate",
    "plot_region_map",
    "plot_slope_scatter",
    "plot_stability_margin",
    "plot_training_heatmaps",
]


def _draw_boundaries(axes: Any, betas: np.ndarray, *, log_one_minus: bool = False) -> None:
    """γ = β² and γ = β/(2−β) on (β, γ) axes, or on (1−β, 1−γ) axes when ``log_one_minus``."""
    curves = (("discrete", "r-", "gamma = beta^2 (exact)"), ("paper", "m--", "gamma = beta/(2-beta) (paper)"))
    for rates, style, label in curves:
        gammas = np.asarray(stability.boundary_gamma(betas, rates))
        if log_one_minus:
            axes.plot(1.0 - betas, 1.0 - gammas, style, lw=2, label=label)
        else:
            axes.plot(betas, gammas, style, lw=2, label=label)


def plot_region_map(path: str, presets: Sequence[tuple[float, float]] = stability.PRESETS) -> None:
    """The (β, γ) map on log axes of 1 − β and 1 − γ: log10 B_∞ contours, both boundaries, ``presets`` marked."""
    one_minus_beta = np.logspace(-3, 0, 400)[:-1]
    one_minus_gamma = np.logspace(-5, 0, 400)[:-1]
    beta_grid, gamma_grid = np.meshgrid(1.0 - one_minus_beta, 1.0 - one_minus_gamma)
    log_bound = np.asarray(stability.update_bound(beta_grid, gamma_grid, log=True)) / math.log(10.0)
    figure = new_figure((7.5, 6.0))
    axes = figure.subplots()
    filled = axes.contourf(one_minus_beta, one_minus_gamma, np.where(np.isfinite(log_bound), log_bound, np.nan),
                           levels=np.arange(0.0, 4.01, 0.25), cmap="viridis", extend="max")
    axes.contour(one_minus_beta, one_minus_gamma, log_bound, levels=[0.5, 1.0, 1.5, 2.0, 3.0], colors="white",
                 linewidths=0.6)
    figure.colorbar(filled, ax=axes, label="log10 B_inf (exact sup of |u|, THEORY §2)")
    axes.contourf(one_minus_beta, one_minus_gamma, np.isfinite(log_bound).astype(float), levels=[-0.5, 0.5],
                  colors="0.85")
    axes.fill([], [], color="0.85", label="unstable (B_inf infinite)")  # legend entries for the unlabelled artists
    axes.plot([], [], color="white", lw=0.6, label="log10 B_inf = 0.5, 1, 1.5, 2, 3")
    _draw_boundaries(axes, 1.0 - one_minus_beta, log_one_minus=True)
    for index, (beta, gamma) in enumerate(presets):
        axes.plot(1.0 - beta, 1.0 - gamma, "k*", ms=11, label="common presets (beta, gamma)" if index == 0 else None)
        axes.annotate(f"({beta}, {gamma})", (1.0 - beta, 1.0 - gamma), textcoords="offset points", xytext=(6, 4),
                      fontsize=8)
    axes.set(xscale="log", yscale="log", xlabel="1 - beta", ylabel="1 - gamma", ylim=(one_minus_gamma[0], 1.0))
    axes.set_title("Stable region of Adam's (beta, gamma); grey: unstable", fontsize=10)
    axes.legend(loc="lower right", fontsize=8, facecolor="0.6", framealpha=0.9)  # dark enough to show the white contour
    save_figure(figure, path, dpi=130)


def _cell_edges(values: Sequence[float]) -> np.ndarray:
    """Edges of heatmap cells centred on sorted ``values`` (midpoints, half-cells at the ends, clipped to [0, 1])."""
    centres = np.asarray(sorted(values), dtype=np.float64)
    if centres.size == 1:
        return np.clip(centres[0] + np.array([-0.05, 0.05]), 0.0, 1.0)
    middles = (centres[1:] + centres[:-1]) / 2.0
    return np.clip(np.concatenate([[2 * centres[0] - middles[0]], middles, [2 * centres[-1] - middles[-1]]]), 0.0, 1.0)


def plot_training_heatmaps(result: dict[str, Any], path: str) -> None:
    """One heatmap per learning rate: log10 of max_n ‖u_n‖_∞ / C_n(β) per (β, γ), measured class, both boundaries.

    Runs within the bound (ratio ≤ 1, log10 ≤ 0) are drawn in one light blue, outside the red scale, so "stable"
    never shares a colour with "unstable"; the red scale starts at log10 = 0 (just over the bound).
    """
    betas, gammas, learning_rates = sorted(result["betas"]), sorted(result["gammas"]), result["learning_rates"]
    logs = [math.log10(max(row["excess"], 1e-3)) for row in result["rows"] if math.isfinite(row["excess"])]
    top = max(1.0, max(logs, default=1.0))
    scale = colormap("Reds").with_extremes(under="#d6e6f5", bad="#bbbbbb")
    figure = new_figure((4.8 * min(len(learning_rates), 2), 5.0 * math.ceil(len(learning_rates) / 2)))
    axes_grid = figure.subplots(math.ceil(len(learning_rates) / 2), min(len(learning_rates), 2), squeeze=False)
    flat = [axes for row in axes_grid for axes in row]
    figure.subplots_adjust(hspace=0.35, wspace=0.3)
    image = None
    for axes, lr in zip(flat, learning_rates):
        excess = np.full((len(gammas), len(betas)), np.nan)
        for row in result["rows"]:
            if row["learning_rate"] == lr:
                value = math.log10(max(row["excess"], 1e-3)) if math.isfinite(row["excess"]) else math.nan
                # within the bound: below vmin, drawn in the "under" colour
                excess[gammas.index(row["gamma"]), betas.index(row["beta"])] = value if value > 0 else -1.0
                dark = math.isfinite(value) and value > 0.6 * top
                axes.text(row["beta"], row["gamma"], "U" if row["unstable"] else "s", ha="center", va="center",
                          color="white" if dark else "black", fontsize=9, fontweight="bold")
        image = axes.pcolormesh(_cell_edges(betas), _cell_edges(gammas), np.ma.masked_invalid(excess), cmap=scale,
                                vmin=0.0, vmax=top, shading="flat")
        curve = np.linspace(_cell_edges(betas)[0], min(_cell_edges(betas)[-1], 0.9999), 200)
        _draw_boundaries(axes, curve)
        axes.set(xlabel="beta", ylabel="gamma", title=f"lr = {lr:g}", ylim=(_cell_edges(gammas)[0], _cell_edges(gammas)[-1]))
    for axes in flat[len(learning_rates):]:
        axes.set_visible(False)
    flat[0].legend(loc="lower right", fontsize=7)
    figure.colorbar(image, ax=flat[: len(learning_rates)], extend="min",
                    label="log10 max_n ||u_n||_inf / C_n(beta); light blue: within the bound")
    figure.suptitle("Training protocol: U = measured unstable, s = not")
    save_figure(figure, path, dpi=120, bbox_tight=True)


def plot_excess_by_learning_rate(result: dict[str, Any], path: str) -> None:
    """max_n ‖u_n‖_∞ / C_n(β) against η, one line per (β, γ): does measured instability fade as η shrinks?"""
    figure = new_figure((6.4, 5.0))
    axes = figure.subplots()
    points = sorted({(row["beta"], row["gamma"]) for row in result["rows"]})
    colours = colormap("plasma")(np.linspace(0.0, 0.85, len(points)))
    for (beta, gamma), colour in zip(points, colours):
        rows = sorted((row for row in result["rows"] if (row["beta"], row["gamma"]) == (beta, gamma)),
                      key=lambda row: row["learning_rate"])
        stable = stability.is_stable(beta, gamma)
        axes.plot([row["learning_rate"] for row in rows], [row["excess"] for row in rows], "-" if not stable else ":",
                  marker="o" if not stable else ".", color=colour,
                  label=f"({beta:g}, {gamma:g}) rho = {float(stability.growth_rate(beta, gamma)):+.3f}")
    axes.axhline(1.0, color="k", lw=1.0, label="update bound C_n(beta) (ratio 1)")
    axes.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="max_n ||u_n||_inf / C_n(beta)",
             title="Above 1: an update no stable gamma allows")
    axes.legend(fontsize=6, ncol=2)
    save_figure(figure, path, dpi=130)


def plot_slope_scatter(switch_off: dict[str, Any] | None, training: dict[str, Any] | None, path: str) -> None:
    """Measured against predicted slope of ln|u|: switch-off points (k = 1, k = 2) and training late-phase slopes."""
    figure = new_figure((6.4, 5.6))
    axes = figure.subplots()
    predicted_all: list[float] = []
    if switch_off is not None:
        for k, marker, label in ((1, "o", "switch-off, k = 1"), (2, "^", "switch-off, k = 2 (final update)")):
            rows = [row for row in switch_off["rows"] if len(row["betas"]) == k]
            predicted = [row["predicted_slope"] for row in rows]
            axes.plot(predicted, [row["measured_slope"] for row in rows], marker, ls="none", mfc="none", label=label)
            predicted_all += predicted
    if training is not None:
        colours = colormap("viridis")(np.linspace(0.0, 0.9, len(training["learning_rates"])))
        count = len(training["learning_rates"])
        for index, (lr, colour) in enumerate(zip(training["learning_rates"], colours)):
            rows = [row for row in training["rows"] if row["learning_rate"] == lr]
            predicted = [row["predicted_rate"] for row in rows]
            size = 4 + 2.5 * (count - 1 - index)  # drawn large to small: markers of equal slopes nest, none hidden
            axes.plot(predicted, [row["late_phase_slope"] for row in rows], "s", ls="none", color=colour, ms=size,
                      label=f"training, late-phase slope, lr = {lr:g}")
            axes.plot(predicted, [row["peak_window_slope"] for row in rows], "D", ls="none", color=colour, ms=size,
                      mfc="none", label=f"training, steepest 20-step slope, lr = {lr:g}")
            predicted_all += predicted
    if predicted_all:
        span = np.array([min(predicted_all), max(predicted_all)])
        axes.plot(span, span, "k-", lw=0.8, label="measured = predicted")
    axes.axhline(0.0, color="0.6", lw=0.6, ls="--", label="measured slope 0 (no growth)")
    axes.axvline(0.0, color="0.6", lw=0.6, label="predicted rate 0 (boundary gamma = beta^2)")
    axes.set(xlabel="predicted rate ln(beta) - ln(gamma)/2 (per step)", ylabel="measured slope of ln ||u_n||_inf (per step)",
             title="Growth rate of the update: measured vs predicted")
    axes.legend(fontsize=7)
    save_figure(figure, path, dpi=130)


def plot_stability_margin(correlation: Mapping[str, Any], path: str) -> str:
    """Final validation loss against the margin ½ ln γ − ln β, one panel per learning rate (the boundary at 0)."""
    panels = correlation["per_learning_rate"]
    columns = min(len(panels), 2)
    figure = new_figure((4.6 * columns, 3.6 * math.ceil(len(panels) / 2)))
    axes = figure.subplots(math.ceil(len(panels) / 2), columns, squeeze=False)
    for axis in [a for row in axes for a in row][len(panels):]:
        axis.set_visible(False)
    for axis, panel in zip([a for row in axes for a in row], panels):
        points = [p for p in panel["points"] if p["validation_loss"] is not None and math.isfinite(p["validation_loss"])]
        kept = [p for p in points if not p["diverged"]]
        scatter = axis.scatter([p["margin"] for p in kept], [p["validation_loss"] for p in kept],
                               c=[p["beta"] for p in kept], cmap="viridis", vmin=0.0, vmax=1.0, s=22)
        diverged = [p for p in points if p["diverged"]]
        if diverged:
            axis.scatter([p["margin"] for p in diverged], [p["validation_loss"] for p in diverged], marker="x",
                         color="red", s=40, label="diverged")
        losses = [p["validation_loss"] for p in points]
        if losses and min(losses) > 0 and max(losses) > 10 * min(losses):
            axis.set_yscale("log")  # one diverged run would flatten a linear axis
        axis.axvline(0.0, color="red", lw=1, label="boundary γ = β²")
        rho = "—" if panel["spearman_rho"] is None else f"{panel['spearman_rho']:+.2f} (p = {panel['p_value']:.1e})"
        axis.set(title=f"lr = {panel['lr']:g}: Spearman ρ {rho}", xlabel="margin ½ ln γ − ln β (per step)",
                 ylabel="final validation loss")
        axis.title.set_fontsize(9)
        figure.colorbar(scatter, ax=axis, label="β")
    axes[0][0].legend(fontsize=7)
    save_figure(figure, path, dpi=110)
    return path
