"""The stability section's prose and claims: each branch chosen by the data (synthetic inputs)."""

from __future__ import annotations

import pytest

from kadam.experiments.stability.analysis import bound_versus_harm, margin_correlation_without_diverged
from kadam.experiments.stability.section import harm_findings, margin_findings, stability_claims


def _row(beta, gamma, lr, loss, unstable, diverged=False):
    return {"beta": beta, "gamma": gamma, "learning_rate": lr, "final_loss": loss, "unstable": unstable,
            "diverged": diverged}


def test_runs_over_the_bound_that_train_as_well_are_not_harmed_and_a_divergence_is_named():
    rows = [_row(0.5, 0.9, 0.01, 0.040, False), _row(0.5, 0.95, 0.01, 0.041, False),
            _row(0.9, 0.5, 0.01, 0.043, True), _row(0.9, 0.3, 0.01, float("nan"), True, diverged=True),
            _row(0.5, 0.9, 0.001, 0.050, False), _row(0.9, 0.3, 0.001, 0.2, True)]
    harm = bound_versus_harm(rows)
    assert harm["unstable"] == 3 and harm["unstable_unharmed"] == 1
    assert harm["diverged"] == [{"beta": 0.9, "gamma": 0.3, "learning_rate": 0.01}]
    first = harm["per_learning_rate"][0]
    assert first["stable_loss_range"] == [0.040, 0.041] and first["unstable_loss_range"] == [0.043, 0.043]
    text = " ".join(harm_findings(harm))
    assert "1 of 3 runs measured unstable" in text and "(0.9, 0.3) at η = 0.01 diverged" in text
    assert "final loss 0.2" in text
    claim = next(c for c in stability_claims(_switch(), _merged([1.0], [0.8]), harm, []) if "harmed" in c.text)
    assert claim.verdict == "not resolved at this budget"  # 1 unharmed, 2 harmed: neither side holds
    with pytest.raises(ValueError, match="tolerance"):
        bound_versus_harm(rows, tolerance=-1)


def test_no_unstable_run_says_nothing_can_be_concluded():
    harm = bound_versus_harm([_row(0.5, 0.9, 0.01, 0.04, False)])
    assert harm_findings(harm) == ["No training-protocol run exceeded the bound, so this run cannot say whether "
                                   "exceeding it harms training."]


def _points(pairs, diverged_last=False):
    points = [{"beta": 0.9, "gamma": 0.9, "margin": m, "validation_loss": v, "diverged": False} for m, v in pairs]
    if diverged_last:
        points[-1]["diverged"] = True
    return points


def test_a_significant_rho_that_rests_on_one_divergence_is_reported_with_and_without_it():
    # with the diverged run (ranked worst at the smallest margin) ρ = −1; without it the order is mixed
    with_divergence = _points([(0.5, 1.0), (0.4, 1.2), (0.3, 0.9), (0.2, 1.1), (0.1, 1.05), (-0.5, 3000.0)],
                              diverged_last=True)
    positive = _points([(0.1, 1.0), (0.2, 1.1), (0.3, 1.2), (0.4, 1.3)])
    correlation = {"per_learning_rate": [
        {"lr": 0.01, "points": with_divergence, "spearman_rho": -0.83, "p_value": 0.04, "claimed": True},
        {"lr": 0.001, "points": positive, "spearman_rho": 1.0, "p_value": 0.0, "claimed": True}]}
    without = margin_correlation_without_diverged(correlation)
    assert without[0]["diverged"] == 1 and without[0]["runs"] == 5 and without[0]["rests_on_divergence"]
    assert without[1]["spearman_rho"] == pytest.approx(1.0) and not without[1]["rests_on_divergence"]
    text = " ".join(margin_findings(correlation, without))
    assert "rests on the divergence" in text
    assert "ρ is positive" in text and "η = 0.001" in text and "significantly at some" in text
    claim = next(c for c in stability_claims(_switch(), _merged([1.0], [0.8]), bound_versus_harm([]), without)
                 if "margin" in c.text)
    assert claim.verdict == "refuted" and claim.source == "paper"


def test_margin_claim_confirmed_only_when_every_rate_is_significantly_negative():
    negative = [{"lr": lr, "diverged": 0, "runs": 5, "spearman_rho": -0.9, "p_value": 0.01, "claimed": True,
                 "rests_on_divergence": False} for lr in (0.01, 0.001)]
    claims = stability_claims(_switch(), _merged([1.0], [0.8]), bound_versus_harm([]), negative)
    assert next(c for c in claims if "margin" in c.text).verdict == "confirmed"
    mixed = [negative[0], {**negative[1], "spearman_rho": -0.2, "p_value": 0.5, "claimed": False}]
    claims = stability_claims(_switch(), _merged([1.0], [0.8]), bound_versus_harm([]), mixed)
    assert next(c for c in claims if "margin" in c.text).verdict == "not resolved at this budget"


def _switch(within=True):
    return {"all_within_tolerance": within, "max_abs_error": 1e-9}


def _merged(exact, paper):
    return {"per_learning_rate": [{"agreement_exact": e, "agreement_paper": p} for e, p in zip(exact, paper)]}


@pytest.mark.parametrize(("exact", "paper", "within", "verdicts"), [
    ([1.0, 1.0], [0.87, 0.9], True, ("refuted", "confirmed")),
    ([1.0], [1.0], True, ("not resolved at this budget", "not resolved at this budget")),  # grid cannot separate
    ([0.7], [1.0], True, ("confirmed", "refuted")),
    ([1.0], [0.8], False, ("refuted", "not resolved at this budget")),  # switch-off out of tolerance
])
def test_boundary_verdicts_follow_the_agreements(exact, paper, within, verdicts):
    claims = stability_claims(_switch(within), _merged(exact, paper), bound_versus_harm([]), [])
    assert (claims[0].verdict, claims[1].verdict) == verdicts
    assert f"{min(paper):.0%}" in claims[0].evidence and f"{min(exact):.0%}" in claims[0].evidence
