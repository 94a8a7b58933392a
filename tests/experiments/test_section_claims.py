"""Each section's claims: the verdict follows the numbers given (synthetic inputs, both sides of each rule)."""

from __future__ import annotations

import pytest

from kadam.experiments.comparison.section import comparison_claims
from kadam.experiments.flow.section import flow_claims
from kadam.experiments.monitor.section import MONITOR_MIN_FAILURES, monitor_claims
from kadam.experiments.normalization.section import normalization_claims


def _walk(orthogonal, corrected):
    return {"by_beta": [{"beta": b, "orthogonal_norm_error": o, "corrected_norm_error": c}
                        for b, o, c in zip((0.0, 0.9), orthogonal, corrected)]}


def _network(cosines):
    return {"task": "digits-ln", "configs": [{"beta": 0.9, "layers": [{"final_cosine": c} for c in cosines]}]}


def test_normalization_claims_follow_errors_and_cosines():
    exact = {"max_direction_error": 1e-14, "steps": 10}
    claims = normalization_claims(_walk([0.05, -0.93], [0.05, 0.08]), exact, _network([0.08, 0.41]))
    assert [c.verdict for c in claims] == ["refuted", "confirmed", "confirmed", "refuted"]
    assert "-93.0%" in claims[0].evidence and "0.08–0.41" in claims[3].evidence
    claims = normalization_claims(_walk([0.05, 0.02], [0.2, 0.0]), {**exact, "max_direction_error": 1e-3},
                                  _network([0.995, 0.999]))
    assert [c.verdict for c in claims] == ["confirmed", "refuted", "refuted", "confirmed"]
    assert normalization_claims(_walk([0.0], [0.0]), exact, _network([0.95]))[3].verdict == "not resolved at this budget"


def _accuracy(passes):
    return {"bar": 0.01, "lr": 1e-3, "rows": [{"problem": p, "k": 1, "max_rel_error": 0.001 if ok else 0.05,
                                                "passes": ok} for p, ok in passes]}


def test_flow_claims_name_the_problem_that_misses_the_bar():
    convergence = [{"problem": "logistic", "slopes": {"exact/order1": {"final": 0.98}}}]
    claims = flow_claims(_accuracy([("quadratic", True), ("mlp", False)]), convergence)
    assert claims[0].verdict == "refuted" and "mlp k=1" in claims[0].evidence
    assert claims[1].verdict == "confirmed" and "logistic 0.98" in claims[1].evidence
    claims = flow_claims(_accuracy([("quadratic", True)]), [{"problem": "q", "slopes": {"exact/order1": {"final": 0.5}}}])
    assert [c.verdict for c in claims] == ["confirmed", "not resolved at this budget"]


def _family(*items):
    return {"families": {"search": [{"arm": "kadam2", "workload": w,
                                     "comparison": {"significant": s, "mean": m, "ci_adjusted_low": m - 0.05,
                                                    "ci_adjusted_high": m + 0.05}}
                                    for w, s, m in items]}}


@pytest.mark.parametrize(("items", "verdict"), [
    ([("a", True, -0.1), ("b", True, -0.2)], "confirmed"),
    ([("a", True, -0.1)], "not resolved at this budget"),  # one workload is not a general verdict
    ([("a", True, 0.1), ("b", False, -0.1)], "refuted"),
    ([("a", True, 0.1), ("b", True, -0.1)], "refuted"),  # a general claim: one significant loss refutes it
    ([("a", False, 0.1), ("b", False, -0.1)], "not resolved at this budget"),
])
def test_comparison_verdict(items, verdict):
    assert comparison_claims(_family(*items))[0].verdict == verdict
    assert comparison_claims({"families": {}}) == []


def _scores(recall, warned, failures=MONITOR_MIN_FAILURES, healthy=5):
    return {"failures": failures, "healthy": healthy,
            "detectors": {"monitor": {"recall": recall, "healthy_runs_warned": warned}}}


def test_monitor_claim_needs_recall_few_false_alarms_and_enough_failures():
    assert monitor_claims(_scores(0.9, 0.0))[0].verdict == "confirmed"
    assert monitor_claims(_scores(0.5, 0.0))[0].verdict == "refuted"
    assert monitor_claims(_scores(0.9, 0.5))[0].verdict == "refuted"
    assert monitor_claims(_scores(1.0, 0.0, failures=1))[0].verdict == "not resolved at this budget"
    assert monitor_claims(_scores(None, 0.0, failures=0))[0].verdict == "not resolved at this budget"
