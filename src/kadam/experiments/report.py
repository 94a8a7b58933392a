"""Writers for ``kadam reproduce``'s outputs: ``report.html``, ``report.md``, ``results.json``.

A report is a list of :class:`SectionDocument` (prose, tables, figures and the section's raw numbers) and
a short practitioner's summary. Its layout, the same in both formats:

1. the title and a one-paragraph preamble (how the report was produced);
2. **What this means for you** (at most :data:`SUMMARY_WORD_LIMIT` words, each line linked to the section
   whose verdict it rests on);
3. **Terms**: a definition of every :data:`GLOSSARY` term the report uses, before its first use below;
4. **Claims and verdicts**, one table per :data:`KINDS` entry: exactness checks, the paper's claims, the
   project's claims, each headed by what that kind means;
5. the sections, each with the first paragraph of its method, its findings and its body tables and figures;
6. the conclusion (counts by kind, what is unresolved and why, each section's closing remarks);
7. the appendix: the rest of each section's method, the findings that did not fit the body's word budget,
   its ``details`` and the tables and figures marked ``appendix``.

The body (everything before the appendix) holds at most :data:`BODY_WORD_LIMIT` words of prose (table
rows excluded, :func:`prose_word_count`): each section's findings go into the body while its share of the
budget lasts (the words left divided by the sections left), and the rest continue in its appendix entry.

``report.html`` is self-contained: every figure is embedded as a base64 PNG ``data:`` URI and the style
sheet is inline, so the single file can be mailed or archived. ``report.md`` links the PNGs under
``figures/``. ``results.json`` holds every number of every section, the configuration and the library
version; non-finite floats (which strict JSON cannot hold) are written as the strings ``"inf"``,
``"-inf"`` and ``"nan"``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BODY_WORD_LIMIT",
    "Claim",
    "GLOSSARY",
    "KINDS",
    "KIND_MEANINGS",
    "METHOD_CAPS",
    "MIN_SEEDS",
    "SUMMARY_WORD_LIMIT",
    "Verdict",
    "VERDICTS",
    "Table",
    "Figure",
    "SectionDocument",
    "atomic_write",
    "body_text",
    "budget_verdict",
    "claims_rows",
    "conclusion",
    "format_number",
    "json_safe",
    "prose_word_count",
    "summary_text",
    "write_report",
]

BODY_WORD_LIMIT = 3500
"""Words of prose (tables excluded) in the report before its appendix."""
SUMMARY_WORD_LIMIT = 300
"""Words of the "What this means for you" summary."""
MIN_SEEDS = 3
"""A measured claim's verdict needs an interval over at least this many seeds to be resolved."""
METHOD_CAPS: tuple[int | None, ...] = (None, 200, 150, 100, 60)
"""Words of a section's first method paragraph the body keeps, tried in turn until the body fits
:data:`BODY_WORD_LIMIT` (None: all of it); the sentences cut continue in the section's appendix entry."""


@dataclass(frozen=True)
class Table:
    """A caption, column names and rows of already formatted cells; ``appendix`` puts it in the appendix."""

    caption: str
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    appendix: bool = False


@dataclass(frozen=True)
class Figure:
    """A PNG file and the caption that says what it shows; ``appendix`` puts it in the appendix."""

    path: str
    caption: str
    appendix: bool = False


Verdict = Literal["confirmed", "refuted", "not resolved at this budget"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "refuted", "not resolved at this budget")
Kind = Literal["exactness", "paper", "project"]
KINDS: tuple[Kind, ...] = ("exactness", "paper", "project")
KIND_MEANINGS: Mapping[str, tuple[str, str]] = {
    "exactness": (
        "Exactness checks",
        "identities that hold by derivation (THEORY §1–§4), verified to rounding error. They test the "
        "code and the algebra; they are not measurements of training and are not counted as "
        "confirmations of the paper.",
    ),
    "paper": (
        "The paper's claims, measured",
        "what the paper asserts about Adam in training (THEORY §5), each tested against a criterion fixed "
        "in code before the data. A verdict is resolved only from an interval over at least "
        f'{MIN_SEEDS} seeds; with fewer it reads "not resolved at this budget".',
    ),
    "project": (
        "The project's own claims, measured",
        "claims this project adds (its corrections of the theory and its tools), under the same rules.",
    ),
}
"""Title and meaning of each kind of row of the claims table."""


