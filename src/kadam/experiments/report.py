"""Writers for ``kadam reproduce``'s outputs: ``report.html``, ``report.md``, ``results.json``.

A report is a list of :class:`SectionDocument` (prose, tables, figures and the section's raw numbers).
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
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Claim", "Verdict", "VERDICTS", "Table", "Figure", "SectionDocument", "claims_rows", "conclusion", "atomic_write", "format_number", "json_safe", "write_report"]


@dataclass(frozen=True)
class Table:
    """A caption, column names and rows of already formatted cells."""

    caption: str
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Figure:
    """A PNG file and the caption that says what it shows."""

    path: str
    caption: str


Verdict = Literal["confirmed", "refuted", "not resolved at this budget"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "refuted", "not resolved at this budget")


@dataclass(frozen=True)
class Claim:
    """One claim the report tests: the paper's (THEORY §5) or the project's own.

    ``verdict`` is chosen by the section from this run's numbers; ``evidence`` states the number(s) behind it;
    ``source`` says whose claim it is ("paper" or "project"). The section's name is the anchor of the link.
    """

    text: str
    verdict: Verdict
    evidence: str
    source: Literal["paper", "project"] = "project"

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.source not in ("paper", "project"):
            raise ValueError(f"source must be 'paper' or 'project', got {self.source!r}")


@dataclass
class SectionDocument:
    """One section of the report.

    ``method`` says what was run (Markdown paragraphs); ``findings`` are sentences computed from this run's
    numbers; ``headline`` holds (label, value) pairs for the terminal summary; ``data`` every number.
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


def claims_rows(sections: Sequence[SectionDocument]) -> list[tuple[int, SectionDocument, Claim]]:
    """Every section's claims in report order, paper's first within a section: (section number, section, claim)."""
    rows = []
    for number, section in enumerate(sections, start=1):
        ordered = sorted(section.claims, key=lambda claim: claim.source != "paper")
        rows += [(number, section, claim) for claim in ordered]
    return rows


def conclusion(sections: Sequence[SectionDocument]) -> list[str]:
    """Sentences for the report's closing section, one per verdict that occurs, built from the claims alone."""
    rows = claims_rows(sections)
    sentences = []
    for verdict in VERDICTS:
        chosen = [claim for _, _, claim in rows if claim.verdict == verdict]
        if chosen:
            sentences.append(f"{verdict.capitalize()} in this run ({len(chosen)} of {len(rows)}): "
                             + "; ".join(f"{claim.text} ({claim.evidence})" for claim in chosen) + ".")
    if not rows:
        sentences.append("No section stated a claim in this run.")
    return sentences


_CLAIM_COLUMNS = ("Claim", "Whose", "Verdict", "Evidence (this run)", "Section")


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


