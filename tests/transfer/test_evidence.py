"""The evidence ``kadam transfer`` recommends from is the committed study's: the packaged summary equals what
results/transfer-study/results.json yields, and the recommendation is its lowest mean relative regret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kadam.experiments.transfer.section import packaged_evidence
from kadam.transfer import BATCH_RULES, batch_evidence, recommend_batch_rule

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "results" / "transfer-study" / "results.json"


def test_the_packaged_evidence_is_the_committed_studys():
    results = json.loads(STUDY.read_text(encoding="utf-8"))
    assert batch_evidence() == json.loads(json.dumps(packaged_evidence(results)))


def test_the_evidence_covers_every_rule_workload_and_factor_with_three_seeds():
    evidence = batch_evidence()
    assert evidence["evaluation_seeds"] >= 3 and len(evidence["workloads"]) >= 3
    assert set(evidence["factors"]) == {0.25, 0.5, 2, 4, 8}
    cells = {(row["workload"], row["factor"], row["rule"]) for row in evidence["rows"]}
    assert (
        len(cells) == len(evidence["rows"]) == len(evidence["workloads"]) * len(evidence["factors"]) * len(BATCH_RULES)
    )


@pytest.mark.parametrize("factor", [0.25, 0.5, 2, 4, 8])
def test_the_recommendation_is_the_lowest_mean_relative_regret(factor):
    evidence = batch_evidence()
    rows = [row for row in evidence["rows"] if row["factor"] == factor]
    means = {
        rule: sum(row["relative"] for row in rows if row["rule"] == rule) / len(evidence["workloads"])
        for rule in BATCH_RULES
    }
    assert recommend_batch_rule(factor).rule == min(means, key=lambda rule: (means[rule], rule))
    study = json.loads(STUDY.read_text(encoding="utf-8"))["sections"]["transfer"]["data"]["batch_study"]
    reported = {row["factor"]: row["rule"] for row in study["recommended"]}
    assert reported[factor] == recommend_batch_rule(factor).rule


def test_the_summary_sentence_names_each_factors_recommended_rule(monkeypatch):
    from kadam import transfer
    from kadam.experiments.transfer.section import committed_transfer_answer

    answer = committed_transfer_answer()
    for factor in batch_evidence()["factors"]:
        assert recommend_batch_rule(factor).rule in answer
    assert "results/transfer-study" in answer and "3 seeds" in answer

    def missing():
        raise ValueError("no measured evidence")

    monkeypatch.setattr(transfer, "batch_evidence", missing)
    assert committed_transfer_answer() is None
