"""The stability section's analyses on synthetic inputs: intervals, agreements, growth, Holm, the margin rules."""

import math

import pytest

from kadam.experiments.stability.analysis import (
    agreement_verdict,
    eta_trend,
    growth_rates,
    growth_verdict,
    holm,
    margin_analysis,
    margin_verdict_rule,
    mean_interval,
    proportion_interval,
    region_versus_harm,
    summarize_training_protocol,
)
from kadam.experiments.stability.protocol import region_of
from kadam.experiments.stability.section import TREND_SENTENCES

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


def test_mean_interval_is_student_t_and_empty_with_one_value():
    summary = mean_interval([1.0, 2.0, 3.0])
    assert summary["mean"] == 2.0 and summary["n"] == 3
    assert summary["high"] - 2.0 == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)
    assert mean_interval([5.0])["low"] is None and mean_interval([5.0])["mean"] == 5.0
    assert mean_interval([float("nan")])["mean"] is None


def test_proportion_interval_is_clopper_pearson():
    low, high = proportion_interval(5, 10)
    assert (low, high) == pytest.approx((0.187086, 0.812914), abs=1e-6)
    assert proportion_interval(10, 10)[1] == 1.0 and proportion_interval(0, 10)[0] == 0.0


def _row(beta, gamma, lr, seed, late_unstable, unstable=None, slope=0.0, final_loss=0.05, diverged=False):
    return {
        "beta": beta,
        "gamma": gamma,
        "learning_rate": lr,
        "seed": seed,
        "region": region_of(beta, gamma),
        "late_unstable": late_unstable,
        "unstable": late_unstable if unstable is None else unstable,
        "stable_exact": gamma > beta**2,
        "stable_paper": gamma > beta / (2 - beta),
        "cpu_seconds": 1.0,
        "predicted_rate": math.log(beta) - 0.5 * math.log(gamma),
        "late_phase_slope": slope,
        "slope": slope,
        "final_loss": final_loss,
        "diverged": diverged,
    }


# (0.9, 0.5) outside both, (0.9, 0.814081) between, (0.9, 0.999) inside both
POINTS = ((0.9, 0.5), (0.9, 0.814081), (0.9, 0.999))