def _markdown_table(table: Table) -> str:
    lines = [f"*{table.caption}*", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _markdown(title: str, preamble: str, sections: Sequence[SectionDocument], out: Path) -> str:
    parts = [f"# {title}", "", preamble, ""]
    rows = claims_rows(sections)
    if rows:
        parts += ["## Claims and verdicts", "",
                  "| " + " | ".join(_CLAIM_COLUMNS) + " |", "|" + "---|" * len(_CLAIM_COLUMNS)]
        parts += [f"| {claim.text} | {claim.source} | **{claim.verdict}** | {claim.evidence} | "
                  f"[{number}. {section.title}](#{section.name}) |" for number, section, claim in rows]
        parts.append("")
    for number, section in enumerate(sections, start=1):
        parts += [f'<a id="{section.name}"></a>', "", f"## {number}. {section.title}", "", section.method, ""]
        if section.findings:
            parts += ["**Findings (this run):**", ""] + [f"- {finding}" for finding in section.findings] + [""]
        for table in section.tables:
            parts += [_markdown_table(table), ""]
        for figure in section.figures:
            relative = os.path.relpath(figure.path, out)
            parts += [f"![{Path(figure.path).stem}]({relative})", "", f"*{figure.caption}*", ""]
    parts += ["## Conclusion", ""] + [f"- {sentence}" for sentence in conclusion(sections)] + [""]
    return "\n".join(parts)


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.88em}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}caption{caption-side:top;
text-align:left;font-style:italic;padding:4px 0}figure{margin:1em 0;overflow-x:auto}img{max-width:100%;cursor:zoom-in}
img.full{max-width:none;cursor:zoom-out}figcaption{font-size:.9em;
color:#444}table.claims td{text-align:left;vertical-align:top}.verdict-confirmed{color:#1a6d1a}
.verdict-refuted{color:#a01515}.verdict-not{color:#8a6a00}.findings{background:#f7f7f2;border-left:4px solid #997;padding:.4em 1em}pre{white-space:pre-wrap}
"""


def _html_text(markdown_text: str) -> str:
    """Paragraphs of plain text (escaped); ``**bold**`` and backticks are kept as-is, readable either way."""
    return "".join(f"<p>{html.escape(paragraph)}</p>" for paragraph in markdown_text.split("\n\n") if paragraph.strip())


def _html(title: str, preamble: str, sections: Sequence[SectionDocument]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", _html_text(preamble)]
    rows = claims_rows(sections)
    if rows:
        header = "".join(f"<th>{html.escape(column)}</th>" for column in _CLAIM_COLUMNS)
        cells = "".join(
            f'<tr><td>{html.escape(claim.text)}</td><td>{claim.source}</td><td class="verdict-{claim.verdict.split()[0]}">'
            f"<b>{html.escape(claim.verdict)}</b></td><td>{html.escape(claim.evidence)}</td>"
            f'<td><a href="#{html.escape(section.name)}">{number}. {html.escape(section.title)}</a></td></tr>'
            for number, section, claim in rows)
        body.append(f'<h2 id="claims">Claims and verdicts</h2><table class="claims"><tr>{header}</tr>{cells}</table>')
    for number, section in enumerate(sections, start=1):
        body.append(f'<h2 id="{html.escape(section.name)}">{number}. {html.escape(section.title)}</h2>')
        body.append(_html_text(section.method))
        if section.findings:
            items = "".join(f"<li>{html.escape(finding)}</li>" for finding in section.findings)
            body.append(f'<div class="findings"><b>Findings (this run):</b><ul>{items}</ul></div>')
        for table in section.tables:
            header = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in table.rows)
            body.append(f"<table><caption>{html.escape(table.caption)}</caption><tr>{header}</tr>{rows}</table>")
        for figure in section.figures:
            encoded = base64.b64encode(Path(figure.path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(figure.caption)}" title="click: full size / fit to page" '
                f'onclick="this.classList.toggle(\'full\')" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{html.escape(figure.caption)} (click the figure for full size)</figcaption></figure>"
            )
    items = "".join(f"<li>{html.escape(sentence)}</li>" for sentence in conclusion(sections))
    body.append(f'<h2 id="conclusion">Conclusion</h2><ul>{items}</ul>')
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(
    out: str | os.PathLike[str], title: str, preamble: str, sections: Sequence[SectionDocument], metadata: Mapping[str, Any]
) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``results.json`` into ``out`` (figures must already be there).

    ``metadata`` (configuration, library version, timing) goes into ``results.json`` beside every section's
    ``data``, ``findings`` and ``headline``. Returns the written paths by kind.
    """
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    results = {
        **metadata,
        "sections": {
            section.name: {"title": section.title, "findings": section.findings, "headline": dict(section.headline),
                           "data": section.data}
            for section in sections
        },
        "claims": [{"text": claim.text, "source": claim.source, "verdict": claim.verdict, "evidence": claim.evidence,
                    "section": section.name} for _, section, claim in claims_rows(sections)],
        "conclusion": conclusion(sections),
    }
    paths = {"html": directory / "report.html", "markdown": directory / "report.md", "json": directory / "results.json"}
    atomic_write(paths["json"], json.dumps(json_safe(results), indent=1, sort_keys=True, allow_nan=False))
    atomic_write(paths["markdown"], _markdown(title, preamble, sections, directory))
    atomic_write(paths["html"], _html(title, preamble, sections))
    return paths
