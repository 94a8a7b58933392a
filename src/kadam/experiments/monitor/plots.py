"""Figures of a :class:`kadam.monitor.MonitorHistory`: one run's quantities over training, events marked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kadam.experiments.figures import PathLike, panels, save_figure
from kadam.monitor import MonitorHistory

__all__ = ["plot_history", "plot_sharpness", "plot_validation_run"]

_EVENT_COLORS = {"theory": "tab:red", "argument": "tab:orange"}

BOUND_LABEL = "update bound (ratio 1)"
"""Legend label of the line max|u| / B_n = 1: above it an update exceeds the bound (THEORY §2)."""
ORTHOGONAL_LABEL = "cos = 0 (update orthogonal to gradient)"
"""Legend label of the zero line of the update–gradient cosine."""
INSTABILITY_LABEL = "instability"
"""Legend label of the vertical line at the run's first instability."""


def _save_with_legend(figure: Any, axes: Sequence[Any], path: PathLike) -> PathLike:
    """One legend right of the panels with every labelled artist of ``axes`` (reference lines included), off the
    data and with the panels kept aligned; the saved image is cropped to include it."""
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.tight_layout()
    if handles:
        figure.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save_figure(figure, path, dpi=110, bbox_tight=True)


def _worst(history: MonitorHistory, quantity: str, count: int) -> list[str]:
    """The ``count`` tensors with the largest finite value of ``quantity`` anywhere in the run."""
    if quantity not in history.quantities:
        return []
    peaks = {name: np.nanmax(series) for name, series in history[quantity].items() if np.isfinite(series).any()}
    return sorted(peaks, key=lambda name: -peaks[name])[:count]


def _final_level_ratio(history: MonitorHistory) -> str:
    levels = [q for q in history.quantities if q.startswith("bound_ratio_L")]
    return max(levels, key=lambda q: int(q.rsplit("L", 1)[1])) if levels else "bound_ratio_L1"


def plot_history(
    history: MonitorHistory,
    path: str | Path,
    *,
    worst: int = 3,
    title: str | None = None,
    instability_step: int | None = None,
) -> str | Path:
    """Loss, update/bound ratio and spike factor of the ``worst`` tensors, and the update–gradient cosine,
    against the optimizer step; warnings (events) as vertical lines (red: theory, orange: argument
    thresholds), the first instability as a black dashed line. Empty panels say so."""
    figure, axes = panels(4, 1, (8.0, 1.9))
    loss_axis, ratio_axis, spike_axis, cosine_axis = (row[0] for row in axes)
    steps = history.steps
    loss = history.model.get("loss", np.full(len(steps), np.nan))
    if np.isfinite(loss).any():
        loss_axis.plot(steps, loss, color="black", lw=1)
        loss_axis.set_yscale("log")
    else:
        loss_axis.text(
            0.5,
            0.5,
            "no loss recorded (StabilityMonitor.observe_loss)",
            ha="center",
            va="center",
            transform=loss_axis.transAxes,
            fontsize=8,
        )
    loss_axis.set_ylabel("loss")
    ratio = _final_level_ratio(history)
    for name in _worst(history, ratio, worst):
        ratio_axis.plot(steps, history[ratio][name], lw=1, label=name)
    ratio_axis.axhline(1.0, color="tab:red", lw=0.8, ls=":", label=BOUND_LABEL)
    ratio_axis.set_ylabel(f"max|u| / B_n\n({ratio.rsplit('_', 1)[1]})")
    for name in _worst(history, "spike_factor", worst):
        spike_axis.plot(steps, history["spike_factor"][name], lw=1, label=name)
    spike_axis.set_yscale("log")
    spike_axis.set_ylabel("spike factor\nmax g²/v̂")
    cosine = history.model.get("model_cosine", np.full(len(steps), np.nan))
    cosine_axis.plot(steps, cosine, color="tab:blue", lw=1)
    cosine_axis.axhline(0.0, color="gray", lw=0.6, label=ORTHOGONAL_LABEL)
    cosine_axis.set_ylabel("cos(u, g)\n(model)")
    cosine_axis.set_xlabel("optimizer step")
    every_axis = (loss_axis, ratio_axis, spike_axis, cosine_axis)
    marked: set[tuple[int, str]] = set()
    labelled: set[str] = set()
    for event in history.events:
        key = (event.step, event.source)
        if key in marked:
            continue
        marked.add(key)
        for axis in every_axis:
            label = f"{event.source} warning" if axis is loss_axis and event.source not in labelled else None
            axis.axvline(
                event.step, color=_EVENT_COLORS.get(event.source, "tab:orange"), lw=0.6, alpha=0.6, label=label
            )
        labelled.add(event.source)
    if instability_step is not None:
        for axis in every_axis:
            axis.axvline(
                instability_step, color="black", lw=1.0, ls="--", label=INSTABILITY_LABEL if axis is loss_axis else None
            )
    for axis in (ratio_axis, spike_axis):  # tensor names per panel (colours differ between panels), bound included
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6, loc="upper left")
    loss_axis.set_title(
        title or f"{len(history.events)} warnings (red: theory thresholds, orange: argument thresholds)", fontsize=9
    )
    return _save_with_legend(figure, (loss_axis, cosine_axis), path)


