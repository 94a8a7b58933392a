"""Section 2's figures: trajectory error against step, and final error against η."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kadam.experiments.figures import panels, save_figure

__all__ = ["plot_accuracy", "plot_convergence", "restarts_drawn"]


_K_STYLES = ("-", "--", "-.", ":")
"""Line style of k = 1, 2, 3, 4, ...: curves of different k that coincide stay distinguishable."""


def restarts_drawn(result: dict[str, Any], restart: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rows of ``restart`` (:func:`~kadam.experiments.flow.protocol.restart_experiment`) that
    :func:`plot_accuracy` draws: restarts after step 0 of a run the accuracy result holds, at its η and seed."""
    if not restart or restart["lr"] != result["lr"] or restart["seed"] != result["seed"]:
        return []
    if not any(row["problem"] == restart["problem"] and row["k"] == restart["k"] for row in result["rows"]):
        return []
    return [row for row in restart["rows"] if row["restart_step"] > 0]


def plot_accuracy(result: dict[str, Any], path: str | Path, restart: dict[str, Any] | None = None) -> Path:
    """Relative error against step, one panel per problem, one line per k (its own line style); the bar dashed
    black and labelled in the legend. With ``restart``, its problem's panel also draws, in grey, the error of the
    model restarted from the discrete run's state at each step s > 0 (:func:`restarts_drawn`), measured against the
    same discrete run and θ₀: where the run from θ₀ rises and the restarted one does not, the rise is the error
    of the first steps carried along, not the model's error in the later ones."""
    problems = list(dict.fromkeys(row["problem"] for row in result["rows"]))
    figure, axes = panels(1, len(problems), (5, 4))
    restarted = restarts_drawn(result, restart)
    for axis, problem in zip(axes[0], problems, strict=True):
        for row in (r for r in result["rows"] if r["problem"] == problem):
            axis.semilogy(
                row["error_curve"]["steps"],
                row["error_curve"]["values"],
                label=f"k = {row['k']}",
                ls=_K_STYLES[(row["k"] - 1) % len(_K_STYLES)],
                zorder=2 + row["k"],
            )
        for index, row in enumerate(restarted if restart and problem == restart["problem"] else []):
            steps, values = row["error_curve"]["steps"], row["error_curve"]["values"]
            kept = [(s, v) for s, v in zip(steps, values) if s >= row["restart_step"] and v > 0]  # 0 before s
            axis.semilogy(
                [s for s, _ in kept],
                [v for _, v in kept],
                color=str(0.35 + 0.2 * index),
                lw=1.2,
                zorder=1,
                label=f"k = {restart['k']}, model restarted from the discrete state at step {row['restart_step']}",
            )
        axis.axhline(result["bar"], color="k", linestyle="--", linewidth=0.8, label=f"{result['bar']:.0%} bar")
        axis.set(title=problem, xlabel="step n", ylabel="‖θ_cont − θ_disc‖ / ‖θ_disc − θ₀‖")
        axis.legend(fontsize=7)
    figure.suptitle(f"continuous vs discrete, lr = {result['lr']}, {result['rates']} rates, order {result['order']}")
    return Path(save_figure(figure, path))


_VARIANT_MARKERS = ("o", "s", "^", "D", "v", "P")
"""One marker per model variant: variants whose errors coincide still show every point."""


def plot_convergence(result: dict[str, Any], path: str | Path) -> Path:
    """Final relative error against lr (log–log) per variant, slopes in the legend, and the first-order
    reference error ∝ η (slope 1) through the first variant's error at the smallest η, grey dashed."""
    figure, axes = panels(1, 1, (5, 4))
    axis = axes[0][0]
    for index, (name, slope) in enumerate(result["slopes"].items()):
        finals = [entry["variants"][name]["final_rel_error"] for entry in result["per_lr"]]
        axis.loglog(
            result["lrs"],
            finals,
            marker=_VARIANT_MARKERS[index % len(_VARIANT_MARKERS)],
            mfc="none",
            label=f"{name}: slope {slope['final']:.2f}",
        )
    first = next(iter(result["slopes"]))
    anchor = min(range(len(result["lrs"])), key=lambda i: result["lrs"][i])
    scale = result["per_lr"][anchor]["variants"][first]["final_rel_error"] / result["lrs"][anchor]
    axis.loglog(
        result["lrs"],
        [scale * lr for lr in result["lrs"]],
        color="gray",
        ls="--",
        lw=0.8,
        zorder=1,
        label=f"slope 1 (first order, through {first})",
    )
    axis.set(
        title=f"{result['problem']}, lr · steps = {result['horizon']}", xlabel="lr η", ylabel="final relative error"
    )
    # label the measured rates only: a log axis spanning under a decade would label its minor ticks on top of each other
    axis.set_xticks(result["lrs"], [f"{lr:g}" for lr in result["lrs"]])
    axis.set_xticks([], minor=True)
    axis.legend(fontsize=8, loc="upper left")  # the errors rise to the right: the upper left is empty
    return Path(save_figure(figure, path))
