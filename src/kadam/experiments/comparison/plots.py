"""Figures of the comparison section (drawn from :func:`kadam.experiments.comparison.analysis.analyse`'s
output; matplotlib through :mod:`kadam.experiments.figures`, Agg backend, closed after saving)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kadam.experiments.figures import new_figure, panels, save_figure

__all__ = [
    "CAPTIONS",
    "FOREST_VERDICTS",
    "PAIRING_STYLE",
    "arm_style",
    "draw_all",
    "forest_verdict",
    "plot_curves",
    "plot_sensitivity",
    "plot_forest",
    "plot_lr_ratio",
    "plot_performance_profile",
]

CAPTIONS = {
    "comparison_curves.png": "Training loss of every arm at its best configuration (median over the evaluation "
    "seeds, range as a band; colour: optimizer family, line style: strategy); dashed black: AdamW's target (value "
    'in the title). An arm equal to another (the k = 1 control) is dashed on top, labelled "identical to".',
    "comparison_lr_sensitivity.png": "Validation loss against peak learning rate, each arm's other hyperparameters "
    "at their best (tuning seed): where each arm's cliff sits. Missing points diverged.",
    "comparison_forest.png": "Paired test-loss difference to AdamW (negative: better) with Bonferroni-adjusted "
    "intervals, one scale per workload; green/red: significantly better/worse after Holm, grey open: not "
    "significant. THEORY §4 pairings are not comparisons with AdamW: own panel, purple.",
    "comparison_lr_ratio.png": "Best peak learning rate of each arm over AdamW's, per workload (a ratio of 1 is a "
    "marker on the line).",
    "comparison_performance_profile.png": "Performance profile of median steps to AdamW's target: share of the "
    "workloads an arm ran on where it is within τ of the fastest, stepping at the measured ratios.",
}

_STRATEGY_STYLE = {"default": ("-", "o"), "elementwise": ("--", "^"), "naive": (":", "v"), "momentum-last": ("-.", "D")}
_FIXED_STYLE = {
    "adamw": ("black", "-", "o"),
    "adam": ("0.55", "-", "s"),
    "kadam1": ("0.35", ":", "o"),
    "muon-adamw": ("tab:purple", "-", "P"),
    "schedulefree-adamw": ("tab:brown", "-", "X"),
    "adamw-equal-betas": ("tab:olive", "-", "*"),
}
_K_COLOUR = {2: "tab:blue", 3: "tab:red"}


def arm_style(arm: str) -> dict[str, Any]:
    """Colour, line style and marker of an arm: its family sets the colour (AdamW black, Adam grey, k = 2 blue,
    k = 3 red, each context arm its own), the KAdam strategy the line style and marker."""
    if arm in _FIXED_STYLE:
        color, ls, marker = _FIXED_STYLE[arm]
        return {"color": color, "ls": ls, "marker": marker}
    if arm.startswith("kadam") and arm[5:6].isdigit():
        k = int(arm[5])
        strategy = arm.partition("-")[2] or "default"
        ls, marker = _STRATEGY_STYLE.get(strategy, ("-", "o"))
        return {"color": _K_COLOUR.get(k, "tab:green"), "ls": ls, "marker": marker}
    return {"color": "tab:cyan", "ls": "-", "marker": "o"}


def _grid(count: int, panel_size: tuple[float, float] = (4.2, 3.2), columns: int = 3) -> tuple[Any, list[Any]]:
    """A grid of at most ``columns`` panels per row for ``count`` workloads; unused panels hidden."""
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    figure, axes = panels(rows, columns, panel_size)
    flat = [axis for row in axes for axis in row]
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[: max(count, 1)]


def _shared_legend(figure: Any, axes: Iterable[Any], columns: int = 4) -> None:
    """One legend for the whole figure, below the panels (each label once), instead of one over each panel's data;
    lays the panels out first (the legend then sits under them)."""
    figure.tight_layout()
    handles: dict[str, Any] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if not label.startswith("_"):
                handles.setdefault(label, handle)
    if handles:
        figure.legend(
            list(handles.values()),
            list(handles),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=min(columns, len(handles)),
            fontsize=7,
            frameon=False,
        )


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


def _arm_style(arm: str, twins: Mapping[str, str], markers: bool = False) -> dict[str, Any]:
    """:func:`arm_style`; a line equal to an earlier one is drawn dashed, thinner and on top, so both stay visible."""
    style = arm_style(arm)
    if not markers:
        style.pop("marker")
    if arm in twins:
        return {**style, "ls": "--", "lw": 1.0, "zorder": 3}
    return {**style, "lw": 1.4, "zorder": 2}


def plot_curves(analysis: Mapping[str, Any], path: str) -> str:
    """Median training loss per arm with its min–max band, one panel per workload (at most three per row); the
    AdamW target as a labelled dashed line; an arm whose median equals another's (the k = 1 control and AdamW)
    dashed on top and labelled "identical to"; one legend below the panels."""
    workloads = [w for w, e in analysis["workloads"].items() if "arms" in e.get("search", {})]
    figure, axes = _grid(len(workloads))
    for axis, workload in zip(axes, workloads):
        block = analysis["workloads"][workload]["search"]
        curves = {
            arm: block["arms"][arm]["curve"]
            for arm in _reference_first(block["arms"], analysis["reference"])
            if block["arms"][arm]["curve"] is not None
        }
        twins = _twins({arm: curve["median"] for arm, curve in curves.items()})
        for arm, curve in curves.items():
            style = _arm_style(arm, twins)
            axis.plot(curve["steps"], curve["median"], label=_arm_label(arm, analysis, twins), **style)
            axis.fill_between(curve["steps"], curve["min"], curve["max"], color=style["color"], alpha=0.12, lw=0)
        title = workload
        if block.get("target_train_loss") is not None:
            axis.axhline(block["target_train_loss"], color="k", ls="--", lw=0.8, label="AdamW target loss")
            title += f" (target {block['target_train_loss']:.3g})"
        if all(v > 0 for s in block["arms"].values() if s["curve"] for v in s["curve"]["min"]):
            axis.set_yscale("log")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
    _shared_legend(figure, axes)
    return save_figure(figure, path, bbox_tight=True)


def plot_sensitivity(analysis: Mapping[str, Any], path: str) -> str:
    """Validation loss against peak learning rate per arm, one panel per workload; an arm whose points equal
    another's dashed on top; one legend below the panels."""
    workloads = [w for w, e in analysis["workloads"].items() if "sensitivity" in e]
    figure, axes = _grid(len(workloads))
    for axis, workload in zip(axes, workloads):
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
                style = _arm_style(arm, twins, markers=True)
                if arm in twins:
                    style["marker"] = "x"
                axis.plot(*zip(*points), ms=4, label=_arm_label(arm, analysis, twins), **style)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(workload, fontsize=9)
        axis.set_xlabel("peak learning rate")
        axis.set_ylabel("validation loss")
    _shared_legend(figure, axes)
    return save_figure(figure, path, bbox_tight=True)