def plot_sharpness(runs: Sequence[Mapping[str, Any]], path: str | Path) -> str | Path:
    """Preconditioned sharpness λ_max(ηP⁻¹H) over training against (2 + 2β)/(1 − β), one line per learning rate
    (symmetric-log axis: estimates are signed)."""
    figure, axes = panels(1, 1, (6.0, 3.4))
    axis = axes[0][0]
    for run in runs:
        points = [
            (s, v) for s, v in zip(run["sharpness_steps"], run["sharpness"]) if v is not None and math.isfinite(v)
        ]
        if points:
            axis.plot(*zip(*points), marker="o", ms=2.5, lw=1, label=f"lr = {run['lr']:g}")
    if runs:
        axis.axhline(
            runs[0]["sharpness_threshold"], color="tab:red", lw=1, ls="--", label="edge of stability (2 + 2β)/(1 − β)"
        )
    axis.set(xlabel="step", ylabel="λ_max(η P⁻¹ H) (signed Rayleigh quotient)")
    axis.set_yscale(
        "symlog", linthresh=1.0
    )  # an estimate after few Lanczos steps can be negative (it lies between the extreme eigenvalues)
    axis.legend(fontsize=7)
    return save_figure(figure, path, dpi=110)


_CHECK_COLORS = {
    "nonfinite": "tab:red",
    "grad_norm": "tab:orange",
    "loss": "tab:brown",
    "update_param_ratio": "tab:purple",
    "curvature": "tab:green",
}


def plot_validation_run(run: Mapping[str, Any], checks: Mapping[str, Sequence[int]], path: str | Path) -> str | Path:
    """One validation run (:func:`kadam.experiments.monitor.protocol.validation_run`): training loss, the
    learning rate the step used, the global gradient norm and the largest per-tensor update/parameter ratio
    against the step; each monitor check in ``checks`` (check → steps it fired) marked by a vertical line in
    its colour, the instability event dashed black."""
    figure, axes = panels(4, 1, (8.0, 1.8))
    loss_axis, lr_axis, grad_axis, ratio_axis = (row[0] for row in axes)
    steps = np.arange(1, len(run["losses"]) + 1)

    def series(values: Sequence[float | None]) -> np.ndarray:
        array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        return np.where(np.isfinite(array), array, np.nan)

    loss_axis.plot(steps, series(run["losses"]), color="black", lw=1)
    loss_axis.axhline(run["constant_loss"], color="gray", lw=0.8, ls=":", label="loss of ignoring the inputs")
    loss_axis.set(ylabel="training loss", yscale="log")
    lr_axis.plot(steps[: len(run["lrs"])], run["lrs"], color="tab:blue", lw=1)
    lr_axis.set(ylabel="learning rate", yscale="log")
    grad_axis.plot(steps, series(run["grad_norms"]), color="tab:gray", lw=1)
    grad_axis.set(ylabel="gradient norm", yscale="log")
    ratio_axis.plot(steps, series(run["update_ratios"]), color="tab:purple", lw=1)
    ratio_axis.set(ylabel="max |Δθ|/|θ|", yscale="log", xlabel="step")
    every_axis = (loss_axis, lr_axis, grad_axis, ratio_axis)
    for check, fired in checks.items():
        for index, step in enumerate(fired):
            for axis in every_axis:
                axis.axvline(
                    step,
                    color=_CHECK_COLORS.get(check, "tab:red"),
                    lw=0.7,
                    alpha=0.6,
                    label=f"monitor: {check}" if axis is loss_axis and index == 0 else None,
                )
    if run["instability_step"] is not None:
        for axis in every_axis:
            axis.axvline(
                run["instability_step"],
                color="black",
                lw=1,
                ls="--",
                label=INSTABILITY_LABEL if axis is loss_axis else None,
            )
    spec = run["spec"]
    loss_axis.set_title(
        f"{spec['workload']}, family {spec['family']} ({spec['arm']} arm), seed {spec['seed']}", fontsize=9
    )
    return _save_with_legend(figure, every_axis, path)
