"""The comparison figures label their reference lines, keep coinciding curves visible, stay readable with many
workloads and arms, give the forest plot's colours one meaning each (and a scale per workload), show an lr ratio
of 1, and draw the performance profile at the measured ratios."""

import math

import pytest

from kadam.experiments.comparison import plots
from kadam.experiments.comparison.analysis import performance_profile, performance_ratios
from tests.figure_helpers import legend_texts

CURVE = {"steps": [1, 2, 3], "median": [1.0, 0.5, 0.25], "min": [0.9, 0.4, 0.2], "max": [1.1, 0.6, 0.3]}
OTHER = {"steps": [1, 2, 3], "median": [1.0, 0.7, 0.6], "min": [0.9, 0.6, 0.5], "max": [1.1, 0.8, 0.7]}


def _comparison(mean: float, significant: bool) -> dict:
    return {"mean": mean, "ci_adjusted_low": mean - 0.01, "ci_adjusted_high": mean + 0.01, "significant": significant}


def _analysis() -> dict:
    arms = {"adamw": {"curve": CURVE}, "kadam1": {"curve": dict(CURVE)}, "kadam2": {"curve": OTHER}}
    sensitivity = {
        "adamw": {"lr": [1e-3, 1e-2], "validation_loss": [0.5, 0.4]},
        "kadam1": {"lr": [1e-3, 1e-2], "validation_loss": [0.5, 0.4]},
        "kadam2": {"lr": [1e-3, 1e-2], "validation_loss": [0.6, None]},
    }
    return {
        "reference": "adamw",
        "control": "kadam1",
        "workloads": {
            "w": {
                "search": {
                    "arms": arms,
                    "target_train_loss": 0.3,
                    "selection": {arm: {} for arm in arms},
                    "lr_ratio_to_reference": {"kadam1": 1.0, "kadam2": 2.0},
                },
                "sensitivity": sensitivity,
            }
        },
        "families": {
            "search": [
                {"workload": "w", "arm": "kadam1", "comparison": _comparison(0.0, False)},
                {"workload": "w", "arm": "kadam2", "comparison": _comparison(-0.05, True)},
                {"workload": "w", "arm": "adam", "comparison": _comparison(0.05, True)},
            ]
        },
        "performance_profile": {
            "taus": [1.0, 2.0],
            "rho": {"kadam1": [1.0, 1.0], "adamw": [1.0, 1.0], "kadam2": [0.0, 1.0]},
            "ratios": {"kadam1": [1.0], "adamw": [1.0], "kadam2": [1.37]},
        },
    }


