"""Each section's claims: the verdict follows the numbers given (synthetic inputs, both sides of each rule)."""

from __future__ import annotations

import pytest

from kadam.experiments.comparison.section import comparison_claims
from kadam.experiments.monitor.analysis import proportion_interval


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


def test_proportion_interval_is_clopper_pearson():
    """Brute force: the exact interval's ends are where the binomial tail probability is (1 − level)/2."""
    from scipy import stats

    low, high = proportion_interval(2, 20)
    assert stats.binom.sf(1, 20, low) == pytest.approx(0.025, rel=1e-6)  # P(X ≥ 2 | low)
    assert stats.binom.cdf(2, 20, high) == pytest.approx(0.025, rel=1e-6)  # P(X ≤ 2 | high)
    assert proportion_interval(9, 9)[1] == 1.0 and proportion_interval(0, 35)[0] == 0.0
