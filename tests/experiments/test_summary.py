"""The "What this means for you" summary: each line rests on a section's verdict, links to it, and the whole stays
within the word limit however long the claims it quotes are; a run limited to some sections builds only those."""

from __future__ import annotations

import re

import pytest

from kadam.experiments.report import SUMMARY_WORD_LIMIT, Claim, SectionDocument, prose_word_count
from kadam.experiments.reproduce import practitioner_summary

LONG = " ".join(f"word{i}" for i in range(80))


def _section(name, *claims):
    return SectionDocument(name, name.title(), "Method.", claims=list(claims))


def _claim(text, verdict="refuted", evidence="3 of 4 points; more", kind="paper"):
    return Claim(text, verdict, evidence, kind=kind, criterion="rule", seeds=3)


STUDY = {
    "rows": [{"workload": "gpt", "seeds": 5}, {"workload": "cnn", "seeds": 5}],
    "better": [],
    "worse": ["gpt"],
    "unresolved": ["cnn"],
    "command": "kadam compare --study",
}


def _documents(text="Full-batch training outside γ > β² ends with a worse training loss", evidence="2 harmed; 1 not"):
    return [
        _section(
            "stability",
            Claim("an identity", "confirmed", "error 1e-15", kind="exactness"),
            _claim(text, evidence=evidence, kind="project"),
        ),
        _section("comparison", _claim("KAdam's default (k = 2) beats tuned AdamW (tuned, paired)")),
        _section(
            "monitor", _claim("The monitor warns developing failures ahead", verdict="not resolved at this budget")
        ),
        _section(
            "transfer",
            _claim("Learning-rate rule keeps the test loss", verdict="confirmed"),
            _claim("Batch-size rule A trains as well as the tuned optimum"),
            _claim("Batch-size rule B trains as well as the tuned optimum"),
        ),
    ]


def test_each_line_quotes_its_verdict_and_links_its_section():
    lines = practitioner_summary(_documents(), STUDY)
    assert len(lines) == 4
    for line, anchor in zip(lines, ("stability", "comparison", "monitor", "transfer")):
        assert f"](#{anchor})" in line
    assert "worse training loss" in lines[0] and "**refuted**" in lines[0]  # the harm row, not the identity
    assert "“KAdam's default beats tuned AdamW”" in lines[1]  # its parenthetical details left out
    assert "Not as a drop-in" in lines[1] and "kadam compare --study" in lines[1] and "worse on 1 (gpt)" in lines[1]
    assert "**not resolved at this budget**" in lines[2]
    # the transfer line reads whatever claims that section exposes: counted, and a confirmed one quoted
    assert "3 transfer claim(s): 1 confirmed, 2 refuted" in lines[3] and "Learning-rate rule" in lines[3]


def test_no_confirmed_transfer_rule_says_to_retune():
    documents = _documents()
    documents[3] = _section("transfer", _claim("Batch-size rule A"), _claim("Batch-size rule B"))
    line = practitioner_summary(documents, STUDY)[3]
    assert "2 refuted" in line and "re-tune" in line and "](#transfer)" in line


CONFIRMATORY = {
    "verdict": "refuted",
    "rows": [{"workload": "docs-a", "mean": 0.012}, {"workload": "docs-b", "mean": -0.004}],
}


def test_the_preregistered_test_is_quoted_beside_the_study():
    line = practitioner_summary(_documents(), STUDY, CONFIRMATORY)[1]
    assert "preregistered test on 2 held-out transformer language models" in line
    assert "**refuted**" in line and "+0.012, -0.004 nats" in line and "results/confirmatory-study" in line
    assert "preregistered" not in practitioner_summary(_documents(), STUDY)[1]  # none committed: nothing said


@pytest.mark.parametrize("study", [STUDY, None])
def test_the_summary_stays_within_its_word_limit_with_long_claims(study):
    long_claims = _documents(text=LONG, evidence=LONG)
    for document in long_claims[1:]:
        document.claims = [_claim(LONG, evidence=LONG, verdict=c.verdict) for c in document.claims]
    lines = practitioner_summary(long_claims, study, CONFIRMATORY)
    assert prose_word_count("\n".join(lines)) <= SUMMARY_WORD_LIMIT
    assert all(re.search(r"\*\*(confirmed|refuted|not resolved at this budget)\*\*", line) for line in lines)
    # short claims are quoted in full, with their evidence
    short = practitioner_summary(_documents(), study)
    assert "2 harmed" in short[0]


def test_a_missing_section_is_said_so():
    lines = practitioner_summary([], None)
    assert "no stability section" in lines[0] and "no monitor section" in lines[2] and "no transfer section" in lines[3]


def test_a_run_of_some_sections_builds_only_those_in_report_order():
    from kadam.experiments.profiles import Settings
    from kadam.experiments.registry import SECTIONS, build_sections

    settings = Settings(profile="smoke", device="cpu", seeds=None)
    assert [s.name for s in build_sections(settings, ["normalization", "stability"])] == ["stability", "normalization"]
    assert [s.name for s in build_sections(settings)] == list(SECTIONS)
    for names in (["nowhere"], [], ["flow", "flow"]):
        with pytest.raises(ValueError, match="sections must be distinct names among stability, flow"):
            build_sections(settings, names)
