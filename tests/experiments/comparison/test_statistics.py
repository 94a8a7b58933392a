"""Paired t, Holm's adjustment and the smallest detectable difference, against scipy, textbook values and
brute force."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from kadam.experiments.comparison.analysis import adjust_family, holm_adjust, minimum_detectable_effect, paired_t


def test_paired_t_matches_scipy_ttest_rel():
    rng = np.random.default_rng(3)
    first, second = rng.normal(size=7), rng.normal(size=7) + 0.4
    result = paired_t(first - second, confidence=0.9)
    reference = stats.ttest_rel(first, second)
    interval = reference.confidence_interval(confidence_level=0.9)
    assert result["t"] == pytest.approx(reference.statistic, rel=1e-12)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((interval.low, interval.high), rel=1e-10)
    assert result["df"] == 6 and result["n"] == 7


def test_paired_t_degenerate_spread():
    tie = paired_t([0.0, 0.0, 0.0])
    assert tie["p_value"] == 1.0 and tie["ci_low"] == tie["ci_high"] == 0.0 and tie["t"] is None
    assert paired_t([0.5, 0.5])["p_value"] == 0.0


def test_paired_t_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        paired_t([1.0])
    with pytest.raises(ValueError, match="finite"):
        paired_t([1.0, math.inf])
    with pytest.raises(ValueError, match="confidence"):
        paired_t([1.0, 2.0], confidence=1.0)


def test_holm_textbook_example():
    # Four tests: sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, max(1·0.04, 0.06).
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Monotone step-down: a larger raw p never gets a smaller adjusted p; capped at 1.
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([0.2]) == pytest.approx([0.2])


def _holm_rejections_brute_force(p, alpha):
    """Holm's procedure as written in Holm (1979): step down through the sorted p-values, reject while
    p_(j) ≤ α / (m − j + 1), stop at the first failure."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for j, index in enumerate(order):
        if p[index] <= alpha / (len(p) - j):
            rejected.add(index)
        else:
            break
    return rejected


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8))
def test_holm_adjusted_p_rejects_exactly_what_the_procedure_rejects(p):
    adjusted = holm_adjust(p)
    for alpha in (0.01, 0.05, 0.1, 0.3):
        assert {i for i, value in enumerate(adjusted) if value <= alpha} == _holm_rejections_brute_force(p, alpha)
    assert all(a >= raw for a, raw in zip(adjusted, p))


def test_holm_controls_family_wise_error_by_simulation():
    # Under the global null, P(any rejection) ≤ α; with independent tests it is close to 1 − (1 − α/m)^m.
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(4_000, 5))
    rejections = np.array([min(holm_adjust(row)) <= 0.05 for row in p])
    assert rejections.mean() == pytest.approx(1 - (1 - 0.05 / 5) ** 5, abs=0.012)  # ±3.5 binomial std


def test_holm_rejects_bad_input():
    with pytest.raises(ValueError, match="p_values"):
        holm_adjust([0.1, 1.5])


@pytest.mark.parametrize("n, family", [(5, 1), (5, 6), (10, 3)])
def test_minimum_detectable_effect_has_the_stated_power_by_simulation(n, family):
    std = 0.3
    mde = minimum_detectable_effect(std, n, alpha=0.05, power=0.8, family_size=family)
    rng = np.random.default_rng(1)
    differences = rng.normal(mde["exact"], std, size=(40_000, n))
    t = differences.mean(axis=1) / (differences.std(axis=1, ddof=1) / math.sqrt(n))
    critical = stats.t.ppf(1 - 0.05 / family / 2, n - 1)
    assert np.mean(np.abs(t) > critical) == pytest.approx(0.8, abs=0.01)
    assert mde["level"] == pytest.approx(0.05 / family)


def test_minimum_detectable_effect_approximation_and_scaling():
    exact = minimum_detectable_effect(1.0, 200, family_size=1)
    assert exact["approximate"] == pytest.approx(exact["exact"], rel=2e-3)  # large n: the textbook formula
    assert minimum_detectable_effect(2.0, 8)["exact"] == pytest.approx(2 * minimum_detectable_effect(1.0, 8)["exact"])
    assert minimum_detectable_effect(0.0, 5)["exact"] == 0.0
    with pytest.raises(ValueError, match="n must be"):
        minimum_detectable_effect(1.0, 1)


def test_adjust_family_adds_holm_intervals_and_mde():
    rng = np.random.default_rng(5)
    family = [paired_t(rng.normal(shift, 0.1, size=6)) for shift in (0.0, 0.05, 0.3)]
    adjust_family(family, alpha=0.05)
    assert [c["p_holm"] for c in family] == pytest.approx(holm_adjust([c["p_value"] for c in family]))
    for comparison in family:
        width = stats.t.ppf(1 - 0.05 / 6, 5) * comparison["std"] / math.sqrt(6)
        assert comparison["ci_adjusted_high"] - comparison["mean"] == pytest.approx(width)
        assert comparison["significant"] == (comparison["p_holm"] <= 0.05)
        assert comparison["mde"] > 0 and comparison["family_size"] == 3
    assert family[2]["significant"] and not family[0]["significant"]


def test_bonferroni_interval_covers_whenever_no_holm_rejection_of_zero_is_possible():
    # Brute-force consistency: if the adjusted interval excludes 0, Holm rejects (it is never weaker).
    rng = np.random.default_rng(11)
    excluded = 0
    for _ in range(25):
        family = [paired_t(rng.normal(rng.normal(0, 0.15), 0.1, size=5)) for _ in range(4)]
        adjust_family(family)
        for c in family:
            if c["ci_adjusted_low"] > 0 or c["ci_adjusted_high"] < 0:
                excluded += 1
                assert c["significant"]
    assert excluded > 0  # the check was exercised
