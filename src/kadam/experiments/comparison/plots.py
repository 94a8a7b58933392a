"""Figures of the comparison section (drawn from :func:`kadam.experiments.comparison.analysis.analyse`'s
output; matplotlib through :mod:`kadam.experiments.figures`, Agg backend, closed after saving)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kadam.experiments.figures import colormap, panels, save_figure

__all__ = [
    "CAPTIONS",
    "FOREST_VERDICTS",
    "draw_all",
    "forest_verdict",
    "plot_curves",
    "plot_sensitivity",
    "plot_forest",
    "plot_lr_ratio",
    "plot_performance_profile",
]

CAPTIONS = {
    "comparison_curves.png": "Training loss (window means) of every arm at its best configuration: median over the "
    "evaluation seeds (line) and their range (band); black dashed: the target from AdamW. An arm whose "
    "curve equals another's (the k = 1 control and AdamW) is drawn dashed on top and labelled "
    '"identical to".',
    "comparison_lr_sensitivity.png": "Validation loss against peak learning rate, each arm's other hyperparameters "
    "at their best (tuning seed): where each arm's cliff sits. Missing points diverged.",
    "comparison_forest.png": "Paired test-loss difference to AdamW (negative: better than AdamW) with Bonferroni-"
    "adjusted simultaneous intervals; green: significantly better than AdamW, red: significantly worse, "
    "grey with an open marker: not significant after Holm; the black line is no difference.",
    "comparison_lr_ratio.png": "Best peak learning rate of each arm divided by AdamW's, per workload (full search).",
    "comparison_performance_profile.png": "Performance profile (Dolan–Moré) of median steps to AdamW's target: share "
    "of workloads on which an arm is within a factor τ of the fastest arm.",
}


def _arm_colors(arms: list[str]) -> dict[str, Any]:
    palette = colormap("tab10" if len(arms) <= 10 else "tab20")
    return {arm: palette(i % palette.N) for i, arm in enumerate(sorted(arms))}


def _all_arms(analysis: Mapping[str, Any]) -> list[str]:
    return sorted(
        {arm for entry in analysis["workloads"].values() for arm in entry.get("search", {}).get("selection", {})}
    )


def _reference_first(arms: Iterable[str], reference: str) -> list[str]:
    """``arms`` with ``reference`` moved to the front (drawn first, so an arm equal to it is drawn over it)."""
    arms = list(arms)
    return sorted(arms, key=lambda arm: arm != reference)


def _twins(series: Mapping[str, Any]) -> dict[str, str]:
    """Each arm whose series equals (exactly) that of an arm before it in ``series``' order → that earlier arm."""
    twins: dict[str, str] = {}
    originals: dict[str, Any] = {}  # arms drawn so far that equal no earlier arm
    for arm, values in series.items():
        twin = next((earlier for earlier, earlier_values in originals.items() if values == earlier_values), None)
        if twin is None:
            originals[arm] = values
        else:
            twins[arm] = twin
    return twins


def _arm_label(arm: str, analysis: Mapping[str, Any], twins: Mapping[str, str]) -> str:
    """The arm's name, "(control)" for the k = 1 control, and "identical to X" when its line lies on X's."""
    notes = (["control"] if arm == analysis["control"] else []) + (
        [f"identical to {twins[arm]}"] if arm in twins else []
    )
    return arm + (f" ({'; '.join(notes)})" if notes else "")


def _arm_style(arm: str, twins: Mapping[str, str]) -> dict[str, Any]:
    """A line equal to an earlier one is drawn dashed, thinner and on top, so both stay visible."""
    return {"ls": "--", "lw": 1.0, "zorder": 3} if arm in twins else {"ls": "-", "lw": 1.4, "zorder": 2}


