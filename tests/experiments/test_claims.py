"""The claims table, the summary, the word budget and the conclusion of the report (report.md, report.html, results.json)."""

from __future__ import annotations

import json

import pytest

from kadam.experiments.report import (
    BODY_WORD_LIMIT,
    GLOSSARY,
    Claim,
    SectionDocument,
    Table,
    body_text,
    budget_verdict,
    claims_rows,
    conclusion,
    prose_word_count,
    summary_text,
    write_report,
)


def _sections() -> list[SectionDocument]:
    first = SectionDocument(
        "alpha",
        "First section",
        "Method.",
        claims=[
            Claim("ours holds", "confirmed", "error 1%", criterion="error ≤ 2%", seeds=3),
            Claim("the paper's boundary", "refuted", "agreement 87% vs 100%", "paper", seeds=3),
            Claim("an identity", "confirmed", "error 1e-15", "paper", kind="exactness"),
        ],
    )
    empty = SectionDocument("beta", "No claims here", "Method.")
    third = SectionDocument(
        "gamma",
        "Third section",
        "Method.",
        claims=[
            Claim("k-Adam is better", "not resolved at this budget", "0 of 4 significant", seeds=1),
        ],
        conclusion=["The third section adds this."],
    )
    return [first, empty, third]


def test_claims_rows_group_by_kind_in_report_order():
    rows = claims_rows(_sections())
    assert [(number, section.name, claim.text, claim.kind) for number, section, claim in rows] == [
        (1, "alpha", "an identity", "exactness"),
        (1, "alpha", "the paper's boundary", "paper"),
        (1, "alpha", "ours holds", "project"),
        (3, "gamma", "k-Adam is better", "project"),
    ]


def test_kind_defaults_to_source_and_few_seeds_cannot_resolve_a_measured_claim():
    assert Claim("x", "confirmed", "y", "paper").kind == "paper"
    assert Claim("x", "confirmed", "y", "paper", kind="exactness", seeds=1).kind == "exactness"
    with pytest.raises(ValueError, match="not resolved"):
        Claim("x", "refuted", "y", seeds=2)
    assert budget_verdict("refuted", 2) == "not resolved at this budget"
    assert budget_verdict("refuted", 3) == "refuted" and budget_verdict("confirmed", None) == "confirmed"


def test_conclusion_counts_by_kind_and_adds_the_sections_remarks():
    sentences = conclusion(_sections())
    assert sentences[0].startswith("1 exactness check(s): all held")
    assert sentences[1] == "Of the paper's 1 measured claim(s): 1 refuted."
    assert sentences[2] == "Of the project's own 2 measured claim(s): 1 confirmed, 1 not resolved at this budget."
    assert "fewer than 3 seeds" in sentences[3]
    assert sentences[-1] == "The third section adds this."
    assert conclusion([SectionDocument("x", "X", "m")]) == ["No section stated a claim in this run."]


