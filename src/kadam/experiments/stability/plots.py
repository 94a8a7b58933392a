"""Section 1's figures, one idea each: the (β, γ) map (theory), the measured class of every training run
against both boundaries, measured against predicted growth rates, and validation loss against the margin
within β."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kadam import stability
from kadam.experiments.figures import colormap, new_figure, save_figure

__all__ = ["plot_classification", "plot_region_map", "plot_slopes", "plot_stability_margin"]

_UNSTABLE, _STABLE = "#b2182b", "#2166ac"
"""Measured unstable / measured stable (a red and a blue that stay apart in grey-scale too)."""
_BETA_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
"""Distinct colours for the few values of β (a categorical legend, never a colour bar)."""


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
    filled = axes.contourf(
        one_minus_beta,
        one_minus_gamma,
        np.where(np.isfinite(log_bound), log_bound, np.nan),
        levels=np.arange(0.0, 4.01, 0.25),
        cmap="viridis",
        extend="max",
    )
    axes.contour(
        one_minus_beta, one_minus_gamma, log_bound, levels=[0.5, 1.0, 1.5, 2.0, 3.0], colors="white", linewidths=0.6
    )
    figure.colorbar(filled, ax=axes, label="log10 B_inf (exact sup of |u|, THEORY §2)")
    axes.contourf(
        one_minus_beta, one_minus_gamma, np.isfinite(log_bound).astype(float), levels=[-0.5, 0.5], colors="0.85"
    )
    axes.fill([], [], color="0.85", label="unstable (B_inf infinite)")  # legend entries for the unlabelled artists
    axes.plot([], [], color="white", lw=0.6, label="log10 B_inf = 0.5, 1, 1.5, 2, 3")
    _draw_boundaries(axes, 1.0 - one_minus_beta, log_one_minus=True)
    for index, (beta, gamma) in enumerate(presets):
        axes.plot(1.0 - beta, 1.0 - gamma, "k*", ms=11, label="common presets (beta, gamma)" if index == 0 else None)
        axes.annotate(
            f"({beta}, {gamma})", (1.0 - beta, 1.0 - gamma), textcoords="offset points", xytext=(6, 4), fontsize=8
        )
    axes.set(xscale="log", yscale="log", xlabel="1 - beta", ylabel="1 - gamma", ylim=(one_minus_gamma[0], 1.0))
    axes.set_title("Stable region of Adam's (beta, gamma); grey: unstable", fontsize=10)
    axes.legend(loc="lower right", fontsize=8, facecolor="0.6", framealpha=0.9)  # dark enough to show the white contour
    save_figure(figure, path, dpi=130)


def _symlog_x(axes: Any, threshold: float = 0.01) -> None:
    axes.set_xscale("symlog", linthresh=threshold, linscale=0.6)


def plot_classification(result: Mapping[str, Any], path: str) -> None:
    """One panel per learning rate: every training-protocol run at (predicted rate ρ, β), one marker per seed.

    x is ρ = ln β − ½ ln γ on a symmetric-log axis (γ = β² at 0; the paper's boundary γ = β/(2−β) drawn as a
    magenta tick on each β's row, at its ρ); filled red: measured unstable in the late phase (the criterion),
    open blue: not; a black ring marks a diverged run. The legend sits below the panels, covering none.
    """
    learning_rates = result["learning_rates"]
    betas = sorted({row["beta"] for row in result["rows"]})
    seeds = sorted({row["seed"] for row in result["rows"]})
    figure = new_figure((4.2 * len(learning_rates), 0.55 * len(betas) + 2.4))
    axes_row = figure.subplots(1, len(learning_rates), squeeze=False, sharey=True)[0]
    for axes, lr in zip(axes_row, learning_rates):
        for row in (r for r in result["rows"] if r["learning_rate"] == lr):
            y = betas.index(row["beta"]) + 0.15 * (seeds.index(row["seed"]) - (len(seeds) - 1) / 2)
            unstable = row["late_unstable"]
            axes.plot(
                row["predicted_rate"],
                y,
                "o",
                ms=7,
                mec=_UNSTABLE if unstable else _STABLE,
                mfc=_UNSTABLE if unstable else "none",
                mew=1.4,
            )
            if row["diverged"]:
                axes.plot(row["predicted_rate"], y, "o", ms=12, mfc="none", mec="k", mew=1.0)
        for index, beta in enumerate(betas):
            rho_paper = float(stability.growth_rate(beta, stability.boundary_gamma(beta, "paper")))
            axes.plot([rho_paper, rho_paper], [index - 0.4, index + 0.4], color="m", lw=2)
        axes.axvline(0.0, color="r", lw=1.5)
        _symlog_x(axes)
        axes.set(xlabel="predicted rate ln(beta) - ln(gamma)/2 per step", title=f"lr = {lr:g}")
        axes.grid(axis="x", color="0.9")
    axes_row[0].set_yticks(range(len(betas)), [f"beta = {b:g}" for b in betas])
    axes_row[0].set_ylim(-0.7, len(betas) - 0.3)
    handles = [
        axes_row[0].plot([], [], "o", mfc=_UNSTABLE, mec=_UNSTABLE, label="measured unstable (late phase)")[0],
        axes_row[0].plot([], [], "o", mfc="none", mec=_STABLE, label="measured stable")[0],
        axes_row[0].plot([], [], "o", ms=12, mfc="none", mec="k", label="loss diverged")[0],
        axes_row[0].plot([], [], "r-", label="gamma = beta^2 (rate 0)")[0],
        axes_row[0].plot([], [], "m-", lw=2, label="gamma = beta/(2-beta) (paper)")[0],
    ]
    figure.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    figure.suptitle(
        "Training runs: measured class against both boundaries (one marker per seed; right of 0 = outside)", fontsize=10
    )
    figure.subplots_adjust(bottom=0.3, wspace=0.08)
    save_figure(figure, path, dpi=120, bbox_tight=True)


def plot_slopes(switch_off: Mapping[str, Any] | None, rates: Sequence[Mapping[str, Any]], path: str) -> None:
    """Measured against predicted slope of ln|u| per step, two panels on the same axes' meaning.

    Left, the exactness check: the switch-off protocol (k = 1 and the final update of k = 2). Right, the paper's
    claim in training: the late-phase slope of ln ‖u_n‖_∞, mean over seeds with its interval as an error bar,
    one colour per learning rate, at the points outside γ > β² where growth is predicted
    (:func:`kadam.experiments.stability.analysis.growth_rates`).
    """
    figure = new_figure((11.0, 4.8))
    left, right = figure.subplots(1, 2)
    if switch_off is not None:
        for k, marker, label in ((1, "o", "switch-off, k = 1"), (2, "^", "switch-off, k = 2 (final update)")):
            rows = [row for row in switch_off["rows"] if len(row["betas"]) == k]
            left.plot(
                [r["predicted_slope"] for r in rows],
                [r["measured_slope"] for r in rows],
                marker,
                ls="none",
                mfc="none",
                label=label,
            )
    left.set(
        title="Exactness check: the optimizer alone",
        xlabel="predicted ln(beta) - ln(gamma)/2 per step",
        ylabel="measured slope of ln|u_n| per step",
    )
    learning_rates = sorted({r["learning_rate"] for r in rates}, reverse=True)
    colours = colormap("viridis")(np.linspace(0.0, 0.8, max(len(learning_rates), 1)))
    diverged = colormap("Reds")(0.9)
    for offset, (lr, colour) in enumerate(zip(learning_rates, colours)):
        chosen = [
            r
            for r in rates
            if r["learning_rate"] == lr and r["late_slope"]["mean"] is not None and r["predicted_rate"] > 0
        ]
        x = np.array([r["predicted_rate"] for r in chosen]) * (1 + 0.02 * offset)  # equal rates side by side
        y = np.array([r["late_slope"]["mean"] for r in chosen])
        low = np.array(
            [r["late_slope"]["low"] if r["late_slope"]["low"] is not None else r["late_slope"]["mean"] for r in chosen]
        )
        high = np.array(
            [
                r["late_slope"]["high"] if r["late_slope"]["high"] is not None else r["late_slope"]["mean"]
                for r in chosen
            ]
        )
        right.errorbar(
            x,
            y,
            yerr=[y - low, high - y],
            fmt="s",
            ms=4,
            color=colour,
            capsize=2,
            label=f"training, late phase, lr = {lr:g}",
        )
        blown = [index for index, r in enumerate(chosen) if r.get("diverged")]
        right.plot(x[blown], y[blown], "o", ms=11, mfc="none", mec=diverged, mew=1.2, ls="none")
    right.plot([], [], "o", ms=11, mfc="none", mec=diverged, mew=1.2, ls="none", label="a seed's loss diverged")
    for axes in (left, right):
        limits = axes.get_xlim()
        span = np.array([min(limits[0], 0.0), max(limits[1], 0.0)])  # the identity from the boundary outwards
        axes.set_xlim(span[0] - 0.02 * (span[1] - span[0]), span[1] + 0.02 * (span[1] - span[0]))
        axes.plot(span, span, "k-", lw=0.8, label="measured = predicted")
        axes.axhline(0.0, color="0.6", lw=0.6, ls="--", label="measured slope 0 (no growth)")
        axes.axvline(0.0, color="r", lw=0.8, label="gamma = beta^2 (predicted 0)")
        axes.legend(fontsize=7, loc="upper left")
    right.set(
        title="The paper's claim in training: outside gamma = beta^2",
        xlabel="predicted ln(beta) - ln(gamma)/2 per step",
        ylabel="measured slope of ln||u_n||_inf per step (mean, interval over seeds)",
    )
    save_figure(figure, path, dpi=120, bbox_tight=True)


def plot_stability_margin(analysis: Mapping[str, Any], path: str) -> str:
    """Validation loss against the margin ½ ln γ − ln β, one panel per learning rate, one colour per β.

    Only the runs that trained are drawn (:func:`kadam.experiments.stability.analysis.margin_analysis`'s rule),
    one dot per seed and a line through the mean over seeds at each γ; each panel's title counts the runs that
    did not train and those that diverged, which are not drawn (so no outlier squashes the axis).
    """
    runs = analysis["runs"]
    learning_rates = sorted({run["lr"] for run in runs}, reverse=True)
    betas = sorted({run["beta"] for run in runs})
    colour = {beta: _BETA_COLOURS[i % len(_BETA_COLOURS)] for i, beta in enumerate(betas)}
    figure = new_figure((4.4 * max(len(learning_rates), 1), 4.2))
    axes_row = figure.subplots(1, max(len(learning_rates), 1), squeeze=False)[0]
    for axes, lr in zip(axes_row, learning_rates):
        chosen = [run for run in runs if run["lr"] == lr]
        trained = [run for run in chosen if run["trained"]]
        for beta in betas:
            mine = [run for run in trained if run["beta"] == beta]
            if not mine:
                continue
            axes.plot(
                [r["margin"] for r in mine],
                [r["validation_loss"] for r in mine],
                "o",
                ms=4,
                color=colour[beta],
                alpha=0.7,
            )
            margins = sorted({r["margin"] for r in mine})
            means = [np.mean([r["validation_loss"] for r in mine if r["margin"] == m]) for m in margins]
            axes.plot(margins, means, "-", color=colour[beta], lw=1.2)
        axes.axvline(0.0, color="r", lw=1)
        untrained = sum(not run["trained"] and not run["diverged"] for run in chosen)
        diverged = sum(run["diverged"] for run in chosen)
        axes.set(
            title=f"lr = {lr:g}: {len(trained)} trained; not drawn: {untrained} untrained, {diverged} diverged",
            xlabel="margin ln(gamma)/2 - ln(beta) per step",
            ylabel="final validation loss",
        )
        axes.title.set_fontsize(8)
        if not trained:
            axes.text(0.5, 0.5, "no run trained", transform=axes.transAxes, ha="center")
    handles = [axes_row[0].plot([], [], "o-", color=colour[beta], label=f"beta = {beta:g}")[0] for beta in betas]
    handles.append(axes_row[0].plot([], [], "r-", label="gamma = beta^2 (margin 0)")[0])
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.subplots_adjust(bottom=0.25, wspace=0.3)
    save_figure(figure, path, dpi=110, bbox_tight=True)
    return path
