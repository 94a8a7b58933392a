"""The claims table and the conclusion of the report (report.md, report.html, results.json)."""

from __future__ import annotations

import json

import pytest

from kadam.experiments.report import Claim, SectionDocument, claims_rows, conclusion, write_report


def _sections() -> list[SectionDocument]:
    first = SectionDocument("alpha", "First section", "Method.", claims=[
        Claim("ours holds", "confirmed", "error 1%"),
        Claim("the paper's boundary", "refuted", "agreement 87% vs 100%", "paper"),
    ])
    empty = SectionDocument("beta", "No claims here", "Method.")
    third = SectionDocument("gamma", "Third section", "Method.", claims=[
        Claim("k-Adam is better", "not resolved at this budget", "0 of 4 significant"),
    ])
    return [first, empty, third]


def test_claims_rows_keep_report_order_and_put_the_papers_first():
    rows = claims_rows(_sections())
    assert [(number, section.name, claim.text) for number, section, claim in rows] == [
        (1, "alpha", "the paper's boundary"), (1, "alpha", "ours holds"), (3, "gamma", "k-Adam is better")]


def test_conclusion_groups_claims_by_verdict_and_says_when_there_are_none():
    sentences = conclusion(_sections())
    assert len(sentences) == 3
    assert sentences[0].startswith("Confirmed in this run (1 of 3): ours holds (error 1%)")
    assert sentences[1].startswith("Refuted in this run (1 of 3): the paper's boundary (agreement 87% vs 100%)")
    assert sentences[2].startswith("Not resolved at this budget in this run (1 of 3): k-Adam is better")
    assert conclusion([SectionDocument("x", "X", "m")]) == ["No section stated a claim in this run."]


def test_claim_rejects_an_unknown_verdict_or_source():
    with pytest.raises(ValueError, match="verdict"):
        Claim("x", "probably", "y")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source"):
        Claim("x", "confirmed", "y", "reviewer")  # type: ignore[arg-type]


def test_the_table_stands_before_the_sections_links_to_them_and_the_conclusion_closes(tmp_path):
    paths = write_report(tmp_path, "Title", "Preamble.", _sections(), {})
    markdown = paths["markdown"].read_text()
    table = markdown.index("## Claims and verdicts")
    assert table < markdown.index("## 1. First section") < markdown.index("## Conclusion")
    assert "| the paper's boundary | paper | **refuted** | agreement 87% vs 100% | [1. First section](#alpha) |" in markdown
    assert '<a id="alpha"></a>' in markdown and '<a id="gamma"></a>' in markdown
    page = paths["html"].read_text()
    assert page.index('id="claims"') < page.index('<h2 id="alpha">') < page.index('id="conclusion"')
    assert '<a href="#gamma">3. Third section</a>' in page and "<b>not resolved at this budget</b>" in page
    results = json.loads(paths["json"].read_text())
    assert [(c["section"], c["verdict"]) for c in results["claims"]] == [
        ("alpha", "refuted"), ("alpha", "confirmed"), ("gamma", "not resolved at this budget")]
    assert results["conclusion"] == conclusion(_sections())


def test_a_report_without_claims_has_no_table(tmp_path):
    paths = write_report(tmp_path, "Title", "Preamble.", [SectionDocument("x", "X", "m")], {})
    assert "Claims and verdicts" not in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["claims"] == []