def test_claim_rejects_an_unknown_verdict_source_or_kind():
    with pytest.raises(ValueError, match="verdict"):
        Claim("x", "probably", "y")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source"):
        Claim("x", "confirmed", "y", "reviewer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        Claim("x", "confirmed", "y", kind="anecdote")  # type: ignore[arg-type]


def test_summary_then_terms_then_claims_by_kind_then_sections_then_conclusion(tmp_path):
    summary = ["**Safe.** Keep γ > β²: [alpha](#alpha).", "**Switch?** No: [gamma](#gamma)."]
    paths = write_report(tmp_path, "Title", "Preamble.", _sections(), {}, summary)
    markdown = paths["markdown"].read_text()
    order = [
        "## What this means for you",
        "## Terms",
        "## Claims and verdicts",
        "### Exactness checks",
        "### The paper's claims, measured",
        "### The project's own claims, measured",
        "## 1. First section",
        "## Conclusion",
    ]
    assert [markdown.index(heading) for heading in order] == sorted(markdown.index(heading) for heading in order)
    assert "| an identity | **confirmed** | error 1e-15 | [1. First section](#alpha) |" in markdown
    assert "| ours holds | error ≤ 2% | **confirmed** | error 1% | 3 | [1. First section](#alpha) |" in markdown
    assert "**stable region**" in markdown  # the summary uses γ > β²: defined under Terms
    assert summary_text(markdown).startswith("- **Safe.**")
    page = paths["html"].read_text()
    assert (
        page.index('id="summary"')
        < page.index('id="claims"')
        < page.index('<h2 id="alpha">')
        < page.index('id="conclusion"')
    )
    assert '<a href="#gamma">Third section</a>' not in page and '<a href="#gamma">gamma</a>' in page
    assert "<b>not resolved at this budget</b>" in page
    results = json.loads(paths["json"].read_text())
    assert [(c["section"], c["kind"], c["verdict"]) for c in results["claims"]] == [
        ("alpha", "exactness", "confirmed"),
        ("alpha", "paper", "refuted"),
        ("alpha", "project", "confirmed"),
        ("gamma", "project", "not resolved at this budget"),
    ]
    assert results["conclusion"] == conclusion(_sections()) and results["summary"] == summary
    assert results["words"]["summary"] == prose_word_count(summary_text(markdown))


def test_the_body_keeps_its_word_budget_and_the_rest_goes_to_the_appendix(tmp_path):
    finding = " ".join(["word"] * 200) + "."
    sections = [
        SectionDocument(
            f"s{i}",
            f"Section {i}",
            "First paragraph.\n\nSecond paragraph of the method.",
            findings=[f"Finding {j}: {finding}" for j in range(8)],
            details=["Only here."],
        )
        for i in range(6)
    ]
    paths = write_report(tmp_path, "Title", "Preamble.", sections, {})
    markdown = paths["markdown"].read_text()
    body = body_text(markdown)
    assert prose_word_count(body) <= BODY_WORD_LIMIT
    assert "Second paragraph" not in body and "Only here." not in body and "Finding 0" in body
    appendix = markdown[len(body) :]
    assert (
        appendix.lstrip().startswith('<a id="appendix"></a>') and "Finding 7" in appendix and "Only here." in appendix
    )
    assert "[Appendix A.1](#appendix-s0)" in body and '<a id="appendix-s0"></a>' in appendix
    assert json.loads(paths["json"].read_text())["words"]["body"] == prose_word_count(body)


def test_a_section_with_long_captions_still_gets_its_first_findings_into_the_body(tmp_path):
    """The words left after every section's fixed part go one finding per section per round, in report order:
    the first section's long method and captions do not push all its findings to the appendix."""
    caption = " ".join(["caption"] * 400)
    heavy = SectionDocument(
        "heavy",
        "Heavy",
        " ".join(["method"] * 600),
        findings=[f"Heavy finding {j}: " + " ".join(["word"] * 150) for j in range(6)],
        tables=[Table(caption, ["a"], [["1"]])],
    )
    light = [
        SectionDocument(
            f"light{i}",
            f"Light {i}",
            "Method.",
            findings=[f"Light {i} finding {j}: " + " ".join(["word"] * 150) for j in range(6)],
        )
        for i in range(4)
    ]
    body = body_text(write_report(tmp_path, "Title", "Preamble.", [heavy, *light], {})["markdown"].read_text())
    assert prose_word_count(body) <= BODY_WORD_LIMIT
    assert "Heavy finding 0" in body and all(f"Light {i} finding 0" in body for i in range(4))
    kept = [sum(f"Light {i} finding {j}:" in body for j in range(6)) for i in range(4)]
    heavy_kept = sum(f"Heavy finding {j}:" in body for j in range(6))
    assert max(kept + [heavy_kept]) - min(kept + [heavy_kept]) <= 1  # one per section per round


def test_a_first_method_paragraph_too_long_for_the_body_continues_in_the_appendix(tmp_path):
    sentence = " ".join(["word"] * 40) + "."
    sections = [
        SectionDocument(f"s{i}", f"Section {i}", " ".join(f"Sentence {i}-{j}: {sentence}" for j in range(30)))
        for i in range(4)
    ]
    markdown = write_report(tmp_path, "Title", "Preamble.", sections, {})["markdown"].read_text()
    body = body_text(markdown)
    assert prose_word_count(body) <= BODY_WORD_LIMIT
    for i in range(4):  # each method starts in the body, cut between sentences, and ends in the appendix
        assert f"Sentence {i}-0:" in body and f"Sentence {i}-29:" not in body
        assert f"Sentence {i}-29:" in markdown[len(body) :]


def test_every_glossary_pattern_finds_its_term():
    import re

    for term, (pattern, definition) in GLOSSARY.items():
        assert definition and not definition.endswith("."), term
        probe = {
            "orthogonal/corrected equilibrium": "orthogonal",
            "exact/paper rates": "exact/order1",
            "relaxation time": "relaxation time",
        }.get(term, term)
        assert re.search(pattern, probe), term


def test_a_report_without_claims_has_no_table(tmp_path):
    paths = write_report(tmp_path, "Title", "Preamble.", [SectionDocument("x", "X", "m")], {})
    assert "Claims and verdicts" not in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["claims"] == []