def budget_verdict(verdict: Verdict, seeds: int | None) -> Verdict:
    """``verdict`` if it rests on ≥ :data:`MIN_SEEDS` seeds (or on no seed at all: ``seeds`` None, a
    deterministic computation), otherwise "not resolved at this budget"."""
    return verdict if seeds is None or seeds >= MIN_SEEDS else "not resolved at this budget"


@dataclass(frozen=True)
class Claim:
    """One row of the claims table: an exactness check, or a measured claim of the paper (THEORY §5) or the project.

    ``verdict`` is chosen by the section from this run's numbers; ``evidence`` states the number(s) behind it
    (for an exactness check: its error); ``source`` says whose claim it is ("paper" or "project");
    ``kind`` which row it is (:data:`KINDS`; by default the same as ``source``); ``criterion`` the rule,
    fixed in code before the data, that turns the numbers into the verdict; ``seeds`` how many independent
    seeds the verdict rests on (None: deterministic, no seed involved). A measured claim on fewer than
    :data:`MIN_SEEDS` seeds must read "not resolved at this budget" (:func:`budget_verdict`). The section's
    name is the anchor of the link.
    """

    text: str
    verdict: Verdict
    evidence: str
    source: Literal["paper", "project"] = "project"
    kind: Kind | None = None
    criterion: str = ""
    seeds: int | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.source not in ("paper", "project"):
            raise ValueError(f"source must be 'paper' or 'project', got {self.source!r}")
        if self.kind is None:
            object.__setattr__(self, "kind", self.source)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.seeds is not None and (
            isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1
        ):
            raise ValueError(f"seeds must be an integer >= 1 or None, got {self.seeds!r}")
        if self.kind != "exactness" and budget_verdict(self.verdict, self.seeds) != self.verdict:
            raise ValueError(
                f"a measured claim on {self.seeds} seed(s) (< {MIN_SEEDS}) must be 'not resolved at this "
                f"budget', got {self.verdict!r}: {self.text}"
            )


