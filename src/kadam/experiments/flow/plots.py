"""Section 2's figures: trajectory error against step, and final error against η."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kadam.experiments.figures import panels, save_figure

__all__ = ["plot_accuracy", "plot_convergence"]


def plot_accuracy(result: dict[str, Any], path: str | Path) -> Path:
    """Relative error against step, one panel per problem, one line per k; the 1% bar dashed."""
    problems = list(dict.fromkeys(row["problem"] for row in result["rows"]))
    figure, axes = panels(1, len(problems), (5, 4))
    for axis, problem in zip(axes[0], problems, strict=True):
        for row in (r for r in result["rows"] if r["problem"] == problem):
            axis.semilogy(row["error_curve"]["steps"], row["error_curve"]["values"], label=f"k = {row['k']}")
        axis.axhline(result["bar"], color="k", linestyle="--", linewidth=0.8)
        axis.set(title=problem, xlabel="step n", ylabel="‖θ_cont − θ_disc‖ / ‖θ_disc − θ₀‖")
        axis.legend()
    figure.suptitle(f"continuous vs discrete, lr = {result['lr']}, {result['rates']} rates, order {result['order']}")
    return Path(save_figure(figure, path))


def plot_convergence(result: dict[str, Any], path: str | Path) -> Path:
    """Final relative error against lr (log–log) per variant, slopes in the legend."""
    figure, axes = panels(1, 1, (5, 4))
    axis = axes[0][0]
    for name, slope in result["slopes"].items():
        finals = [entry["variants"][name]["final_rel_error"] for entry in result["per_lr"]]
        axis.loglog(result["lrs"], finals, marker="o", label=f"{name}: slope {slope['final']:.2f}")
    axis.set(title=f"{result['problem']}, lr · steps = {result['horizon']}", xlabel="lr η", ylabel="final relative error")
    # label the measured rates only: a log axis spanning under a decade would label its minor ticks on top of each other
    axis.set_xticks(result["lrs"], [f"{lr:g}" for lr in result["lrs"]])
    axis.set_xticks([], minor=True)
    axis.legend()
    return Path(save_figure(figure, path))

