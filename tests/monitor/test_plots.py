"""The monitor figures name their reference lines (bound, zero cosine, warnings, instability) in a legend."""

from __future__ import annotations

from pathlib import Path


from kadam.experiments.monitor import plots
from tests.monitor.helpers import monitored_run_outside_the_region
from tests.figure_helpers import legend_texts


def test_a_protocol_run_figure_labels_every_reference_line(tmp_path: Path, drawn_figures) -> None:
    figures = drawn_figures(plots)
    run = {"losses": [2.0, 1.5, 1.2, 5.0, 9.0], "recorded_steps": [1, 2, 3, 4, 5],
           "max_bound_ratio": [0.5, 0.7, 1.2, 0.9, None], "max_spike_factor": [1.0, 2.0, 30.0, 4.0, None],
           "model_cosine": [0.9, 0.5, -0.1, 0.2, None], "monitor_events": [{"step": 3}, {"step": 3}, {"step": 4}],
           "baselines": {"grad_norm_spike": [4]}, "instability_step": 4,
           "spec": {"task": "t", "knob": "lr", "arm": "failing", "seed": 0}}
    plots.plot_run(run, tmp_path / "run.png")
    texts = legend_texts(figures[0])
    assert {plots.BOUND_LABEL, plots.ORTHOGONAL_LABEL, plots.INSTABILITY_LABEL, "monitor warning",
            "grad_norm_spike warnings"} <= set(texts)
    assert texts.count("monitor warning") == 1  # one entry, however many event lines


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
    plots.plot_sharpness([{"lr": 0.1, "sharpness_steps": [1, 2], "sharpness": [1.0, 50.0], "sharpness_threshold": 38.0}],
                         tmp_path / "sharpness.png")
    assert any(text.startswith("edge of stability") for text in legend_texts(figures[0]))