def test_reference_lines_are_in_the_legends(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.draw_all(_analysis(), tmp_path)
    texts = {name: legend_texts(figure) for name, figure in zip(plots.CAPTIONS, figures, strict=True)}
    assert any(text.startswith("AdamW target loss") for text in texts["comparison_curves.png"])
    assert "no difference to AdamW" in texts["comparison_forest.png"]
    assert "equal to AdamW's lr" in texts["comparison_lr_ratio.png"]


def test_an_arm_equal_to_adamw_is_labelled_and_drawn_dashed_on_top(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.draw_all(_analysis(), tmp_path)
    curves, sensitivity, _, _, profile = figures
    for figure in (curves, sensitivity, profile):
        lines = {line.get_label().removesuffix(" (1 workload)"): line for line in figure.axes[0].get_lines()}
        twin = lines["kadam1 (control; identical to adamw)"]
        assert twin.get_linestyle() == "--" and twin.get_zorder() > lines["adamw"].get_zorder()
        assert lines["kadam2"].get_linestyle() == "-"  # an arm with its own curve is not marked


def test_forest_colours_mean_one_verdict_each(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.plot_forest(_analysis(), str(tmp_path / "forest.png"))
    axis = figures[0].axes[0]
    intervals = [line for line in axis.get_lines() if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"]
    colours = [line.get_color() for line in intervals if line.get_xdata()[0] != line.get_xdata()[1]]
    assert colours == [plots.FOREST_VERDICTS[v][0] for v in ("not significant", "better", "worse")]
    assert set(legend_texts(figures[0])) >= {label for _, label in plots.FOREST_VERDICTS.values()}
    assert "no difference to AdamW" in legend_texts(figures[0])


def _with_pairing() -> dict:
    analysis = _analysis()
    analysis["families"]["search"] += [
        {"workload": "v", "arm": "kadam2", "comparison": _comparison(-3.0, True)},
        {
            "workload": "w-noln vs w",
            "arm": "kadam2 vs adam",
            "comparison": _comparison(-0.1, True),
            "pairing": {"first": ["w", "adam"], "second": ["w-noln", "kadam2"]},
        },
    ]
    return analysis


def test_forest_has_a_panel_and_scale_per_workload_and_pairings_apart(tmp_path, drawn_figures):
    """A THEORY §4 pairing row is the difference between two named runs, recognised by its ``pairing`` entry (not
    by its label): it gets a panel of its own and a colour that no verdict against AdamW uses."""
    figures = drawn_figures(plots)
    plots.plot_forest(_with_pairing(), str(tmp_path / "forest.png"))
    axes = figures[0].axes
    assert [axis.get_title(loc="left") for axis in axes] == ["w", "v", "THEORY §4 pairings"]
    assert [[t.get_text() for t in axis.get_yticklabels()] for axis in axes] == [
        ["kadam1", "kadam2", "adam"],
        ["kadam2"],
        ["kadam2 on w-noln − adam on w"],
    ]
    low_w, high_w = axes[0].get_xlim()
    low_v, high_v = axes[1].get_xlim()
    assert low_v < -3.0 and high_w - low_w < 0.5 * (high_v - low_v)  # each workload on its own scale
    pairing_colours = {line.get_color() for line in axes[2].get_lines() if line.get_color() != "k"}
    assert pairing_colours == {plots.PAIRING_STYLE[0]}
    assert plots.PAIRING_STYLE[0] not in {colour for colour, _ in plots.FOREST_VERDICTS.values()}
    assert plots.PAIRING_STYLE[1] in legend_texts(figures[0])


def test_many_workloads_and_arms_stay_readable(tmp_path, drawn_figures):
    arms = ["adamw", "kadam1", "adam", "kadam2", "kadam2-elementwise", "kadam2-naive", "kadam2-momentum-last"]
    arms += ["kadam3", "kadam3-elementwise", "kadam3-naive", "kadam3-momentum-last", "muon-adamw"]
    styles = {arm: tuple(plots.arm_style(arm).values()) for arm in arms}
    assert len(set(styles.values())) == len(arms)  # no two arms look alike
    curve = lambda shift: {k: [v + shift for v in values] if k != "steps" else values for k, values in CURVE.items()}  # noqa: E731
    analysis = _analysis()
    analysis["workloads"] = {
        f"w{i}": {"search": {"arms": {arm: {"curve": curve(j / 10)} for j, arm in enumerate(arms)}}} for i in range(6)
    }
    figures = drawn_figures(plots)
    plots.plot_curves(analysis, str(tmp_path / "curves.png"))
    figure = figures[0]
    visible = [axis for axis in figure.axes if axis.get_visible()]
    assert len(visible) == 6 and figure.get_size_inches()[0] <= 13  # a 2 × 3 grid, not a strip of 6
    assert all(axis.get_legend() is None for axis in visible) and len(figure.legends) == 1  # no legend on the data
    assert len(legend_texts(figure)) == len(arms)  # each arm once


def test_an_lr_ratio_of_one_is_visible(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.plot_lr_ratio(_analysis(), str(tmp_path / "ratio.png"))
    markers = {
        line.get_label(): line for line in figures[0].axes[0].get_lines() if line.get_marker() not in ("None", "")
    }
    assert list(markers["kadam1"].get_ydata()) == [1.0] and list(markers["kadam2"].get_ydata()) == [2.0]


def test_performance_profile_uses_true_ratios_and_leaves_out_unrun_workloads():
    metric = {"a": {"adamw": 100.0, "kadam2": 150.0}, "b": {"adamw": 200.0, "kadam2": None, "adam": 130.0}}
    ratios = performance_ratios(metric)
    assert ratios == {"adam": [1.0], "adamw": [1.0, 200 / 130], "kadam2": [1.5, math.inf]}
    rho = performance_profile(metric, [1.0, 1.5, 10.0])
    assert rho["adam"] == [1.0, 1.0, 1.0]  # ran on one workload and was fastest there: not a failure on "a"
    assert rho["kadam2"] == [0.0, 0.5, 0.5]  # ran on both, failed on "b"


def test_performance_profile_steps_at_the_measured_ratios(tmp_path, drawn_figures):
    analysis = _analysis()
    analysis["performance_profile"]["ratios"] = {"adamw": [1.0, 1.23], "kadam2": [1.0, None], "adam": [1.61]}
    figures = drawn_figures(plots)
    plots.plot_performance_profile(analysis, str(tmp_path / "profile.png"))
    lines = {line.get_label().split(" (")[0]: line for line in figures[0].axes[0].get_lines()}
    assert list(lines["adamw"].get_xdata())[:3] == [1.0, 1.0, 1.23]
    assert list(lines["adamw"].get_ydata())[:3] == [0.5, 0.5, 1.0]
    assert max(lines["kadam2"].get_ydata()) == 0.5  # its failure never counts as within τ
    assert list(lines["adam"].get_ydata())[:2] == [0.0, 1.0]  # one workload run, reached at its true ratio 1.61
    assert "adam (1 workload)" in legend_texts(figures[0]) and "adamw (2 workloads)" in legend_texts(figures[0])


@pytest.mark.parametrize("arm", ["kadam2", "kadam3-naive", "muon-adamw"])
def test_arm_style_keeps_a_family_colour(arm):
    assert plots.arm_style(arm)["color"] == {"kadam2": "tab:blue", "kadam3-naive": "tab:red"}.get(arm, "tab:purple")
