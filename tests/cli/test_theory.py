"""``kadam theory`` and the theory document: the packaged copy is docs/theory.md, it has the sections the
code cites (``THEORY §N``), and it names the prior art the code and the report rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kadam.cli import main
from kadam.cli.theory import text
from tests.cli.helpers import exit_status

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "theory.md"


def test_the_packaged_copy_is_docs_theory_md():
    # one file: docs/theory.md is a link to the copy the package ships
    assert DOCUMENT.is_symlink() and DOCUMENT.resolve() == (ROOT / "src" / "kadam" / "theory.md").resolve()
    assert text() == DOCUMENT.read_text(encoding="utf-8")


def test_every_section_the_code_cites_exists():
    headings = {int(number) for number in re.findall(r"^## §(\d+) ", text(), flags=re.MULTILINE)}
    assert headings == set(range(1, 8))
    cited = set()
    for path in (ROOT / "src" / "kadam").rglob("*.py"):
        for citation in re.findall(r"THEORY (§[\d§,\s–-]+)", path.read_text(encoding="utf-8")):
            cited |= {int(number) for number in re.findall(r"§(\d+)", citation)}
    assert cited and cited <= headings


@pytest.mark.parametrize(
    "fragment",
    [
        "γ > β²",
        "γ > β/(2−β)",
        "B_∞ = (1-β) / sqrt( (1-γ)(1-β²/γ) )",
        "ρ = ln β − ½ ln γ",
        "a = −ln β",
        "a = (1−β)/β",
        "F = (1 + qβ)/(1 − qβ)",
        "E|u|² = d(1−β)/(1+β)",
        "γ₂ = (1−ηλ)²",
        "Zhang et al. (NeurIPS 2022",
        "Kosson et al.",
        "Cattaneo, Klusowski & Shigida",
        "Malladi, Lyu",
        "Cohen et al. 2022",
        "Molybog et al.",
    ],
)
def test_the_document_states_the_formulas_and_prior_art(fragment):
    assert fragment in text()


def test_kadam_theory_prints_the_document_or_one_section(capsys):
    assert main(["theory"]) == 0
    assert capsys.readouterr().out == text()
    assert main(["theory", "--section", "4"]) == 0
    section = capsys.readouterr().out
    assert section.startswith("## §4 Scale-invariant parameters") and "## §5" not in section
    assert exit_status(["theory", "--section", "8"]) == 2
    assert capsys.readouterr().err.startswith("kadam theory: error: argument --section: must be one of 1..7, got 8")
