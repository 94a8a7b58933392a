"""The learning-rate transfer figure keeps curves that lie on each other (and on the base run) visible."""

from kadam.experiments.transfer import plots


def test_each_beta_rule_has_its_own_dash_and_marker_over_the_base(tmp_path, drawn_figures):
    figures = drawn_figures(plots)
    curve = [1.0 / (1 + i) for i in range(20)]
    variants = {name: {"loss_curve": curve, "loss_gap": 0.0} for name in ("exact", "paper", "naive")}
    plots.plot_lr_transfer(
        {
            "rows": [{"factor": 2, "variants": variants}],
            "base_loss_curve": curve,
            "horizon": 1.0,
            "lr": 4e-3,
            "problem": "logistic",
        },
        str(tmp_path / "lr.png"),
    )
    base, *rules = figures[0].axes[0].get_lines()
    assert len({(line.get_linestyle(), line.get_marker()) for line in rules}) == 3  # identical curves, all told apart
    assert len({str(line.get_markevery()) for line in rules}) == 3  # markers staggered, not stacked
    assert all(line.get_zorder() > base.get_zorder() for line in rules)
