"""Section 4's verdicts on synthetic comparisons: better / worse than AdamW, and the central pairing."""

import pytest

from kadam.experiments.training.analysis import paired_comparison
from kadam.experiments.training.section import central_pairing_verdict, versus_reference_verdict


def test_versus_reference_claims_only_significant_differences_in_their_direction():
    comparisons = {
        "kadam2": paired_comparison([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]),  # lower loss every seed: better
        "kadam3": paired_comparison([3.0, 3.1, 2.9], [2.0, 2.1, 1.9]),  # higher: worse
        "adam": paired_comparison([1.0, 3.0, 2.0], [2.0, 2.0, 2.0]),  # interval spans zero
    }
    assert comparisons["kadam2"]["significant"] and comparisons["kadam3"]["significant"]
    assert not comparisons["adam"]["significant"]
    assert versus_reference_verdict(comparisons) == (["kadam2"], ["kadam3"])
    assert versus_reference_verdict({"adam": comparisons["adam"]}) == ([], [])


@pytest.mark.parametrize(
    "first, second, verdict",
    [
        ([2.0, 2.1, 1.9], [1.0, 1.1, 0.9], "kadam2 without BatchNorm is significantly better"),
        ([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "adam with BatchNorm is significantly better"),
        ([1.0, 3.0, 2.0], [2.0, 2.0, 2.0], "no significant difference"),
    ],
    ids=["second-arm-better", "first-arm-better", "no-difference"],
)
def test_central_pairing_verdict_every_branch(first, second, verdict):
    assert central_pairing_verdict(paired_comparison(first, second), "adam", "kadam2") == verdict


def test_a_diverged_pair_is_no_claim():
    difference = paired_comparison([float("inf"), 1.0], [1.0, 1.0])
    assert central_pairing_verdict(difference, "adam", "kadam2") == "no significant difference"
    assert versus_reference_verdict({"kadam2": difference}) == ([], [])
