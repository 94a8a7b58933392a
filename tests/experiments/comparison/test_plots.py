"""The comparison figures label their reference lines, keep coinciding curves visible, and give the forest
plot's colours one meaning each."""

from kadam.experiments.comparison import plots
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
            "rho": {"kadam1": [0.5, 1.0], "adamw": [0.5, 1.0], "kadam2": [0.0, 1.0]},
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
        lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
        twin = lines["kadam1 (control; identical to adamw)"]
        assert twin.get_linestyle() == "--" and twin.get_zorder() > lines["adamw"].get_zorder()
        assert lines["kadam2"].get_linestyle() == "-"  # an arm with its own curve is not marked


def test_forest_colours_mean_one_verdict_each(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.plot_forest(_analysis(), str(tmp_path / "forest.png"))
    axis = figures[0].axes[0]
    intervals = [
        line
        for line in axis.get_lines()
        if len(line.get_xdata()) == 2 and line.get_linestyle() == "-" and line.get_label() != "no difference to AdamW"
    ]
    colours = [line.get_color() for line in intervals]
    assert colours == [plots.FOREST_VERDICTS[v][0] for v in ("not significant", "better", "worse")]
    assert set(legend_texts(figures[0])) >= {label for _, label in plots.FOREST_VERDICTS.values()}


def test_forest_labels_a_pairing_by_its_two_runs(tmp_path, drawn_figures):
    """A THEORY §4 pairing row is the difference between two named runs, recognised by its ``pairing`` entry
    (not by its label), and says so."""
    analysis = _analysis()
    analysis["families"]["search"].append(
        {
            "workload": "w-noln vs w",
            "arm": "kadam2 vs adam",
            "comparison": _comparison(-0.1, True),
            "pairing": {"first": ["w", "adam"], "second": ["w-noln", "kadam2"]},
        }
    )
    figures = drawn_figures(plots)
    plots.plot_forest(analysis, str(tmp_path / "forest.png"))
    labels = [tick.get_text() for tick in figures[0].axes[0].get_yticklabels()]
    assert labels == ["w: kadam1", "w: kadam2", "w: adam", "kadam2 on w-noln − adam on w"]
