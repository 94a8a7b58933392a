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
            axis.plot(curves[key]["steps"], curves[key]["values"], color=color, lw=0.8, label=f"β = {row['beta']}",
                      marker=marker, ms=4, mfc="none", markevery=(index * every // len(result["by_beta"]), every))
            for assumption, style in EQUILIBRIUM_STYLES:
                axis.axhline(row[f"{assumption}_{key}"], color=color, ls=style, lw=1)
    axes[0][0].set(xlabel="step", ylabel="|W|", yscale="log", title="norm")
    axes[0][1].set(xlabel="step", ylabel="angle per step (rad)", yscale="log", title="angular update")
    for axis in axes[0]:
        _equilibrium_legend_entries(axis)
        axis.legend(fontsize=7)
    return save_figure(figure, path, dpi=110)


def plot_meta_adaptive(drift: dict[str, Any], network: dict[str, Any] | None, path: str) -> str:
    """Cosine between AdamW's and 2-Adam's directions against step (noisy quadratic; LayerNorm MLP). On the
    quadratic the second-moment normalization sets the line style (elementwise solid, per tensor dashed on top):
    curves that coincide (e.g. cos = 1 at β = 0 for both) stay visible."""
    figure, axes = panels(1, 2 if network else 1, (5.0, 3.6))
    norms = list(dict.fromkeys(config["norm"] for config in drift["configs"]))
    for config in drift["configs"]:
        curve = config["cosine_curve"]
        order = norms.index(config["norm"])
        axes[0][0].plot(curve["steps"], curve["values"], lw=1.6 - 0.4 * min(order, 1), ls=("-", "--", ":")[order % 3],
                        zorder=2 + order, label=f"β={config['beta']}, γ={config['gamma']}, {config['norm']}")
    axes[0][0].set(xlabel="step", ylabel="cos(Ŵ_AdamW, Ŵ_2-Adam)", title=f"noisy quadratic, d = {drift['d']}")
    axes[0][0].legend(fontsize=7)
    if network:
        for config in network["configs"]:
            for layer in config["layers"]:
                curve = layer["cosine_curve"]
                axes[0][1].plot(curve["steps"], curve["values"], lw=1, label=f"β={config['beta']} {layer['name']}")
        axes[0][1].set(xlabel="step", ylabel="cos(Ŵ_AdamW, Ŵ_2-Adam)", title="LayerNorm MLP on digits")
        axes[0][1].legend(fontsize=7)
    return save_figure(figure, path, dpi=110)


def plot_digits_norms(result: dict[str, Any], path: str) -> str:
    """Per tracked layer: measured norm and angular update against both predicted trajectories and their
    equilibria (grey). The measured curve is drawn wide and pale under the predictions, so a prediction lying
    on it stays visible and so does the measurement."""
    layers = result["layers"]
    figure, axes = panels(2, max(1, len(layers)), (4.2, 3.2))
    for column, layer in enumerate(layers):
        for row, quantity in enumerate(("norm", "angular_update")):
            axis = axes[row][column]
            curves = layer["curves"]
            axis.plot(curves[f"measured_{quantity}"]["steps"], curves[f"measured_{quantity}"]["values"],
                      color="black", lw=2.4, alpha=0.3, label="measured", zorder=1)
            for index, (assumption, style) in enumerate(EQUILIBRIUM_STYLES):
                curve = curves[f"{assumption}_{quantity}"]
                axis.plot(curve["steps"], curve["values"], ls=style, lw=1.2, color=f"C{index}",
                          label=f"{assumption} prediction", zorder=3)
                if f"{assumption}_equilibrium_{quantity}" in layer:
                    axis.axhline(layer[f"{assumption}_equilibrium_{quantity}"], ls=style, color="gray", lw=0.8,
                                 label=f"{assumption} equilibrium", zorder=2)
            axis.set(xlabel="step", ylabel="|W|" if quantity == "norm" else "angle per step (rad)",
                     title=f"{layer['name']} ({result['task']}, {result['optimizer']})", yscale="log")
    axes[0][0].legend(fontsize=7)
    return save_figure(figure, path, dpi=110)
