"""The accuracy figure draws, beside the run from θ₀, the model restarted from the discrete state, where that run
is the accuracy run's own (same problem, k, η and seed)."""

from kadam.experiments.flow import plots
from tests.figure_helpers import legend_texts


def _curve(values):
    return {"steps": [0, 50, 100, 150, 200], "values": values}


ACCURACY = {
    "lr": 1e-3,
    "seed": 0,
    "bar": 0.01,
    "rates": "exact",
    "order": 1,
    "rows": [
        {"problem": "quadratic", "k": 1, "error_curve": _curve([0.0, 1e-4, 1e-4, 1e-4, 1e-4])},
        {"problem": "mlp", "k": 1, "error_curve": _curve([0.0, 0.01, 0.02, 0.04, 0.05])},
    ],
}
RESTART = {
    "problem": "mlp",
    "k": 1,
    "lr": 1e-3,
    "seed": 0,
    "rows": [{"restart_step": 100, "max_rel_error": 0.002, "error_curve": _curve([0.0, 0.0, 0.0, 1e-3, 2e-3])}],
}


def test_the_restarted_model_is_drawn_on_its_problems_panel_from_its_restart_step(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.plot_accuracy(ACCURACY, tmp_path / "accuracy.png", RESTART)
    quadratic, mlp = figures[0].axes
    label = "k = 1, model restarted from the discrete state at step 100"
    assert label in legend_texts(figures[0]) and label not in [t.get_text() for t in quadratic.get_legend().get_texts()]
    (restarted,) = [line for line in mlp.get_lines() if line.get_label() == label]
    assert list(restarted.get_xdata()) == [150, 200]  # zero before the restart: nothing drawn there on a log axis


def test_a_restart_at_another_lr_or_seed_or_run_is_not_drawn(tmp_path, drawn_figures):
    assert plots.restarts_drawn(ACCURACY, RESTART) == RESTART["rows"]
    for change in ({"lr": 2e-3}, {"seed": 1}, {"k": 2}, {"problem": "logistic"}):
        assert plots.restarts_drawn(ACCURACY, {**RESTART, **change}) == []
    figures = drawn_figures(plots)
    plots.plot_accuracy(ACCURACY, tmp_path / "accuracy.png", {**RESTART, "lr": 2e-3})
    assert not any("restarted" in text for text in legend_texts(figures[0]))
