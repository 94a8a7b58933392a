"""The stability section's claims and prose: each verdict chosen by synthetic data, the kinds of rows kept apart."""

from __future__ import annotations

import pytest

from kadam.experiments.stability.analysis import growth_rates, growth_verdict, margin_analysis, region_versus_harm
from kadam.experiments.stability.section import interval_text, make_claim, stability_claims


def _switch(within=True):
    return {"all_within_tolerance": within, "max_abs_error": 1e-9, "rows": [{"betas": [0.9]}, {"betas": [0.9, 0.0]}]}


def _agreement(mean, low, high):
    return {"mean": mean, "low": low, "high": high, "n": 30, "per_seed": [mean]}


def _merged(exact, paper):
    entry = {
        "learning_rate": 1e-2,
        "intervals": {
            "late_agreement_exact": exact,
            "late_agreement_paper": paper,
            "agreement_exact": exact,
            "agreement_paper": paper,
        },
    }
    return {"per_learning_rate": [{**entry, **{key: value["mean"] for key, value in entry["intervals"].items()}}]}


def _growth(slopes):
    rows = [
        {
            "beta": 0.9,
            "gamma": 0.5,
            "learning_rate": 1e-2,
            "seed": s,
            "region": "outside both",
            "predicted_rate": 0.241,
            "late_phase_slope": v,
            "slope": v,
            "diverged": False,
        }
        for s, v in enumerate(slopes)
    ]
    return growth_verdict(growth_rates(rows))


EMPTY_MARGIN = margin_analysis([])
NO_HARM = region_versus_harm([])


def _claims(**changes):
    arguments = {
        "switch": _switch(),
        "merged": _merged(_agreement(0.6, 0.4, 0.75), _agreement(0.5, 0.3, 0.7)),
        "growth": _growth([0.002, 0.003, 0.001]),
        "margin": EMPTY_MARGIN,
        "harm": NO_HARM,
        **changes,
    }
    return {claim.text: claim for claim in stability_claims(**arguments)}


def _kind(claim):
    return claim.kind


def test_the_switch_off_identity_is_an_exactness_check_not_a_paper_claim():
    claims = list(_claims().values())
    exactness = [c for c in claims if _kind(c) == "exactness"]
    assert len(exactness) == 1 and "switched off" in exactness[0].text and exactness[0].verdict == "confirmed"
    assert "1e-09" in exactness[0].evidence or "1.0e-09" in exactness[0].evidence
    out_of_tolerance = [c for c in _claims(switch=_switch(False)).values() if _kind(c) == "exactness"]
    assert out_of_tolerance[0].verdict == "refuted"


def test_the_paper_growth_claim_has_its_own_row_read_from_intervals():
    growth_row = next(c for c in _claims().values() if "grow exponentially" in c.text)
    assert growth_row.verdict == "refuted" and _kind(growth_row) == "paper"
    assert "1 of 1" in growth_row.evidence
    one_seed = next(c for c in _claims(growth=_growth([0.002])).values() if "grow exponentially" in c.text)
    assert one_seed.verdict == "not resolved at this budget"


@pytest.mark.parametrize(
    ("exact", "verdict"),
    [
        (_agreement(0.97, 0.92, 1.0), "confirmed"),
        (_agreement(0.6, 0.4, 0.75), "refuted"),
        (_agreement(0.93, 0.8, 0.99), "not resolved at this budget"),
        (_agreement(1.0, None, None), "not resolved at this budget"),  # one seed
    ],
)
def test_boundary_verdicts_read_the_agreement_interval(exact, verdict):
    claims = _claims(merged=_merged(exact, _agreement(0.5, 0.3, 0.7)))
    row = next(c for c in claims.values() if c.text.startswith("The stable region is γ > β²"))
    assert row.verdict == verdict and _kind(row) == "project"
    paper = next(c for c in claims.values() if c.text.startswith("Adam's stable region is γ > β/(2−β)"))
    assert paper.verdict == "refuted" and _kind(paper) == "paper"


def test_make_claim_keeps_the_kind_apart_from_whose_claim_it_is():
    claim = make_claim("an identity", "confirmed", "error 1e-9", "exactness")
    assert (claim.kind, claim.source, claim.text, claim.seeds) == ("exactness", "project", "an identity", None)
    paper = make_claim("x", "refuted", "y", "paper", seeds=3, criterion="rule")
    assert (paper.kind, paper.source, paper.text, paper.criterion, paper.seeds) == ("paper", "paper", "x", "rule", 3)


def test_a_measured_claim_on_fewer_than_three_seeds_is_not_resolved():
    assert make_claim("x", "refuted", "y", "paper", seeds=2).verdict == "not resolved at this budget"
    assert make_claim("x", "refuted", "y", "paper", seeds=3).verdict == "refuted"
    assert make_claim("an identity", "confirmed", "error 1e-9", "exactness", seeds=1).verdict == "confirmed"
    two = {
        c.text: c
        for c in stability_claims(
            _switch(),
            _merged(_agreement(0.6, 0.4, 0.75), _agreement(0.5, 0.3, 0.7)),
            _growth([0.002, 0.003, 0.001]),
            EMPTY_MARGIN,
            NO_HARM,
            seeds=2,
        )
    }
    assert {c.verdict for c in two.values() if _kind(c) != "exactness"} == {"not resolved at this budget"}


def test_interval_text_says_when_there_is_no_interval():
    assert interval_text({"mean": 0.9, "low": 0.8, "high": 1.0}, percent=True) == "90% [80%, 100%]"
    assert "no interval" in interval_text({"mean": 0.002, "low": None, "high": None})
    assert interval_text({"mean": None, "low": None, "high": None}) == "—"


def test_the_conclusion_names_where_training_went_unstable_and_what_diverged():
    from kadam.experiments.stability.section import _conclusion

    rows = [
        {"beta": 0.9, "gamma": 0.5, "learning_rate": 1e-2, "late_unstable": True, "stable_exact": False},
        {"beta": 0.9, "gamma": 0.999, "learning_rate": 1e-2, "late_unstable": False, "stable_exact": True},
    ]
    margin = {
        "diverged": [
            {"beta": 0.99, "gamma": 0.8, "lr": 1e-2, "seed": 0, "validation_loss": 46.0},
            {"beta": 0.99, "gamma": 0.8, "lr": 1e-2, "seed": 1, "validation_loss": None},
        ],
        "runs": [{"beta": 0.99, "gamma": 0.8, "lr": 1e-2}] * 3,
    }
    harm = {"per_learning_rate": [{"learning_rate": 1e-2, "points": [{"beta": 0.9, "gamma": 0.5, "state": "harmed"}]}]}
    text = " ".join(_conclusion({"rows": rows}, {"median_ratio": 0.01}, margin, harm))
    assert "1 of 2 runs" in text and "0 of them inside γ > β²" in text and "(β, γ) = (0.9, 0.5) at η = 0.01" in text
    assert "(β, γ) = (0.99, 0.8) at η = 0.01: 2 of 3 seeds (validation loss 46 or not finite)" in text
    assert "(0.9, 0.5) at η = 0.01 ended full-batch training with a worse loss" in text
    assert "all of it outside γ = β²" in text
    margin["diverged"][0] = {**margin["diverged"][0], "gamma": 0.999}  # a divergence inside the region is not hidden
    assert "all of it outside" not in " ".join(_conclusion({"rows": rows}, {"median_ratio": 0.01}, margin, harm))
