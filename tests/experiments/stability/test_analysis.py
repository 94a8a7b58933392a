"""The stability section's verdicts on synthetic inputs: the η trend, the widening over every η, the margin."""

import pytest

from kadam.experiments.stability.analysis import eta_trend, stability_margin_correlation, summarize_training_protocol
from kadam.experiments.stability.section import TREND_SENTENCES, margin_verdict

SIZES = {"steps": 10, "corpus_chars": 64, "context": 8, "width": 8, "heads": 1, "layers": 1, "seed": 0}


@pytest.mark.parametrize(
    "counts, trend",
    [
        ({1e-2: 3, 1e-3: 3, 1e-4: 3}, "none"),
        ({1e-2: 5, 1e-3: 3, 1e-4: 3}, "widens"),
        ({1e-2: 1, 1e-3: 2, 1e-4: 4}, "narrows"),
        ({1e-2: 2, 1e-3: 4, 1e-4: 1}, "not monotone"),
        ({1e-3: 7}, "none"),
        ({1e-4: 3, 1e-2: 5, 1e-3: 4}, "widens"),  # order of the mapping does not matter
    ],
)
def test_eta_trend_every_branch(counts, trend):
    assert eta_trend(counts) == trend
    assert trend in TREND_SENTENCES


def test_eta_trend_needs_a_learning_rate():
    with pytest.raises(ValueError, match="at least one learning rate"):
        eta_trend({})


def _row(beta, gamma, lr, unstable, excess, late_unstable=None):
    stable = gamma > beta**2
    return {"beta": beta, "gamma": gamma, "learning_rate": lr, "unstable": unstable,
            "late_unstable": unstable if late_unstable is None else late_unstable, "stable_exact": stable,
            "stable_paper": gamma > beta / (2 - beta), "excess": excess, "cpu_seconds": 1.0}


def test_widening_is_computed_over_every_learning_rate():
    """The bug on main: per-η cells re-merged with {**parts[0], ...} kept the first cell's verdict (η = 1e-2 only)."""
    rows = []
    for lr, flagged, excess in ((1e-2, True, 3.0), (1e-3, True, 2.0), (1e-4, False, 0.5)):
        rows += [_row(0.9, 0.5, lr, flagged, excess), _row(0.5, 0.95, lr, False, 0.1)]
    summary = summarize_training_protocol(rows, [0.5, 0.9], [0.5, 0.95], [1e-2, 1e-3, 1e-4], SIZES)
    widening = summary["widening"]
    assert widening["largest_learning_rate"] == 1e-2 and widening["smallest_learning_rate"] == 1e-4
    assert widening["trend"] == "widens" and widening["widens"] is True and widening["excess_shrinks"] is True
    assert [s["measured_unstable"] for s in summary["per_learning_rate"]] == [1, 1, 0]
    assert summary["cpu_seconds"] == 6.0 and summary["learning_rates"] == [1e-2, 1e-3, 1e-4]
    one = summarize_training_protocol(rows[:2], [0.5, 0.9], [0.5, 0.95], [1e-2], SIZES)["widening"]
    assert one["trend"] == "none" and one["widens"] is False and one["excess_shrinks"] is None


def test_widening_not_monotone_is_not_called_widening():
    rows = []
    for lr, flagged in ((1e-2, True), (1e-3, False), (1e-4, True)):
        rows += [_row(0.9, 0.5, lr, flagged, 2.0 if flagged else 0.5), _row(0.9, 0.3, lr, False, 0.5)]
    widening = summarize_training_protocol(rows, [0.9], [0.3, 0.5], [1e-2, 1e-3, 1e-4], SIZES)["widening"]
    assert widening["trend"] == "not monotone" and widening["widens"] is False


def _margin_runs(lr, losses):
    gammas = [0.3, 0.5, 0.7, 0.8, 0.95]
    return [{"betas": [0.9, gamma], "lr": lr, "validation_loss": loss, "diverged": loss is None}
            for gamma, loss in zip(gammas, losses)]


@pytest.mark.parametrize(
    "losses, claimed, verdict",
    [
        ([5.0, 4.0, 3.0, 2.0, 1.0], True, "as the paper claims"),  # larger margin (larger γ), lower loss
        ([1.0, 2.0, 3.0, 4.0, 5.0], True, "against the paper's claim"),
        ([1.0, 3.0, 2.0, 1.5, 2.5], False, "not significant"),
        ([2.0, 2.0, 2.0, 2.0, 2.0], False, "no rank correlation can be computed"),
    ],
    ids=["significant-as-claimed", "significant-against", "not-significant", "undefined"],
)
def test_margin_verdict_every_branch(losses, claimed, verdict):
    entry = stability_margin_correlation(_margin_runs(1e-3, losses))["per_learning_rate"][0]
    assert entry["claimed"] is claimed
    assert verdict in margin_verdict(entry)


def test_a_diverged_run_ranks_worst():
    entry = stability_margin_correlation(_margin_runs(1e-2, [None, 4.0, 3.0, 2.0, 1.0]))["per_learning_rate"][0]
    assert entry["spearman_rho"] == pytest.approx(-1.0)
