"""The monitor figures name their reference lines (bound, zero cosine, warnings, instability) in a legend."""

from __future__ import annotations

from pathlib import Path

from kadam.experiments.monitor import plots
from tests.figure_helpers import legend_texts
from tests.monitor.helpers import monitored_run_outside_the_region


def test_a_validation_run_figure_draws_the_lr_and_names_each_check_that_fired(tmp_path: Path, drawn_figures) -> None:
    figures = drawn_figures(plots)
    run = {
        "losses": [2.0, 1.5, 1.2, 5.0, 9.0],
        "lrs": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
        "grad_norms": [1.0, 1.0, 2.0, 5.0, float("inf")],
        "update_ratios": [0.01, 0.02, 0.05, 0.2, 0.9],
        "constant_loss": 2.3,
        "instability_step": 4,
        "spec": {"workload": "digits-cnn", "family": "ramp", "arm": "failing", "seed": 0},
    }
    plots.plot_validation_run(run, {"update_rise": [2, 3], "nonfinite": [5], "curvature": []}, tmp_path / "run.png")
    texts = legend_texts(figures[0])
    assert {
        "monitor: update_rise",
        "monitor: nonfinite",
        plots.INSTABILITY_LABEL,
        "loss of ignoring the inputs",
    } <= set(texts)
    assert texts.count("monitor: update_rise") == 1 and "monitor: curvature" not in texts
    axes = figures[0].axes
    assert any(axis.get_ylabel() == "learning rate" for axis in axes)


def test_a_history_figure_labels_the_bound_the_zero_cosine_and_the_warnings(tmp_path: Path, drawn_figures) -> None:
    monitor = monitored_run_outside_the_region()  # outside the region: an event
    figures = drawn_figures(plots)
    plots.plot_history(monitor.history, tmp_path / "history.png", instability_step=3)
    texts = set(legend_texts(figures[0]))
    sources = {event.source for event in monitor.history.events}
    assert sources and {f"{source} warning" for source in sources} <= texts
    assert {plots.BOUND_LABEL, plots.ORTHOGONAL_LABEL, plots.INSTABILITY_LABEL} <= texts


def test_the_sharpness_threshold_is_in_the_legend(tmp_path: Path, drawn_figures) -> None:
    figures = drawn_figures(plots)
    plots.plot_sharpness(
        [{"lr": 0.1, "sharpness_steps": [1, 2], "sharpness": [1.0, 50.0], "sharpness_threshold": 38.0}],
        tmp_path / "sharpness.png",
    )
    assert any(text.startswith("edge of stability") for text in legend_texts(figures[0]))
