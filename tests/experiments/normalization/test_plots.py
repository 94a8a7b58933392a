"""The normalization figures name their equilibrium lines and keep coinciding curves visible."""

from kadam.experiments.normalization import plots
from tests.figure_helpers import legend_texts

CURVE = {"steps": list(range(50)), "values": [1.0 + 0.01 * i for i in range(50)]}


def test_random_walk_names_both_equilibria_on_both_panels_and_marks_each_beta(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    rows = [
        {
            "beta": beta,
            "corrected_norm": 1.5,
            "orthogonal_norm": 0.5 + beta,
            "corrected_angular_update": 0.01,
            "orthogonal_angular_update": 0.02,
        }
        for beta in (0.0, 0.9)
    ]
    walk = {
        "by_beta": rows,
        "curves": {f"beta={row['beta']}": {"norm": CURVE, "angular_update": CURVE} for row in rows},
    }
    plots.plot_random_walk(walk, str(tmp_path / "walk.png"))
    (figure,) = figures
    for axis in figure.axes:
        texts = [text.get_text() for text in axis.get_legend().get_texts()]
        assert {"corrected equilibrium", "orthogonal equilibrium", "β = 0.0", "β = 0.9"} <= set(texts)
    first, second = (line for line in figure.axes[0].get_lines() if line.get_label().startswith("β"))
    assert first.get_marker() != second.get_marker()  # equal curves (here identical) stay distinguishable
    assert first.get_markevery() != second.get_markevery()


def test_digits_norms_is_one_grid_with_the_measurement_drawn_on_top(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    curves = {
        f"{kind}_{quantity}": CURVE
        for kind in ("measured", "corrected", "orthogonal")
        for quantity in ("norm", "angular_update")
    }
    layer = {
        "name": "0.weight",
        "curves": curves,
        "corrected_equilibrium_norm": 2.0,
        "orthogonal_equilibrium_norm": 1.0,
        "corrected_equilibrium_angular_update": 0.1,
        "orthogonal_equilibrium_angular_update": 0.2,
    }
    runs = [
        {
            "layers": [layer, {**layer, "name": "3.weight"}],
            "task": task,
            "optimizer": "adamw",
            "weight_decay": 0.1,
            "steps": 50,
            "window_start": 25,
            "relaxation_times_run": 2.0,
            "equilibrated": False,
        }
        for task in ("digits-bn", "digits-ln")
    ]
    plots.plot_digits_norms(runs, str(tmp_path / "n.png"))
    (figure,) = figures
    assert len(figure.axes) == 8  # 2 runs × 2 layers × (norm, angle): one figure for every run
    assert {
        "measured",
        "corrected replay",
        "orthogonal replay",
        "corrected equilibrium",
        "orthogonal equilibrium",
    } <= set(legend_texts(figure))
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert lines["measured"].get_zorder() > lines["corrected replay"].get_zorder()  # not hidden under the replay
    assert "too short" in figure.axes[0].get_title()


def test_meta_adaptive_draws_the_per_tensor_curve_dashed_over_the_elementwise_one(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    configs = [{"beta": 0.0, "gamma": 0.999, "norm": norm, "cosine_curve": CURVE} for norm in ("elementwise", "tensor")]
    plots.plot_meta_adaptive({"configs": configs, "d": 8}, None, str(tmp_path / "meta.png"))
    elementwise, tensor = figures[0].axes[0].get_lines()
    assert (elementwise.get_linestyle(), tensor.get_linestyle()) == ("-", "--")
    assert tensor.get_zorder() > elementwise.get_zorder()