FOREST_VERDICTS = {
    "better": ("tab:green", "better than AdamW (significant)"),
    "worse": ("tab:red", "worse than AdamW (significant)"),
    "not significant": ("tab:gray", "not significant (open marker)"),
}
"""Colour and legend label of each verdict of the forest plot: one colour per verdict, nothing else uses them."""
PAIRING_STYLE = ("tab:purple", "THEORY §4 pairing, not vs AdamW (filled: significant)")
"""Colour and legend label of the THEORY §4 pairing rows (a difference between two named runs)."""


def forest_verdict(comparison: Mapping[str, Any]) -> str:
    """ "better" / "worse" (significant after Holm, mean difference test loss − AdamW's < 0 / > 0) or "not significant"."""
    if not comparison["significant"]:
        return "not significant"
    return "worse" if comparison["mean"] > 0 else "better"


def plot_forest(analysis: Mapping[str, Any], path: str, result: str = "search") -> str:
    """Mean paired difference (marker) and adjusted interval (bar) per arm, one panel with its own x scale per
    workload, coloured by :func:`forest_verdict`; the THEORY §4 pairings in a panel of their own in
    :data:`PAIRING_STYLE`'s colour; the zero line (no difference) in every panel; one legend."""
    from matplotlib.lines import Line2D

    groups: dict[str, list[tuple[str, Mapping[str, Any], bool]]] = {}
    for item in analysis["families"].get(result, []):
        comparison = item["comparison"]
        if item.get("pairing"):  # a THEORY §4 pairing: the difference is between the two named runs
            (without_norm, second), (with_norm, first) = item["pairing"]["second"], item["pairing"]["first"]
            groups.setdefault("THEORY §4 pairings", []).append(
                (f"{second} on {without_norm} − {first} on {with_norm}", comparison, True)
            )
        else:
            groups.setdefault(item["workload"], []).append((item["arm"], comparison, False))
    names = sorted(groups, key=lambda name: name == "THEORY §4 pairings")  # pairings last
    heights = [max(len(groups[name]), 1) for name in names] or [1]
    figure = new_figure((6.5, 0.32 * sum(heights) + 0.9 * len(heights) + 0.6))
    axes = figure.subplots(len(heights), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for axis, name in zip(axes, names):
        rows = groups[name]
        for index, (_label, comparison, pairing) in enumerate(rows):
            color = PAIRING_STYLE[0] if pairing else FOREST_VERDICTS[forest_verdict(comparison)][0]
            axis.plot(
                [comparison["ci_adjusted_low"], comparison["ci_adjusted_high"]], [index, index], color=color, lw=2
            )
            axis.plot(comparison["mean"], index, "o", color=color, mfc=color if comparison["significant"] else "white")
        axis.axvline(0, color="k", lw=0.8)
        axis.set_yticks(range(len(rows)))
        axis.set_yticklabels([label for label, _, _ in rows], fontsize=7)
        axis.set_ylim(len(rows) - 0.5, -0.5)
        axis.set_title(name, fontsize=8, loc="left")
        axis.tick_params(axis="x", labelsize=7)
    axes[-1].set_xlabel("test loss − AdamW's (paired; adjusted interval); pairings: as labelled", fontsize=8)
    handles = [Line2D([], [], color=color, lw=2, label=label) for color, label in FOREST_VERDICTS.values()]
    if "THEORY §4 pairings" in groups:
        handles.append(Line2D([], [], color=PAIRING_STYLE[0], lw=2, label=PAIRING_STYLE[1]))
    handles.append(Line2D([], [], color="k", lw=0.8, label="no difference to AdamW"))
    figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7, frameon=False)
    figure.tight_layout()
    return save_figure(figure, path, bbox_tight=True)


