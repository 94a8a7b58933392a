"""The stability figures: every run visible, legends outside the data, no colour bar for a few β, no empty panel."""

from kadam.experiments.stability import plots
from tests.figure_helpers import legend_texts


def _row(lr, seed, beta, gamma, unstable):
    import math

    return {
        "learning_rate": lr,
        "seed": seed,
        "beta": beta,
        "gamma": gamma,
        "late_unstable": unstable,
        "diverged": False,
        "predicted_rate": math.log(beta) - 0.5 * math.log(gamma),
    }


TRAINING = {
    "learning_rates": [1e-2, 1e-3],
    "rows": [
        _row(lr, seed, 0.7, gamma, gamma < 0.49)
        for lr in (1e-2, 1e-3)
        for seed in (0, 1)
        for gamma in (0.3, 0.5, 0.999)
    ],
}


def test_region_map_names_the_unstable_region_the_contours_and_the_presets(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.plot_region_map(str(tmp_path / "region.png"))
    texts = legend_texts(figures[0])
    assert {"unstable (B_inf infinite)", "log10 B_inf = 0.5, 1, 1.5, 2, 3", "common presets (beta, gamma)"} <= set(
        texts
    )
    assert texts.count("common presets (beta, gamma)") == 1


def test_classification_draws_every_run_with_no_empty_panel_and_the_legend_outside(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.plot_classification(TRAINING, str(tmp_path / "classes.png"))
    figure = figures[0]
    assert len(figure.axes) == 2 and all(axes.get_visible() for axes in figure.axes)
    assert all(axes.get_legend() is None for axes in figure.axes) and len(figure.legends) == 1  # covers no cell
    for axes in figure.axes:  # the (0.7, 0.3) runs are drawn, one marker per seed
        markers = [line for line in axes.get_lines() if line.get_marker() == "o" and len(line.get_xdata()) == 1]
        assert len(markers) == 6
    assert not any(text.get_text() in ("U", "s") for axes in figure.axes for text in axes.texts)


def test_margin_figure_has_one_colour_per_beta_and_no_colour_bar(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    runs = [
        {
            "lr": 1e-2,
            "seed": s,
            "beta": b,
            "gamma": g,
            "margin": 0.1 * i,
            "validation_loss": 2.5 + 0.01 * i,
            "trained": True,
            "diverged": False,
        }
        for s in (0, 1)
        for b in (0.5, 0.9)
        for i, g in enumerate((0.9, 0.99))
    ]
    runs.append(
        {
            "lr": 1e-2,
            "seed": 0,
            "beta": 0.9,
            "gamma": 0.3,
            "margin": -0.5,
            "validation_loss": 45_316.0,
            "trained": False,
            "diverged": True,
        }
    )
    plots.plot_stability_margin({"runs": runs}, str(tmp_path / "margin.png"))
    figure = figures[0]
    assert len(figure.axes) == 1  # no colour bar axes
    assert figure.axes[0].get_ylim()[1] < 10  # the diverged run does not squash the axis
    assert "1 diverged" in figure.axes[0].get_title()
    assert {"beta = 0.5", "beta = 0.9"} <= {text.get_text() for text in figure.legends[0].get_texts()}


def test_slopes_figure_names_both_zero_lines_and_the_identity(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    switch_off = {"rows": [{"betas": [0.9], "predicted_slope": 0.1, "measured_slope": 0.1}]}
    rates = [{"learning_rate": 1e-2, "predicted_rate": 0.24, "late_slope": {"mean": 0.002, "low": 0.0, "high": 0.004}}]
    plots.plot_slopes(switch_off, rates, str(tmp_path / "slopes.png"))
    for axes in figures[0].axes:
        texts = [text.get_text() for text in axes.get_legend().get_texts()]
        assert {"measured slope 0 (no growth)", "gamma = beta^2 (predicted 0)", "measured = predicted"} <= set(texts)