@dataclass
class SectionDocument:
    """One section of the report.

    ``method`` says what was run (Markdown paragraphs: the first stays in the body, the rest go to the
    appendix); ``findings`` are sentences computed from this run's numbers, most important first (the body
    keeps as many as its word budget allows); ``details`` appendix-only sentences; ``conclusion`` what the
    section adds to the report's conclusion beyond its rows of the claims table; ``headline`` (label, value)
    pairs for the terminal summary; ``data`` every number.
    """

    name: str
    title: str
    method: str
    findings: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    headline: list[tuple[str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    conclusion: list[str] = field(default_factory=list)


GLOSSARY: Mapping[str, tuple[str, str]] = {
    "k-Adam": (
        r"\bk-Adam\b|\bKAdam\b|\bkadam[23]\b",
        "Adam followed by k − 1 further adaptive normalization levels, each dividing the previous level's "
        "output by a running RMS (THEORY §1); 1-Adam is AdamW, 2-Adam has two levels. kadam2, kadam3: "
        "KAdam with k = 2, 3",
    ),
    "B_n": (
        r"\bB_n\b|B∞",
        "the exact largest update |u_n| Adam with (β, γ) can produce at step n over all "
        "gradient sequences (THEORY §2); B∞ its limit",
    ),
    "C_n": (
        r"\bC_n\b",
        "the largest update any (β, γ') with γ' > β² allows at step n, C_n(β) = B_n(β, β²) "
        "(THEORY §2): no run inside the stable region can exceed it, so it cannot test the boundary and no "
        "verdict classifies runs by it",
    ),
    "stable region": (
        r"stable region|γ > β²",
        "the (β, γ) with γ > β², where Adam's updates stay bounded whatever "
        "the gradients (THEORY §2); the paper's boundary is γ = β/(2−β)",
    ),
    "switch-off": (
        r"[Ss]witch-off",
        "the optimizer alone: gradient 1 until the moments settle, then 0, so the "
        "update decays or grows at the predicted rate ln β − ½ ln γ (THEORY §2)",
    ),
    "measured unstable": (
        r"measured (un)?stable",
        "a training run is measured unstable in a window when its loss diverged (not finite, or above twice the "
        "untrained model's) or its largest update ‖u_n‖∞ grows there against its own fluctuation; the "
        "stability section states the rule, which reads neither β, γ nor a boundary",
    ),
    "late phase": (r"late phase|late-phase", "the second half of a training run, after the first steps' transient"),
    "margin": (r"\bmargin\b", "the distance ½ ln γ − ln β of (β, γ) inside the stable region (negative outside)"),
    "held-out": (
        r"held[- ]out",
        "runs that chose nothing: thresholds, defaults or settings were picked on declared development runs, "
        "and the verdict is read on the others",
    ),
    "edge of stability": (
        r"edge of stability",
        "the largest preconditioned sharpness λ_max(ηP⁻¹H) at which "
        "Adam's step is stable on a quadratic, (2 + 2β)/(1 − β)",
    ),
    "momentum-last": (
        r"momentum-last",
        "a k-Adam strategy with β = 0 on levels 1..k − 1 and the momentum on the last level",
    ),
    "coupled-from-rest": (
        r"coupled-from-rest",
        "a two-parameter quadratic started at θ₀ = 0, where one gradient "
        "coordinate is exactly zero at the start (THEORY §3)",
    ),
    "modified equations": (
        r"modified equations",
        "the continuous model with its O(η²) correction terms, expected to be second order in η (THEORY §3)",
    ),
    "exact/paper rates": (
        r"\b(exact|paper)(/order| rates)",
        "the continuous model's decay rates: exact, "
        "−ln β per step, or the paper's 1 − β; order 1 or "
        "2 is the model's order in η",
    ),
    "scale-invariant": (
        r"scale-invariant",
        "a tensor W with L(cW) = L(W) for c > 0, e.g. a weight followed by "
        "a normalization layer: only its direction matters (THEORY §4)",
    ),
    "orthogonal/corrected equilibrium": (
        r"orthogonal|corrected",
        "the norm a scale-invariant tensor settles at "
        "under AdamW, assuming its updates orthogonal to "
        "it (the paper) or correlated through momentum "
        "(Kosson et al. 2024, THEORY §4)",
    ),
    "relaxation time": (
        r"relaxation time|\bτ\b",
        "τ = 1/(2ηλ) steps, the time AdamW's weight norm takes to forget its start by a factor e (THEORY §4)",
    ),
    "Holm": (r"\bHolm\b", "Holm's step-down correction of p-values for a family of comparisons"),
    "regret": (
        r"\bregret\b",
        "how much worse a run's result is than the best one a tuned search finds at the same setting",
    ),
    "arm": (r"\barms?\b", "one optimizer in the comparison, tuned with the same budget as every other"),
}
"""Term → (regular expression that finds it, definition). The Terms section lists those the report uses."""


def claims_rows(sections: Sequence[SectionDocument]) -> list[tuple[int, SectionDocument, Claim]]:
    """Every section's claims, grouped by kind (:data:`KINDS` order) and in report order within a kind:
    (section number, section, claim)."""
    rows = [(number, section, claim) for number, section in enumerate(sections, start=1) for claim in section.claims]
    return sorted(rows, key=lambda row: KINDS.index(row[2].kind))  # stable: report order within a kind


def _kind_counts(claims: Sequence[Claim]) -> str:
    counts = {verdict: sum(claim.verdict == verdict for claim in claims) for verdict in VERDICTS}
    return ", ".join(f"{count} {verdict}" for verdict, count in counts.items() if count) or "none"


def conclusion(sections: Sequence[SectionDocument]) -> list[str]:
    """Closing sentences that add to the claims table: counts by kind, what is unresolved and why, and each
    section's own ``conclusion``."""
    rows = claims_rows(sections)
    if not rows:
        return ["No section stated a claim in this run."] + [s for section in sections for s in section.conclusion]
    by_kind = {kind: [claim for _, _, claim in rows if claim.kind == kind] for kind in KINDS}
    sentences = []
    exact = by_kind["exactness"]
    if exact:
        failed = [claim.text for claim in exact if claim.verdict != "confirmed"]
        sentences.append(
            f"{len(exact)} exactness check(s): "
            + (
                "all held to rounding, so the code computes what THEORY derives; they say nothing about training."
                if not failed
                else f"{len(failed)} failed ({'; '.join(failed)}): the code "
                "disagrees with its own derivation there, and every measurement built on it is suspect."
            )
        )
    for kind, whose in (("paper", "the paper's"), ("project", "the project's own")):
        if by_kind[kind]:
            sentences.append(f"Of {whose} {len(by_kind[kind])} measured claim(s): {_kind_counts(by_kind[kind])}.")
    few = [
        claim for claim in by_kind["paper"] + by_kind["project"] if claim.seeds is not None and claim.seeds < MIN_SEEDS
    ]
    if few:
        sentences.append(
            f"{len(few)} measured claim(s) rest on fewer than {MIN_SEEDS} seeds in this profile and are "
            "therefore not resolved whatever their numbers show; `kadam reproduce --profile full` runs "
            f"≥ {MIN_SEEDS} seeds for them."
        )
    unresolved = [
        claim
        for claim in by_kind["paper"] + by_kind["project"]
        if claim.verdict == "not resolved at this budget" and claim not in few
    ]
    if unresolved:
        sentences.append(
            f"{len(unresolved)} other measured claim(s) are not resolved: their intervals straddle the "
            "criterion (or no criterion-deciding run was made at this budget)."
        )
    sentences += [sentence for section in sections for sentence in section.conclusion]
    return sentences


def format_number(value: Any, digits: int = 4) -> str:
    """A float to ``digits`` significant digits (scientific outside [1e-3, 1e5)); None as "—"."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by "inf", "-inf" or "nan" (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _readable_mode() -> int:
    """0o666 minus the process umask: what ``open(path, "w")`` would give (mkstemp gives 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` atomically: a temporary file in the same folder, fsync, ``os.replace``.

    A reader (or an interrupted run) sees the old file or the new one, never a partial one.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.chmod(temporary, _readable_mode())
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- word counts ------------------------------------------------------------------------------------------

_WORD = re.compile(r"[0-9A-Za-zÀ-ÿα-ωΑ-Ω]")


def _words(text: str) -> int:
    return sum(1 for token in text.split() if _WORD.search(token))


def prose_word_count(markdown: str) -> int:
    """Words of prose in ``markdown``: every line but table rows (``|``), images (``![``) and HTML anchors; a
    word is a whitespace-separated token with a letter or digit in it."""
    lines = [line for line in markdown.splitlines() if not line.lstrip().startswith(("|", "![", "<a id="))]
    return _words("\n".join(lines))


_APPENDIX_HEADING = "## Appendix"
_SUMMARY_HEADING = "## What this means for you"


def body_text(markdown: str) -> str:
    """The part of a ``report.md`` before its appendix."""
    index = markdown.find('<a id="appendix"></a>')
    index = index if index >= 0 else markdown.find("\n" + _APPENDIX_HEADING)
    return markdown if index < 0 else markdown[:index]


def summary_text(markdown: str) -> str | None:
    """The "What this means for you" section of a ``report.md`` (without its heading), or None."""
    start = markdown.find(_SUMMARY_HEADING)
    if start < 0:
        return None
    start += len(_SUMMARY_HEADING)
    end = markdown.find("\n## ", start)
    return markdown[start : end if end >= 0 else len(markdown)].strip()


# --- layout: blocks shared by both formats ----------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    kind: str  # heading, paragraph, list, findings, table, claims, figure
    text: str = ""
    level: int = 2
    anchor: str | None = None
    items: Sequence[str] = ()
    table: Table | None = None
    figure: Figure | None = None
    claims: Sequence[tuple[int, SectionDocument, Claim]] = ()
    claim_kind: str = ""


def _paragraphs(markdown_text: str) -> list[str]:
    return [paragraph.strip() for paragraph in markdown_text.split("\n\n") if paragraph.strip()]


def _method_paragraphs(section: SectionDocument, cap: int | None) -> list[str]:
    """The section's method paragraphs, the first one cut after the last sentence that fits ``cap`` words (None:
    whole), the rest of it becoming the second paragraph: the body shows the first, the appendix the others."""
    paragraphs = _paragraphs(section.method)
    if cap is None or not paragraphs or _words(paragraphs[0]) <= cap:
        return paragraphs
    sentences = re.split(r"(?<=[.;:])\s+(?=[A-Z(*])", paragraphs[0])
    kept: list[str] = []
    for sentence in sentences:
        if kept and _words(" ".join([*kept, sentence])) > cap:
            break
        kept.append(sentence)
    rest = sentences[len(kept) :]
    return [" ".join(kept), *([" ".join(rest)] if rest else []), *paragraphs[1:]]


def _glossary_blocks(text: str) -> list[_Block]:
    used = [(term, definition) for term, (pattern, definition) in GLOSSARY.items() if re.search(pattern, text)]
    if not used:
        return []
    return [
        _Block("heading", "Terms", anchor="terms"),
        _Block("list", items=[f"**{term}**: {definition}." for term, definition in used]),
    ]


def _claims_blocks(rows: Sequence[tuple[int, SectionDocument, Claim]]) -> list[_Block]:
    if not rows:
        return []
    blocks = [_Block("heading", "Claims and verdicts", anchor="claims")]
    for kind in KINDS:
        chosen = [row for row in rows if row[2].kind == kind]
        if chosen:
            title, meaning = KIND_MEANINGS[kind]
            blocks += [
                _Block("heading", title, level=3, anchor=f"claims-{kind}"),
                _Block("paragraph", f"*{meaning}*"),
                _Block("claims", claims=chosen, claim_kind=kind),
            ]
    return blocks


def _claim_columns(kind: str) -> tuple[str, ...]:
    if kind == "exactness":
        return ("Check", "Verdict", "Error (this run)", "Section")
    return ("Claim", "Criterion (fixed before the data)", "Verdict", "Evidence (this run)", "Seeds", "Section")


def _claim_cells(number: int, section: SectionDocument, claim: Claim) -> tuple[list[str], str]:
    """The row's plain cells (without the section link) and the link text."""
    link = f"{number}. {section.title}"
    if claim.kind == "exactness":
        return [claim.text, claim.verdict, claim.evidence], link
    seeds = "—" if claim.seeds is None else str(claim.seeds)
    return [claim.text, claim.criterion or "—", claim.verdict, claim.evidence, seeds], link


def _fixed_words(section: SectionDocument, cap: int | None) -> int:
    """Words of a section's body that do not depend on the budget: title, first method paragraph (cut at ``cap``,
    :func:`_method_paragraphs`), captions of its body tables and figures, and the pointer to its appendix."""
    words = _words(section.title) + sum(_words(paragraph) for paragraph in _method_paragraphs(section, cap)[:1])
    words += sum(_words(table.caption) for table in section.tables if not table.appendix)
    return words + sum(_words(figure.caption) for figure in section.figures if not figure.appendix) + 10


def _findings_kept(sections: Sequence[SectionDocument], budget: int, cap: int | None) -> list[int]:
    """How many of its findings (most important first) each section keeps in the body: what ``budget`` leaves
    after every section's fixed words, handed out one finding per section per round, in report order, while the
    next finding fits (a section whose next finding does not fit keeps no later one)."""
    left = budget - sum(_fixed_words(section, cap) for section in sections)
    kept = [0] * len(sections)
    open_ = [bool(section.findings) for section in sections]
    while any(open_):
        for index, section in enumerate(sections):
            if not open_[index]:
                continue
            cost = _words(section.findings[kept[index]]) + 3
            if cost > left:
                open_[index] = False
                continue
            left -= cost
            kept[index] += 1
            open_[index] = kept[index] < len(section.findings)
    return kept


def _section_blocks(
    sections: Sequence[SectionDocument], budget: int, cap: int | None = None
) -> tuple[list[_Block], list[_Block]]:
    """The body's and the appendix's blocks of every section, the body within ``budget`` words: each section keeps
    its title, first method paragraph, body tables and figures, and as many of its findings, most important first,
    as the words left allow (:func:`_findings_kept`); the rest go to its appendix entry."""
    body: list[_Block] = []
    appendix: list[_Block] = []
    counts = _findings_kept(sections, budget, cap)
    for number, section in enumerate(sections, start=1):
        paragraphs = _method_paragraphs(section, cap)
        body_tables = [table for table in section.tables if not table.appendix]
        body_figures = [figure for figure in section.figures if not figure.appendix]
        kept = section.findings[: counts[number - 1]]
        moved = section.findings[len(kept) :]
        extra_tables = [table for table in section.tables if table.appendix]
        extra_figures = [figure for figure in section.figures if figure.appendix]
        has_appendix = bool(paragraphs[1:] or moved or section.details or extra_tables or extra_figures)
        appendix_anchor = f"appendix-{section.name}"
        body += [_Block("heading", f"{number}. {section.title}", anchor=section.name)]
        body += [_Block("paragraph", paragraph) for paragraph in paragraphs[:1]]
        if kept:
            body.append(_Block("findings", "Findings (this run):", items=kept))
        if has_appendix:
            pointer = f"More of this section in [Appendix A.{number}](#{appendix_anchor})"
            pointer += f" ({len(moved)} further finding(s))." if moved else "."
            body.append(_Block("paragraph", pointer))
        body += [_Block("table", table=table) for table in body_tables]
        body += [_Block("figure", figure=figure) for figure in body_figures]
        if has_appendix:
            appendix.append(_Block("heading", f"A.{number} {section.title}", level=3, anchor=appendix_anchor))
            appendix += [_Block("paragraph", paragraph) for paragraph in paragraphs[1:]]
            if moved or section.details:
                appendix.append(_Block("findings", "Further findings (this run):", items=[*moved, *section.details]))
            appendix += [_Block("table", table=table) for table in extra_tables]
            appendix += [_Block("figure", figure=figure) for figure in extra_figures]
    return body, appendix


def _layout(title: str, preamble: str, sections: Sequence[SectionDocument], summary: Sequence[str]) -> list[_Block]:
    rows = claims_rows(sections)
    head = [_Block("heading", title, level=1), _Block("paragraph", preamble)]
    if summary:
        head += [_Block("heading", _SUMMARY_HEADING[3:], anchor="summary"), _Block("list", items=list(summary))]
    claims = _claims_blocks(rows)
    closing = [_Block("heading", "Conclusion", anchor="conclusion"), _Block("list", items=conclusion(sections))]
    every_text = " ".join(
        [
            *summary,
            *(claim.text + " " + claim.evidence + " " + claim.criterion for _, _, claim in rows),
            *(section.method + " " + " ".join(section.findings + section.details) for section in sections),
        ]
    )
    terms = _glossary_blocks(every_text)
    fixed = sum(_words(block.text) + sum(_words(item) for item in block.items) for block in head + terms + closing)
    fixed += sum(_words(block.text) for block in claims if block.kind != "claims")
    best: tuple[int, list[_Block], list[_Block]] | None = None
    for cap in METHOD_CAPS:  # a long first method paragraph is cut only when the body cannot hold it otherwise
        budget = BODY_WORD_LIMIT - fixed
        for _ in range(6):  # the estimate of headings and pointers is rough: move the budget by the miss
            body, appendix = _section_blocks(sections, budget, cap)
            words = prose_word_count(_markdown(head + terms + claims + body + closing, Path(".")))
            if words <= BODY_WORD_LIMIT and (best is None or words > best[0]):
                best = (words, body, appendix)
            if words == BODY_WORD_LIMIT:
                break
            budget -= words - BODY_WORD_LIMIT
        if best is not None:
            break
    if best is not None:
        _, body, appendix = best
    blocks = head + terms + claims + body + closing
    if appendix:
        blocks += [_Block("heading", _APPENDIX_HEADING[3:] + ": details of each section", anchor="appendix"), *appendix]
    return blocks


# --- Markdown ---------------------------------------------------------------------------------------------


def _markdown_cell(text: str) -> str:
    """A table cell: pipes escaped (``|W|`` stays in its cell), no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown_table(table: Table) -> str:
    lines = [
        f"*{table.caption}*",
        "",
        "| " + " | ".join(_markdown_cell(c) for c in table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _markdown(blocks: Sequence[_Block], out: Path) -> str:
    parts: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            if block.anchor:
                parts += [f'<a id="{block.anchor}"></a>', ""]
            parts += ["#" * block.level + " " + block.text, ""]
        elif block.kind == "paragraph":
            parts += [block.text, ""]
        elif block.kind == "list":
            parts += [f"- {item}" for item in block.items] + [""]
        elif block.kind == "findings":
            parts += [f"**{block.text}**", ""] + [f"- {item}" for item in block.items] + [""]
        elif block.kind == "table" and block.table is not None:
            parts += [_markdown_table(block.table), ""]
        elif block.kind == "figure" and block.figure is not None:
            relative = os.path.relpath(block.figure.path, out)
            parts += [f"![{Path(block.figure.path).stem}]({relative})", "", f"*{block.figure.caption}*", ""]
        elif block.kind == "claims":
            columns = _claim_columns(block.claim_kind)
            parts += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            for number, section, claim in block.claims:
                cells, link = _claim_cells(number, section, claim)
                verdict_index = 1 if claim.kind == "exactness" else 2
                cells = [_markdown_cell(cell) for cell in cells]
                cells[verdict_index] = f"**{cells[verdict_index]}**"
                parts.append("| " + " | ".join(cells) + f" | [{link}](#{section.name}) |")
            parts.append("")
    return "\n".join(parts)


# --- HTML -------------------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.88em}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}caption{caption-side:top;
text-align:left;font-style:italic;padding:4px 0}figure{margin:1em 0;overflow-x:auto}img{max-width:100%;cursor:zoom-in}
img.full{max-width:none;cursor:zoom-out}figcaption{font-size:.9em;
color:#444}table.claims td{text-align:left;vertical-align:top}.verdict-confirmed{color:#1a6d1a}
.verdict-refuted{color:#a01515}.verdict-not{color:#8a6a00}.findings{background:#f7f7f2;border-left:4px solid #997;padding:.4em 1em}pre{white-space:pre-wrap}
.summary{background:#eef4fb;border-left:4px solid #4a7ab5;padding:.4em 1em}
"""

_LINK = re.compile(r"\[([^\]]+)\]\((#[\w-]+)\)")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """Escaped text with Markdown's in-page links, ``**bold**`` and backticks rendered."""
    escaped = html.escape(text)
    escaped = _LINK.sub(lambda match: f'<a href="{match.group(2)}">{match.group(1)}</a>', escaped)
    escaped = _BOLD.sub(r"<b>\1</b>", escaped)
    return _CODE.sub(r"<code>\1</code>", escaped)


def _html_paragraph(text: str) -> str:
    if text.startswith("*") and text.endswith("*") and not text.startswith("**"):
        return f"<p><i>{_inline(text[1:-1])}</i></p>"
    return f"<p>{_inline(text)}</p>"


def _html(title: str, blocks: Sequence[_Block]) -> str:
    body: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            anchor = f' id="{html.escape(block.anchor)}"' if block.anchor else ""
            body.append(f"<h{block.level}{anchor}>{html.escape(block.text)}</h{block.level}>")
        elif block.kind == "paragraph":
            body.append(_html_paragraph(block.text))
        elif block.kind == "list":
            css = ' class="summary"' if body and body[-1] == '<h2 id="summary">What this means for you</h2>' else ""
            body.append(f"<ul{css}>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
        elif block.kind == "findings":
            items = "".join(f"<li>{_inline(item)}</li>" for item in block.items)
            body.append(f'<div class="findings"><b>{html.escape(block.text)}</b><ul>{items}</ul></div>')
        elif block.kind == "table" and block.table is not None:
            table = block.table
            header = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in table.rows
            )
            body.append(f"<table><caption>{html.escape(table.caption)}</caption><tr>{header}</tr>{rows}</table>")
        elif block.kind == "figure" and block.figure is not None:
            figure = block.figure
            encoded = base64.b64encode(Path(figure.path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(figure.caption)}" title="click: full size / fit to page" '
                f'onclick="this.classList.toggle(\'full\')" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{html.escape(figure.caption)} (click the figure for full size)</figcaption></figure>"
            )
        elif block.kind == "claims":
            columns = _claim_columns(block.claim_kind)
            header = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
            rows = []
            for number, section, claim in block.claims:
                cells, link = _claim_cells(number, section, claim)
                verdict_index = 1 if claim.kind == "exactness" else 2
                rendered = [f"<td>{html.escape(cell)}</td>" for cell in cells]
                rendered[verdict_index] = (
                    f'<td class="verdict-{claim.verdict.split()[0]}"><b>{html.escape(claim.verdict)}</b></td>'
                )
                rows.append(
                    "<tr>"
                    + "".join(rendered)
                    + f'<td><a href="#{html.escape(section.name)}">{html.escape(link)}</a></td></tr>'
                )
            body.append(f'<table class="claims"><tr>{header}</tr>{"".join(rows)}</table>')
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(
    out: str | os.PathLike[str],
    title: str,
    preamble: str,
    sections: Sequence[SectionDocument],
    metadata: Mapping[str, Any],
    summary: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``results.json`` into ``out`` (figures must already be there).

    ``summary`` is the "What this means for you" list (Markdown lines; omitted when empty). ``metadata``
    (configuration, library version, timing) goes into ``results.json`` beside every section's ``data``,
    ``findings`` and ``headline``, the claims (with kind, criterion and seeds), the summary, the conclusion
    and the body's word counts. Returns the written paths by kind.
    """
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    blocks = _layout(title, preamble, sections, summary)
    markdown = _markdown(blocks, directory)
    summary_words = summary_text(markdown)
    results = {
        **metadata,
        "sections": {
            section.name: {
                "title": section.title,
                "findings": section.findings,
                "details": section.details,
                "headline": dict(section.headline),
                "data": section.data,
            }
            for section in sections
        },
        "claims": [
            {
                "text": claim.text,
                "source": claim.source,
                "kind": claim.kind,
                "criterion": claim.criterion,
                "seeds": claim.seeds,
                "verdict": claim.verdict,
                "evidence": claim.evidence,
                "section": section.name,
            }
            for _, section, claim in claims_rows(sections)
        ],
        "summary": list(summary),
        "conclusion": conclusion(sections),
        "words": {
            "body": prose_word_count(body_text(markdown)),
            "summary": None if summary_words is None else prose_word_count(summary_words),
            "body_limit": BODY_WORD_LIMIT,
            "summary_limit": SUMMARY_WORD_LIMIT,
        },
    }
    paths = {"html": directory / "report.html", "markdown": directory / "report.md", "json": directory / "results.json"}
    atomic_write(paths["json"], json.dumps(json_safe(results), indent=1, sort_keys=True, allow_nan=False))
    atomic_write(paths["markdown"], markdown)
    atomic_write(paths["html"], _html(title, blocks))
    return paths