def plot_lr_ratio(analysis: Mapping[str, Any], path: str) -> str:
    """Each arm's best lr over AdamW's per workload: a marker at the ratio on a stem from 1 (log scale), so a
    ratio of exactly 1 is a visible marker on the reference line; one legend below."""
    workloads = list(analysis["workloads"])
    arms = [arm for arm in _all_arms(analysis) if arm != analysis["reference"]]
    figure, axes = panels(1, 1, (max(5.0, 0.9 * len(workloads) * max(len(arms), 1) / 3), 3.4))
    axis = axes[0][0]
    width = 0.8 / max(len(arms), 1)
    for j, arm in enumerate(arms):
        values = [
            analysis["workloads"][w].get("search", {}).get("lr_ratio_to_reference", {}).get(arm) for w in workloads
        ]
        points = [(i + j * width, v) for i, v in enumerate(values) if v is not None]
        if not points:
            continue
        style = arm_style(arm)
        xs, ys = zip(*points)
        axis.vlines(xs, 1.0, ys, color=style["color"], lw=2.5, alpha=0.6)
        axis.plot(xs, ys, ls="none", marker=style["marker"], color=style["color"], ms=6, mec="k", mew=0.5, label=arm)
    axis.axhline(1, color="k", lw=0.8, label="equal to AdamW's lr", zorder=0)
    axis.set_yscale("log")
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))])
    axis.set_xticklabels(workloads, fontsize=8)
    axis.set_ylabel("best lr / AdamW's best lr")
    _shared_legend(figure, [axis], columns=5)
    return save_figure(figure, path, bbox_tight=True)


def plot_performance_profile(analysis: Mapping[str, Any], path: str) -> str:
    """ρ(τ) per arm as a step function that steps at the arm's measured ratios (not at grid values of τ), from
    τ = 1 to past the largest finite ratio; the share counts only the workloads the arm ran on."""
    profile = analysis["performance_profile"]
    ratios = {
        arm: [math.inf if r is None else r for r in values]
        for arm, values in profile.get("ratios", {}).items()
        if values
    }
    finite = [r for values in ratios.values() for r in values if math.isfinite(r)]
    right = max(1.5, 1.2 * max(finite)) if finite else 1.5
    figure, axes = panels(1, 1, (5.0, 3.4))
    axis = axes[0][0]
    ordered = {arm: ratios[arm] for arm in _reference_first(ratios, analysis["reference"])}
    twins = _twins(ordered)
    for arm, values in ordered.items():
        count = len(values)
        steps = sorted(r for r in values if math.isfinite(r))
        xs = [1.0] + steps + [right]
        ys = [sum(r <= 1.0 for r in values) / count] + [(i + 1) / count for i in range(len(steps))]
        ys.append(ys[-1])
        axis.step(
            xs,
            ys,
            where="post",
            label=f"{_arm_label(arm, analysis, twins)} ({count} workload{'s' if count != 1 else ''})",
            **_arm_style(arm, twins),
        )
    axis.set_xscale("log")
    axis.set_xlim(1.0, right)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("τ (steps to target / fastest arm's)")
    axis.set_ylabel("share of the arm's workloads")
    _shared_legend(figure, [axis], columns=3)
    return save_figure(figure, path, bbox_tight=True)


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
        if any(analysis["performance_profile"].get("ratios", {}).values())
        else None,
    }
    for name, draw in drawers.items():
        if draw is not None:
            drawn[name] = draw(analysis, str(figures / name))
    return drawn
