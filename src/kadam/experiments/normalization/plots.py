"""Section 3's figures: the random walk, the meta-adaptive cosines, per-layer norms on digits."""

from __future__ import annotations

from typing import Any

from kadam.experiments.figures import panels, save_figure

__all__ = ["plot_digits_norms", "plot_meta_adaptive", "plot_random_walk"]


EQUILIBRIUM_STYLES = (("corrected", "--"), ("orthogonal", ":"))
"""Line style of each equilibrium prediction (THEORY §4) in the normalization figures."""

_MARKERS = ("o", "s", "^", "D", "v", "P")


def _equilibrium_legend_entries(axis: Any) -> None:
    """Grey legend-only lines naming the equilibrium styles (the drawn lines take their curve's colour)."""
    for assumption, style in EQUILIBRIUM_STYLES:
        axis.plot([], [], color="gray", ls=style, lw=1, label=f"{assumption} equilibrium")


def plot_random_walk(result: dict[str, Any], path: str) -> str:
    """Norm and angular update against step per β (each with its own marker every tenth of the run, staggered,
    so curves that coincide stay visible), with both equilibrium predictions as lines in the curve's colour."""
    figure, axes = panels(1, 2, (5.0, 3.6))
    for index, row in enumerate(result["by_beta"]):
        color, marker = f"C{index % 10}", _MARKERS[index % len(_MARKERS)]
        curves = result["curves"][f"beta={row['beta']}"]
        for axis, key in ((axes[0][0], "norm"), (axes[0][1], "angular_update")):
            every = max(len(result["by_beta"]), len(curves[key]["steps"]) // 10)  # staggered: equal curves show all
            axis.plot(
                curves[key]["steps"],
                curves[key]["values"],
                color=color,
                lw=0.8,
                label=f"β = {row['beta']}",
                marker=marker,
                ms=4,
                mfc="none",
                markevery=(index * every // len(result["by_beta"]), every),
            )
            for assumption, style in EQUILIBRIUM_STYLES:
                axis.axhline(row[f"{assumption}_{key}"], color=color, ls=style, lw=1)
    axes[0][0].set(xlabel="step", ylabel="|W|", yscale="log", title="norm")
    axes[0][1].set(xlabel="step", ylabel="angle per step (rad)", yscale="log", title="angular update")
    for axis in axes[0]:
        _equilibrium_legend_entries(axis)
        axis.legend(fontsize=7)
    return save_figure(figure, path, dpi=110)


_COPY_STYLES = {
    "sphere": ("-", "2-Adam"),
    "sphere_corrected": ("--", "2-Adam, step × 1/√F"),
    "control": (":", "AdamW, other batch order (control)"),
}
"""Line style and legend name of each copy compared with AdamW on the network (meta-adaptive figure)."""


def _layer_mean_curve(config: dict[str, Any], copy: str) -> tuple[list[float], list[float]]:
    """The cosine with AdamW's direction averaged over the invariant layers, for one copy of a network config."""
    curves = [layer[copy]["cosine_curve"] for layer in config["layers"]]
    steps = curves[0]["steps"]
    return steps, [sum(curve["values"][i] for curve in curves) / len(curves) for i in range(len(steps))]


def plot_meta_adaptive(drift: dict[str, Any], network: dict[str, Any] | None, path: str) -> str:
    """Cosine between AdamW's direction and explicit 2-Adam's against step, and on the network the control.

    Left, the noisy quadratic: the second-moment normalization sets the line style (elementwise solid, per
    tensor dashed on top), so curves that coincide (cos = 1 at β = 0 for both) stay visible. With a network
    result (one seed): the cosine with AdamW averaged over the invariant layers, one colour per β and one
    line style per copy (2-Adam, 2-Adam with the corrected step, and the control, AdamW with another batch
    order); right, each copy's training loss (log scale), where a copy that blows up shows as a jump.
    """
    figure, axes = panels(1, 3 if network else 1, (5.0, 3.6))
    norms = list(dict.fromkeys(config["norm"] for config in drift["configs"]))
    for config in drift["configs"]:
        curve = config["cosine_curve"]
        order = norms.index(config["norm"])
        axes[0][0].plot(
            curve["steps"],
            curve["values"],
            lw=1.6 - 0.4 * min(order, 1),
            ls=("-", "--", ":")[order % 3],
            zorder=2 + order,
            label=f"β={config['beta']}, γ={config['gamma']}, {config['norm']}",
        )
    axes[0][0].set(xlabel="step", ylabel="cos(Ŵ_AdamW, Ŵ_2-Adam)", title=f"noisy quadratic, d = {drift['d']}")
    axes[0][0].legend(fontsize=7)
    if network:
        for index, config in enumerate(network["configs"]):
            color = f"C{index}"
            for copy in config.get("copies", ["adamw", "sphere"])[1:]:
                style, label = _COPY_STYLES[copy]
                steps, values = _layer_mean_curve(config, copy)
                axes[0][1].plot(steps, values, ls=style, color=color, lw=1.2, label=f"β={config['beta']}: {label}")
                loss = config["losses"][copy]["curve"]
                axes[0][2].plot(
                    loss["steps"], loss["values"], ls=style, color=color, lw=1.0, label=f"β={config['beta']}: {label}"
                )
            adamw_loss = config["losses"]["adamw"]["curve"]
            axes[0][2].plot(
                adamw_loss["steps"],
                adamw_loss["values"],
                ls="-",
                color=color,
                lw=2.2,
                alpha=0.35,
                label=f"β={config['beta']}: AdamW",
                zorder=1,
            )
        axes[0][1].set(
            xlabel="step",
            ylabel="cos with AdamW's direction (mean over layers)",
            title=f"LayerNorm MLP on digits (seed {network.get('seed', 0)})",
        )
        axes[0][1].axhline(0.0, color="gray", lw=0.5)
        axes[0][1].legend(fontsize=6)
        axes[0][2].set(xlabel="step", ylabel="training loss (window mean)", yscale="log", title="each copy's loss")
        axes[0][2].legend(fontsize=6)
    return save_figure(figure, path, dpi=110)


def plot_digits_norms(runs: list[dict[str, Any]], path: str) -> str:
    """One grid for every digits run: a row per run, per tracked layer a norm and an angular-update panel.

    The measured curve is drawn on top (black, solid); under it the two replays of THEORY §4's recursion
    driven by the run's measured ``|u_n|²`` (corrected dashed, orthogonal dotted, in colour), and for AdamW
    the equilibria from hyperparameters alone (grey, same styles). The window the errors are read over is
    shaded; a run shorter than it needs to equilibrate says so in its title.
    """
    layers = max(len(run["layers"]) for run in runs)
    figure, axes = panels(len(runs), 2 * max(1, layers), (3.3, 2.3))
    for row, run in enumerate(runs):
        for column, layer in enumerate(run["layers"]):
            for offset, quantity in enumerate(("norm", "angular_update")):
                axis = axes[row][2 * column + offset]
                curves = layer["curves"]
                for index, (assumption, style) in enumerate(EQUILIBRIUM_STYLES):
                    curve = curves[f"{assumption}_{quantity}"]
                    axis.plot(
                        curve["steps"],
                        curve["values"],
                        ls=style,
                        lw=1.3,
                        color=f"C{index}",
                        label=f"{assumption} replay",
                        zorder=2,
                    )
                    if f"{assumption}_equilibrium_{quantity}" in layer:
                        axis.axhline(
                            layer[f"{assumption}_equilibrium_{quantity}"],
                            ls=style,
                            color="gray",
                            lw=0.9,
                            label=f"{assumption} equilibrium",
                            zorder=1,
                        )
                measured = curves[f"measured_{quantity}"]
                axis.plot(measured["steps"], measured["values"], color="black", lw=0.9, label="measured", zorder=3)
                axis.axvspan(run["window_start"], run["steps"], color="gold", alpha=0.15, lw=0, zorder=0)
                length = (
                    ""
                    if run.get("relaxation_times_run") is None
                    else f", {run['relaxation_times_run']:.1f}τ" + ("" if run.get("equilibrated") else " (too short)")
                )
                axis.set_title(
                    f"{run['task']} {run['optimizer']} λ={run['weight_decay']:g}{length}\n{layer['name']} "
                    + ("|W|" if quantity == "norm" else "angle/step"),
                    fontsize=7,
                )
                axis.set_yscale("log")
                axis.tick_params(labelsize=6)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for axis in row:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.legend(handles, labels, loc="lower center", ncol=5, fontsize=7)
    return save_figure(figure, path, dpi=100, bbox_tight=True)