def plot_curves(analysis: Mapping[str, Any], path: str) -> str:
    """Median training loss per arm with its min–max band; the AdamW target as a labelled dashed line; an arm
    whose median equals another's (the k = 1 control and AdamW) dashed on top and labelled "identical to"."""
    workloads = [w for w, e in analysis["workloads"].items() if "arms" in e.get("search", {})]
    figure, axes = panels(1, max(len(workloads), 1), (4.5, 3.4))
    colors = _arm_colors(_all_arms(analysis))
    for axis, workload in zip(axes[0], workloads):
        block = analysis["workloads"][workload]["search"]
        curves = {
            arm: block["arms"][arm]["curve"]
            for arm in _reference_first(block["arms"], analysis["reference"])
            if block["arms"][arm]["curve"] is not None
        }
        twins = _twins({arm: curve["median"] for arm, curve in curves.items()})
        for arm, curve in curves.items():
            axis.plot(
                curve["steps"],
                curve["median"],
                color=colors[arm],
                label=_arm_label(arm, analysis, twins),
                **_arm_style(arm, twins),
            )
            axis.fill_between(curve["steps"], curve["min"], curve["max"], color=colors[arm], alpha=0.15, lw=0)
        if block.get("target_train_loss") is not None:
            axis.axhline(
                block["target_train_loss"],
                color="k",
                ls="--",
                lw=0.8,
                label=f"AdamW target loss ({block['target_train_loss']:.3g})",
            )
        if all(v > 0 for s in block["arms"].values() if s["curve"] for v in s["curve"]["min"]):
            axis.set_yscale("log")
        axis.set_title(workload)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.legend(fontsize=6)
    return save_figure(figure, path)


def plot_sensitivity(analysis: Mapping[str, Any], path: str) -> str:
    """Validation loss against peak learning rate per arm; an arm whose points equal another's dashed on top."""
    workloads = [w for w, e in analysis["workloads"].items() if "sensitivity" in e]
    figure, axes = panels(1, max(len(workloads), 1), (4.5, 3.4))
    colors = _arm_colors(_all_arms(analysis))
    for axis, workload in zip(axes[0], workloads):
        sensitivity = analysis["workloads"][workload]["sensitivity"]
        series = {
            arm: [
                (lr, loss)
                for lr, loss in zip(sensitivity[arm]["lr"], sensitivity[arm]["validation_loss"])
                if loss is not None
            ]
            for arm in _reference_first(sensitivity, analysis["reference"])
        }
        twins = _twins(series)
        for arm, points in series.items():
            if points:
                axis.plot(
                    *zip(*points),
                    marker="x" if arm in twins else "o",
                    ms=4 if arm in twins else 3,
                    color=colors[arm],
                    label=_arm_label(arm, analysis, twins),
                    **_arm_style(arm, twins),
                )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(workload)
        axis.set_xlabel("peak learning rate")
        axis.set_ylabel("validation loss")
        axis.legend(fontsize=6)
    return save_figure(figure, path)


FOREST_VERDICTS = {
    "better": ("tab:green", "better than AdamW (significant)"),
    "worse": ("tab:red", "worse than AdamW (significant)"),
    "not significant": ("tab:gray", "not significant (open marker)"),
}
"""Colour and legend label of each verdict of the forest plot: one colour per verdict, nothing else uses them."""


def forest_verdict(comparison: Mapping[str, Any]) -> str:
    """ "better" / "worse" (significant after Holm, mean difference test loss − AdamW's < 0 / > 0) or "not significant"."""
    if not comparison["significant"]:
        return "not significant"
    return "worse" if comparison["mean"] > 0 else "better"


