"""Each section's claims: the verdict follows the numbers given (synthetic inputs, both sides of each rule)."""

from __future__ import annotations

import pytest

from kadam.experiments.comparison.section import comparison_claims
from kadam.experiments.flow.section import flow_claims
from kadam.experiments.monitor.section import monitor_claims, proportion_interval
from kadam.experiments.normalization.section import normalization_claims


def _walk(orthogonal, corrected):
    return {
        "by_beta": [
            {"beta": b, "orthogonal_norm_error": o, "corrected_norm_error": c}
            for b, o, c in zip((0.0, 0.9), orthogonal, corrected)
        ]
    }


def _network(cosines):
    return {"task": "digits-ln", "configs": [{"beta": 0.9, "layers": [{"final_cosine": c} for c in cosines]}]}


def test_normalization_claims_follow_errors_and_cosines():
    exact = {"max_direction_error": 1e-14, "steps": 10}
    claims = normalization_claims(_walk([0.05, -0.93], [0.05, 0.08]), exact, _network([0.08, 0.41]))
    assert [c.verdict for c in claims] == ["refuted", "confirmed", "confirmed", "refuted"]
    assert "-93.0%" in claims[0].evidence and "0.08–0.41" in claims[3].evidence
    claims = normalization_claims(
        _walk([0.05, 0.02], [0.2, 0.0]), {**exact, "max_direction_error": 1e-3}, _network([0.995, 0.999])
    )
    assert [c.verdict for c in claims] == ["confirmed", "refuted", "refuted", "confirmed"]
    assert (
        normalization_claims(_walk([0.0], [0.0]), exact, _network([0.95]))[3].verdict == "not resolved at this budget"
    )


def _accuracy(passes):
    return {
        "bar": 0.01,
        "lr": 1e-3,
        "rows": [{"problem": p, "k": 1, "max_rel_error": 0.001 if ok else 0.05, "passes": ok} for p, ok in passes],
    }


def test_flow_claims_name_the_problem_that_misses_the_bar():
    convergence = [{"problem": "logistic", "slopes": {"exact/order1": {"final": 0.98}}}]
    claims = flow_claims(_accuracy([("quadratic", True), ("mlp", False)]), convergence)
    assert claims[0].verdict == "refuted" and "mlp k=1" in claims[0].evidence
    assert claims[1].verdict == "confirmed" and "logistic 0.98" in claims[1].evidence
    claims = flow_claims(
        _accuracy([("quadratic", True)]), [{"problem": "q", "slopes": {"exact/order1": {"final": 0.5}}}]
    )
    assert [c.verdict for c in claims] == ["confirmed", "not resolved at this budget"]


def _family(*items):
    return {
        "families": {
            "search": [
                {
                    "arm": "kadam2",
                    "workload": w,
                    "comparison": {
                        "significant": s,
                        "mean": m,
                        "ci_adjusted_low": m - 0.05,
                        "ci_adjusted_high": m + 0.05,
                    },
                }
                for w, s, m in items
            ]
        }
    }


@pytest.mark.parametrize(
    ("items", "verdict"),
    [
        ([("a", True, -0.1), ("b", True, -0.2)], "confirmed"),
        ([("a", True, -0.1)], "not resolved at this budget"),  # one workload is not a general verdict
        ([("a", True, 0.1), ("b", False, -0.1)], "refuted"),
        ([("a", True, 0.1), ("b", True, -0.1)], "refuted"),  # a general claim: one significant loss refutes it
        ([("a", False, 0.1), ("b", False, -0.1)], "not resolved at this budget"),
    ],
)
def test_comparison_verdict(items, verdict):
    assert comparison_claims(_family(*items))[0].verdict == verdict
    assert comparison_claims({"families": {}}) == []


def _scores(caught, failures, warned, healthy):
    return {
        "failures": failures,
        "healthy": healthy,
        "detectors": {
            "monitor": {
                "recall": caught / failures if failures else None,
                "caught": caught,
                "healthy_warned": warned,
                "healthy_runs_warned": warned / healthy,
            }
        },
    }


def test_proportion_interval_is_clopper_pearson():
    """Brute force: the exact interval's ends are where the binomial tail probability is (1 − level)/2."""
    from scipy import stats

    low, high = proportion_interval(2, 20)
    assert stats.binom.sf(1, 20, low) == pytest.approx(0.025, rel=1e-6)  # P(X ≥ 2 | low)
    assert stats.binom.cdf(2, 20, high) == pytest.approx(0.025, rel=1e-6)  # P(X ≤ 2 | high)
    assert proportion_interval(9, 9)[1] == 1.0 and proportion_interval(0, 35)[0] == 0.0


def test_monitor_claim_reads_the_intervals_not_the_point_estimates():
    assert monitor_claims(_scores(30, 30, 0, 40))[0].verdict == "confirmed"  # recall ≥ 88%, warned ≤ 8.8%
    assert monitor_claims(_scores(5, 30, 0, 40))[0].verdict == "refuted"  # recall ≤ 35%
    assert monitor_claims(_scores(30, 30, 20, 40))[0].verdict == "refuted"  # warned ≥ 34%
    # the point estimates meet both targets, the intervals reach past them: no verdict at 9 + 20 runs
    assert monitor_claims(_scores(9, 9, 2, 20))[0].verdict == "not resolved at this budget"
    assert "2/20" in monitor_claims(_scores(9, 9, 2, 20))[0].evidence
    assert monitor_claims(_scores(1, 1, 0, 40))[0].verdict == "not resolved at this budget"
    assert monitor_claims(_scores(0, 0, 0, 5))[0].verdict == "not resolved at this budget"