def test_agreement_can_disagree_on_either_side_of_either_boundary():
    """A measured-unstable point inside both regions and a measured-stable one outside both both count against."""
    rows = []
    for seed in (0, 1, 2):
        rows += [
            _row(0.9, 0.5, 1e-2, seed, False),
            _row(0.9, 0.814081, 1e-2, seed, True),
            _row(0.9, 0.999, 1e-2, seed, seed == 0),
        ]
    entry = summarize_training_protocol(rows, [1e-2], SIZES)["per_learning_rate"][0]
    # outside: stable (disagrees with both); between: unstable (agrees with the paper only); inside: 1 of 3 unstable
    assert entry["late_agreement_exact"] == pytest.approx(2 / 9)
    assert entry["late_agreement_paper"] == pytest.approx(5 / 9)
    assert entry["intervals"]["late_agreement_paper"]["per_seed"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert (
        entry["intervals"]["late_agreement_paper"]["low"] < 5 / 9 < entry["intervals"]["late_agreement_paper"]["high"]
    )
    assert entry["late_unstable_by_region"] == {
        "outside both": 0.0,
        "between": 1.0,
        "inside both": pytest.approx(1 / 3),
    }
    assert entry["predicted_unstable_exact"] == 1 and entry["predicted_unstable_paper"] == 2
    assert agreement_verdict([entry], "late_agreement_exact") == "refuted"


def test_agreement_verdict_needs_two_seeds_and_reads_the_interval():
    perfect = [_row(b, g, 1e-2, seed, not g > b**2) for seed in (0, 1) for b, g in POINTS]
    entry = summarize_training_protocol(perfect, [1e-2], SIZES)["per_learning_rate"][0]
    assert entry["late_agreement_exact"] == 1.0
    # 6 of 6 runs agree: the exact interval's lower end is 0.61, below the 90% bar: not resolved
    assert agreement_verdict([entry], "late_agreement_exact") == "not resolved at this budget"
    assert agreement_verdict([entry], "late_agreement_exact", bar=0.5) == "confirmed"
    one_seed = summarize_training_protocol(perfect[:3], [1e-2], SIZES)["per_learning_rate"][0]
    assert one_seed["intervals"]["late_agreement_exact"]["low"] is None
    assert agreement_verdict([one_seed], "late_agreement_exact", bar=0.5) == "not resolved at this budget"


def test_eta_trend_of_the_summary_reads_the_mean_counts_per_seed():
    rows = [_row(0.9, 0.5, lr, seed, lr == 1e-2) for lr in (1e-2, 1e-4) for seed in (0, 1)]
    summary = summarize_training_protocol(rows, [1e-2, 1e-4], SIZES)
    assert [e["measured_late_unstable"] for e in summary["per_learning_rate"]] == [1.0, 0.0]
    assert summary["late_trend"] == "widens" and summary["seeds"] == [0, 1]


def _rates(slopes, beta=0.9, gamma=0.5):
    return growth_rates([_row(beta, gamma, 1e-2, seed, False, slope=s) for seed, s in enumerate(slopes)])


def test_growth_verdict_refutes_slopes_far_below_the_predicted_rate():
    rho = math.log(0.9) - 0.5 * math.log(0.5)  # 0.241
    slow = growth_verdict(_rates([0.002, 0.004, 0.003]))
    assert slow["verdict"] == "refuted" and slow["too_slow"] == 1 and slow["points"] == 1
    assert slow["median_ratio"] == pytest.approx(0.003 / rho)
    assert growth_verdict(_rates([rho * 0.9, rho * 1.1, rho]))["verdict"] == "confirmed"
    assert growth_verdict(_rates([0.003]))["verdict"] == "not resolved at this budget"  # one seed: no interval
    wide = growth_verdict(_rates([-0.2, 0.3, 0.01]))  # the interval reaches both 0 and the predicted rate
    assert wide["verdict"] == "not resolved at this budget"


def test_growth_rates_only_claim_points_outside_the_region():
    inside = growth_verdict(_rates([0.0, 0.0], gamma=0.999))
    assert inside["points"] == 0 and inside["verdict"] == "not resolved at this budget"


def test_holm_on_known_p_values():
    # sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 = 0.04, 0.06, 0.06, 0.04 -> monotone 0.04, 0.06, 0.06, 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    assert holm([0.024, 0.19, 0.39]) == pytest.approx([0.072, 0.38, 0.39])  # "p = 0.024" alone is not significant


def _margin_cell(lr, seed, losses, beta=0.9, gammas=(0.3, 0.5, 0.7, 0.8, 0.95), untrained=4.3, constant=3.3):
    return {
        "lr": lr,
        "seed": seed,
        "untrained_validation_loss": untrained,
        "constant_predictor_loss": constant,
        "runs": [
            {"betas": [beta, gamma], "validation_loss": loss, "diverged": loss is None}
            for gamma, loss in zip(gammas, losses)
        ],
    }


def test_a_validation_loss_of_45316_is_diverged_and_excluded():
    cell = _margin_cell(1e-2, 0, [45_315.96, 6.41, 2.89, 2.69, 2.69])
    analysis = margin_analysis([cell])
    assert [d["validation_loss"] for d in analysis["diverged"]] == [45_315.96]
    flags = {run["gamma"]: (run["diverged"], run["trained"]) for run in analysis["runs"]}
    # 6.41 is below 2 x 4.3 (not diverged) but above the constant predictor's 3.3 (did not train)
    assert flags[0.3] == (True, False) and flags[0.5] == (False, False) and flags[0.7] == (False, True)
    assert analysis["per_learning_rate"][0]["trained"] == 3 and analysis["per_learning_rate"][0]["diverged"] == 1


def test_runs_that_did_not_train_are_not_tested():
    cells = [_margin_cell(1e-4, seed, [4.27, 4.28, 4.28, 4.29, 4.28]) for seed in (0, 1)]
    analysis = margin_analysis(cells)
    assert analysis["tests"] == 0 and analysis["strata"][0]["trained"] == 0
    assert margin_verdict_rule(analysis) == "not resolved at this budget"


def test_margin_is_tested_within_beta_with_holm():
    """Across β the losses rise with the margin (β confounds it); within each β they fall."""
    cells = []
    for seed in (0, 1):
        cells.append(_margin_cell(1e-2, seed, [2.9, 2.8, 2.7, 2.6, 2.5], beta=0.5, gammas=(0.26, 0.3, 0.5, 0.8, 0.95)))
        cells.append(
            _margin_cell(1e-2, seed, [2.4, 2.3, 2.2, 2.1, 2.0], beta=0.9, gammas=(0.82, 0.85, 0.9, 0.95, 0.99))
        )
    analysis = margin_analysis(cells)
    assert analysis["tests"] == 2
    assert all(s["spearman_rho"] == pytest.approx(-1.0) and s["significant"] for s in analysis["strata"])
    assert all(s["holm_p"] >= s["p_value"] for s in analysis["strata"])
    assert margin_verdict_rule(analysis) == "confirmed"
    rising = [
        _margin_cell(1e-2, seed, [2.0, 2.1, 2.2, 2.3, 2.4], beta=0.9, gammas=(0.82, 0.85, 0.9, 0.95, 0.99))
        for seed in (0, 1)
    ]
    assert margin_verdict_rule(margin_analysis(rising)) == "refuted"
    noisy = [
        _margin_cell(1e-2, seed, [2.1, 2.3, 2.0, 2.4, 2.2], beta=0.9, gammas=(0.82, 0.85, 0.9, 0.95, 0.99))
        for seed in (0, 1)
    ]
    assert margin_verdict_rule(margin_analysis(noisy)) == "not resolved at this budget"


def test_region_versus_harm_reads_the_final_loss_interval():
    rows = []
    for seed, noise in ((0, 0.0), (1, 0.001), (2, -0.001)):
        rows += [
            _row(0.9, 0.999, 1e-2, seed, False, final_loss=0.040 + noise),
            _row(0.9, 0.5, 1e-2, seed, False, final_loss=0.041 + noise),  # within 10%: unharmed
            _row(0.9, 0.3, 1e-2, seed, True, final_loss=2.8 + noise),
        ]  # far above: harmed
    harm = region_versus_harm(rows)
    states = {(p["beta"], p["gamma"]): p["state"] for p in harm["per_learning_rate"][0]["points"]}
    assert states == {(0.9, 0.3): "harmed", (0.9, 0.5): "unharmed"}
    assert harm["outside"] == 2 and harm["harmed"] == 1 and harm["unharmed"] == 1
    with pytest.raises(ValueError, match="tolerance"):
        region_versus_harm(rows, tolerance=-1)
