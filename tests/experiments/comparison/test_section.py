"""The comparison section's verdict and tuning-coverage diagnostic, on hand-built analyses."""

from __future__ import annotations

from kadam.experiments.comparison.section import comparison_claims, tuning_gaps


def _row(workload: str, arm: str, mean: float, significant: bool) -> dict:
    return {
        "workload": workload,
        "arm": arm,
        "comparison": {
            "mean": mean,
            "significant": significant,
            "ci_adjusted_low": mean - 0.1,
            "ci_adjusted_high": mean + 0.1,
            "p_holm": 0.01 if significant else 0.5,
        },
    }


def _analysis(rows: list[dict]) -> dict:
    return {"families": {"search": rows}, "workloads": {}}


def test_one_significant_loss_of_the_default_arm_refutes_the_general_claim():
    claims = comparison_claims(_analysis([_row("a", "kadam2", -0.2, True), _row("b", "kadam2", +0.1, True)]))
    assert claims[0].verdict == "refuted"
    assert "b Δ = +0.1000" in claims[0].evidence


def test_adam_rows_pairings_and_other_arms_do_not_decide_the_verdict():
    rows = [
        _row("a", "kadam2", -0.01, False),
        _row("b", "kadam2", -0.2, True),
        _row("a", "adam", +0.5, True),
        {
            **_row("gpt-noln vs gpt", "kadam2 vs adam", -0.3, True),
            "pairing": {"first": ["gpt", "adam"], "second": ["gpt-noln", "kadam2"]},
        },
        _row("a", "kadam3", +0.3, True),
    ]
    claim = comparison_claims(_analysis(rows))[0]
    assert claim.verdict == "not resolved at this budget"
    assert "0 of 3 rows significantly better" not in claim.evidence
    assert "1 of 3 rows significantly better (kadam2 on b)" in claim.evidence
    assert "1 significantly worse (kadam3 on a)" in claim.evidence
    assert "adam on a" not in claim.evidence


def test_no_default_arm_no_claim():
    assert comparison_claims(_analysis([_row("a", "kadam3", -0.2, True)])) == []


def test_tuning_gaps_flag_an_arm_whose_sweep_beats_its_selection():
    analysis = {
        "workloads": {
            "w": {
                "sensitivity": {
                    "adam": {"factor": [0.1, 1.0, 10.0], "validation_loss": [2.5, 1.7, 1.3]},
                    "adamw": {"factor": [0.1, 1.0, 10.0], "validation_loss": [1.5, 1.35, None]},
                    "kadam1": {"factor": [0.1, 1.0, 10.0], "validation_loss": [1.0, 1.35, 3.0]},
                }
            }
        }
    }
    assert tuning_gaps(analysis) == [{"workload": "w", "arm": "adam", "factor": 10.0, "selected": 1.7, "found": 1.3}]


def test_a_sweep_point_within_the_tolerance_is_not_a_gap():
    analysis = {
        "workloads": {
            "w": {"sensitivity": {"kadam2": {"factor": [0.316, 1.0, 3.16], "validation_loss": [1.093, 1.094, 1.5]}}}
        }
    }
    assert tuning_gaps(analysis) == []