def plot_forest(analysis: Mapping[str, Any], path: str, result: str = "search") -> str:
    """Mean paired difference (marker) and adjusted interval (bar) per (workload, arm), coloured by
    :func:`forest_verdict`, with a legend of the verdicts and the labelled zero line (no difference to AdamW)."""
    rows = []
    for item in analysis["families"].get(result, []):
        comparison = item["comparison"]
        if item.get("pairing"):  # a THEORY §4 pairing: the difference is between the two named runs
            (without_norm, second), (with_norm, first) = item["pairing"]["second"], item["pairing"]["first"]
            rows.append((f"{second} on {without_norm} − {first} on {with_norm}", comparison))
        else:
            rows.append((f"{item['workload']}: {item['arm']}", comparison))
    figure, axes = panels(1, 1, (6.5, 0.3 * max(len(rows), 3) + 1.2))
    axis = axes[0][0]
    shown: set[str] = set()
    for index, (_label, comparison) in enumerate(rows):
        verdict = forest_verdict(comparison)
        color, legend = FOREST_VERDICTS[verdict]
        axis.plot(
            [comparison["ci_adjusted_low"], comparison["ci_adjusted_high"]],
            [index, index],
            color=color,
            lw=2,
            label=None if verdict in shown else legend,
        )
        shown.add(verdict)
        axis.plot(comparison["mean"], index, "o", color=color, mfc=color if comparison["significant"] else "white")
    axis.axvline(0, color="k", lw=0.8, label="no difference to AdamW")
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels([label for label, _ in rows], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("test loss − AdamW's (paired; adjusted interval; rows with '−': as labelled)")
    axis.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_figure(figure, path, bbox_tight=True)


def plot_lr_ratio(analysis: Mapping[str, Any], path: str) -> str:
    workloads = list(analysis["workloads"])
    arms = [arm for arm in _all_arms(analysis) if arm != analysis["reference"]]
    figure, axes = panels(1, 1, (max(5.0, 0.9 * len(workloads) * max(len(arms), 1) / 3), 3.4))
    axis = axes[0][0]
    colors = _arm_colors(_all_arms(analysis))
    width = 0.8 / max(len(arms), 1)
    for j, arm in enumerate(arms):
        values = [
            analysis["workloads"][w].get("search", {}).get("lr_ratio_to_reference", {}).get(arm) for w in workloads
        ]
        xs = [i + j * width for i, v in enumerate(values) if v is not None]
        axis.bar(xs, [v for v in values if v is not None], width=width, color=colors[arm], label=arm)
    axis.axhline(1, color="k", lw=0.8, label="equal to AdamW's lr")
    axis.set_yscale("log")
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))])
    axis.set_xticklabels(workloads, fontsize=8)
    axis.set_ylabel("best lr / AdamW's best lr")
    axis.legend(fontsize=7)
    return save_figure(figure, path)


def plot_performance_profile(analysis: Mapping[str, Any], path: str) -> str:
    profile = analysis["performance_profile"]
    figure, axes = panels(1, 1, (5.0, 3.4))
    axis = axes[0][0]
    colors = _arm_colors(_all_arms(analysis))
    ordered = {arm: profile["rho"][arm] for arm in _reference_first(profile["rho"], analysis["reference"])}
    twins = _twins(ordered)
    for arm, rho in ordered.items():
        axis.step(
            profile["taus"],
            rho,
            where="post",
            color=colors.get(arm),
            label=_arm_label(arm, analysis, twins),
            **_arm_style(arm, twins),
        )
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("τ (steps to target / fastest arm's)")
    axis.set_ylabel("share of workloads")
    axis.legend(fontsize=7)
    return save_figure(figure, path)


def draw_all(analysis: Mapping[str, Any], figures: Path) -> dict[str, str]:
    """Every figure of :data:`CAPTIONS` that the analysis has data for; returns name → path."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    drawn = {}
    has_arms = any("arms" in e.get("search", {}) for e in analysis["workloads"].values())
    drawers = {
        "comparison_curves.png": plot_curves if has_arms else None,
        "comparison_lr_sensitivity.png": plot_sensitivity
        if any("sensitivity" in e for e in analysis["workloads"].values())
        else None,
        "comparison_forest.png": plot_forest if analysis["families"].get("search") else None,
        "comparison_lr_ratio.png": plot_lr_ratio,
        "comparison_performance_profile.png": plot_performance_profile
        if analysis["performance_profile"]["rho"]
        else None,
    }
    for name, draw in drawers.items():
        if draw is not None:
            drawn[name] = draw(analysis, str(figures / name))
    return drawn
