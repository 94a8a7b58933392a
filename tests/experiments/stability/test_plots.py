"""The stability figures name their reference lines and regions, and equal slopes at several η stay visible."""

from kadam.experiments.stability import plots
from tests.figure_helpers import legend_texts

TRAINING = {"learning_rates": [1e-2, 1e-3],
            "rows": [{"learning_rate": lr, "predicted_rate": rate, "late_phase_slope": 0.0, "peak_window_slope": 0.1,
                      "beta": 0.9, "gamma": gamma, "excess": excess}
                     for lr in (1e-2, 1e-3) for rate, gamma, excess in ((-0.1, 0.95, 0.5), (0.1, 0.5, 3.0))]}


def test_region_map_names_the_unstable_region_the_contours_and_the_presets(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.plot_region_map(str(tmp_path / "region.png"))
    texts = legend_texts(figures[0])
    assert {"unstable (B_inf infinite)", "log10 B_inf = 0.5, 1, 1.5, 2, 3", "common presets (beta, gamma)"} <= set(texts)
    assert texts.count("common presets (beta, gamma)") == 1


def test_slope_scatter_names_both_zero_lines_and_nests_equal_slopes(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    switch_off = {"rows": [{"betas": [0.9], "predicted_slope": 0.1, "measured_slope": 0.1}]}
    plots.plot_slope_scatter(switch_off, TRAINING, str(tmp_path / "slopes.png"))
    texts = legend_texts(figures[0])
    assert {"measured slope 0 (no growth)", "predicted rate 0 (boundary gamma = beta^2)", "measured = predicted"} <= set(texts)
    squares = [line for line in figures[0].axes[0].get_lines() if line.get_marker() == "s"]
    assert squares[0].get_markersize() > squares[1].get_markersize()  # the same slopes at two η: both visible


def test_excess_figure_names_the_bound(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    plots.plot_excess_by_learning_rate(TRAINING, str(tmp_path / "excess.png"))
    assert "update bound C_n(beta) (ratio 1)" in legend_texts(figures[0])
