"""``kadam reproduce``: every section's experiments, cached cell by cell, then one report.

The sections are :data:`kadam.experiments.registry.SECTIONS` (in report order), each a slice's
``section.build_section``; :mod:`kadam.experiments.profiles` holds every size per profile;
:mod:`kadam.experiments.cells` the cache and the runner; :mod:`kadam.experiments.report` writes
``report.html``, ``report.md`` and ``results.json``.
"""

from __future__ import annotations

import datetime
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table as RichTable

import kadam
from kadam.experiments.cells import CellCache, CellRunner
from kadam.experiments.comparison.section import committed_confirmatory_answer, committed_study_answer
from kadam.experiments.profiles import DEVICES, PROFILES, Settings
from kadam.experiments.registry import SECTIONS, build_sections
from kadam.experiments.report import (
    SUMMARY_WORD_LIMIT,
    VERDICTS,
    Claim,
    SectionDocument,
    prose_word_count,
    write_report,
)
from kadam.experiments.transfer.section import committed_transfer_answer

__all__ = ["PROFILES", "DEVICES", "ReproduceOutcome", "practitioner_summary", "reproduce"]


@dataclass(frozen=True)
class ReproduceOutcome:
    """What a run wrote and how much of it came from the cache."""

    paths: dict[str, Path]
    sections: list[SectionDocument]
    computed: int
    cached: int
    corrupt: list[str]
    seconds: float


def _check_settings(profile: str, device: str, seeds: int | None, jobs: int) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch.cuda.is_available() is False on this machine")
    if seeds is not None and seeds < 2:
        raise ValueError(f"seeds must be ≥ 2 (a paired confidence interval needs two pairs), got {seeds}")
    if jobs < 1:
        raise ValueError(f"jobs must be ≥ 1, got {jobs}")


def _summary_table(sections: Sequence[SectionDocument], outcome_line: str) -> RichTable:
    table = RichTable(title="kadam reproduce: headline numbers", caption=outcome_line, show_lines=False)
    table.add_column("section")
    table.add_column("measurement")
    table.add_column("value (this run)")
    for number, section in enumerate(sections, start=1):
        for index, (label, value) in enumerate(section.headline):
            table.add_row(f"{number}. {section.title}" if index == 0 else "", label, value)
    return table


def _measured(documents: Sequence[SectionDocument], name: str) -> tuple[SectionDocument | None, list[Claim]]:
    """The section ``name`` (None when the report has none) and its measured (not exactness) claims."""
    section = next((document for document in documents if document.name == name), None)
    return section, [] if section is None else [claim for claim in section.claims if claim.kind != "exactness"]


def _short(evidence: str, words: int = 12) -> str:
    """The first clause of ``evidence`` (up to ';'), at most ``words`` words."""
    clause = evidence.split("; ")[0].split(". ")[0].rstrip(".")
    tokens = clause.split()
    return " ".join(tokens[:words]) + (" …" if len(tokens) > words else "")


@dataclass(frozen=True)
class _Quotes:
    """How much of a claim the summary quotes: words of its text and of its evidence (0: none)."""

    text: int
    evidence: int


_QUOTE_LENGTHS = (_Quotes(16, 12), _Quotes(10, 6), _Quotes(6, 0), _Quotes(0, 0))
"""Ever shorter quotes, tried in turn until the summary fits :data:`~kadam.experiments.report.SUMMARY_WORD_LIMIT`."""


def _without_parentheses(text: str) -> str:
    """``text`` without its parenthetical details ("KAdam's default (k = 2) wins" → "KAdam's default wins")."""
    while True:
        shorter = re.sub(r"\s*\([^()]*\)", "", text)
        if shorter == text:
            return text
        text = shorter


def _reading(claim: Claim | None, anchor: str, quotes: _Quotes = _QUOTE_LENGTHS[0]) -> str:
    """'"claim" (shortened): **verdict** (evidence; link)', or that the section has no such verdict."""
    if claim is None:
        return f"this run has no verdict on it ([{anchor}](#{anchor}))."
    words = _without_parentheses(claim.text).split()
    quoted = " ".join(words[: quotes.text]) + (" …" if len(words) > quotes.text else "")
    evidence = f"{_short(claim.evidence, quotes.evidence)}; " if quotes.evidence else ""
    return (f"“{quoted}”: " if quotes.text else "") + f"**{claim.verdict}** ({evidence}[{anchor}](#{anchor}))."


def _find(claims: Sequence[Claim], *words: str) -> Claim | None:
    return next((claim for claim in claims if any(word in claim.text for word in words)), None)


def _tally(claims: Sequence[Claim]) -> str:
    """'2 confirmed, 1 refuted' over ``claims`` (verdicts in :data:`~kadam.experiments.report.VERDICTS` order)."""
    counts = [(verdict, sum(claim.verdict == verdict for claim in claims)) for verdict in VERDICTS]
    return ", ".join(f"{count} {verdict}" for verdict, count in counts if count)


def _confirmatory_sentence(confirmatory: dict[str, Any] | None) -> str:
    """One sentence on the committed preregistered test, or nothing where none is committed."""
    if confirmatory is None or not confirmatory["rows"]:
        return ""
    differences = ", ".join(f"{row['mean']:+.3f}" for row in confirmatory["rows"])
    return (
        f" Its preregistered test on {len(confirmatory['rows'])} held-out transformer language models "
        f"(results/confirmatory-study): **{confirmatory['verdict']}** (k = 2 − AdamW: {differences} nats)."
    )


def _summary_lines(
    documents: Sequence[SectionDocument],
    study: dict[str, Any] | None,
    quotes: _Quotes,
    confirmatory: dict[str, Any] | None,
    transfer_answer: str | None,
) -> list[str]:
    lines = []
    stability, claims = _measured(documents, "stability")
    if stability is None:
        lines.append("**Which (β, γ) are safe.** This report has no stability section.")
    else:
        region = _find(claims, "harm", "worse") or _find(claims, "β²")
        lines.append(
            "**Which (β, γ) are safe.** Keep γ > β² (THEORY §2: outside it even the optimizer alone grows its "
            "updates; β = 0.9 needs γ > 0.81, the default (0.9, 0.999) is well inside). In training, this run: "
            + _reading(region or (claims[0] if claims else None), "stability", quotes)
        )
    comparison, claims = _measured(documents, "comparison")
    here = _reading(claims[0] if claims else None, "comparison", quotes) if comparison else "this report has none."
    if study is None or not study["rows"]:
        lines.append(
            "**Should you switch to k-Adam?** The committed study (results/comparison-study) is not "
            f"available to this run, so no answer from it; this run's own comparison: {here}"
        )
    else:
        better, worse, unresolved = study["better"], study["worse"], study["unresolved"]
        answer = (
            "Yes" if len(better) == len(study["rows"]) else "Not as a drop-in" if worse else "No evidence either way"
        )
        lines.append(
            f"**Should you switch to k-Adam?** {answer}: the committed study (`{study['command']}`, "
            f"{len(study['rows'])} workloads, {max(r['seeds'] for r in study['rows'])} paired seeds, Holm-corrected) "
            f"finds KAdam's default k = 2 better than tuned AdamW on {len(better)} ({', '.join(better) or 'none'}), "
            f"worse on {len(worse)} ({', '.join(worse) or 'none'}), unresolved on {len(unresolved)}."
            + _confirmatory_sentence(confirmatory)
            + f" This run's own smaller comparison: {here}"
        )
    monitor, claims = _measured(documents, "monitor")
    lines.append(
        "**Catching a run that goes bad.** "
        + (
            "`StabilityMonitor(optimizer, names=model)` flags a (β, γ) outside γ > β² when attached, non-finite "
            "gradients or losses and an update above its bound; whether its running checks warn early enough to act "
            "on is what section 5 measures (the committed full-profile runs: results/monitor-study). This run: "
            + _reading(claims[0] if claims else None, "monitor", quotes)
            if monitor
            else "This report has no monitor section."
        )
    )
    transfer, claims = _measured(documents, "transfer")
    if transfer is None:
        lines.append("**Another learning rate or batch size.** This report has no transfer section.")
    elif not claims:
        lines.append("**Another learning rate or batch size.** " + _reading(None, "transfer"))
    else:
        confirmed = [claim for claim in claims if claim.verdict == "confirmed"]
        lines.append(
            "**Another learning rate or batch size.** `kadam transfer` computes the hyperparameters for another lr "
            "(THEORY §6) or batch size"
            + (f"; {transfer_answer}." if transfer_answer else ".")
            + f" This run's {len(claims)} transfer claim(s): {_tally(claims)}"
            + (
                f"; {_reading(confirmed[0], 'transfer', quotes)}"
                if confirmed
                else " ([transfer](#transfer)). None is confirmed: re-tune the lr after moving."
            )
        )
    return lines


def practitioner_summary(
    documents: Sequence[SectionDocument], study: dict[str, Any] | None, confirmatory: dict[str, Any] | None = None
) -> list[str]:
    """The report's "What this means for you" lines, each tied to the verdict behind it.

    Safe (β, γ) from the stability section's claims, whether to switch to k-Adam from the committed study
    (``study``: :func:`~kadam.experiments.comparison.section.committed_study_answer`; ``confirmatory``, its
    preregistered test: :func:`~kadam.experiments.comparison.section.committed_confirmatory_answer`) and this run's
    comparison, the monitor from its section's first measured claim, moving hyperparameters from the transfer
    section's measured claims (their verdicts counted, a confirmed one quoted). A missing section or verdict is
    said so instead of a recommendation. The quotes of the claims shorten until the lines hold at most
    :data:`~kadam.experiments.report.SUMMARY_WORD_LIMIT` words (:func:`~kadam.experiments.report.prose_word_count`).
    """
    transfer_answer = committed_transfer_answer()  # read once, not once per quote length
    for quotes in _QUOTE_LENGTHS:
        lines = _summary_lines(documents, study, quotes, confirmatory, transfer_answer)
        if prose_word_count("\n".join(lines)) <= SUMMARY_WORD_LIMIT:
            break
    return lines


def reproduce(
    profile: str = "quick",
    out: str | Path = "kadam-report",
    device: str = "cpu",
    seeds: int | None = None,
    jobs: int = 1,
    console: Console | None = None,
    show_progress: bool = True,
    executor: str = "process",
    sections: Sequence[str] | None = None,
) -> ReproduceOutcome:
    """Run (or fetch from ``out/cache``) every cell of ``profile`` and write the report into ``out``.

    ``seeds`` overrides the profile's number of fresh evaluation seeds (≥ 2); ``jobs`` > 1 computes
    independent cells in that many processes (``executor="dask"``: a Dask local cluster of that many workers; a
    scheduler address: that cluster); ``sections`` (names of :data:`~kadam.experiments.registry.SECTIONS`) limits
    the run and the report to those sections. Prints a progress bar and, at the end, the headline table.
    """
    _check_settings(profile, device, seeds, jobs)
    console = console or Console()
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    settings = Settings(profile=profile, device=device, seeds=seeds)
    sections = build_sections(settings, sections)
    runner = CellRunner(
        CellCache(out / "cache"), jobs=jobs, executor=executor, console=console, show_progress=show_progress
    )
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.perf_counter()

    first_phase = [cell for section in sections for cell in section.cells]
    followup_estimate = sum(section.followup_cost for section in sections)
    with runner.session(runner.pending_cost(first_phase) + followup_estimate):
        results, second_phase = runner.run_phases(
            first_phase,
            lambda done: [cell for section in sections for cell in section.followup(done)],
            followup_estimate,
        )
    for stale in figures.glob("*.png"):  # figures/ holds exactly this report's figures
        stale.unlink()
    documents = [section.finish(results, figures) for section in sections]
    elapsed = time.perf_counter() - started

    cells = [
        {
            "section": cell.section,
            "label": cell.label,
            "function": cell.name,
            "kwargs": cell.kwargs,
            "key": cell.key,
            "seconds": runner.seconds[cell.key],
            "from_cache": cell.key in runner.cached,
        }
        for cell in first_phase + second_phase
    ]
    metadata: dict[str, Any] = {
        "kadam_version": kadam.__version__,
        "configuration": {
            "profile": profile,
            "device": device,
            "seeds": seeds,
            "jobs": jobs,
            "executor": executor,
            "out": str(out),
            "sections": {section.name: section.configuration for section in sections},
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
        },
        "started_utc": started_at.isoformat(timespec="seconds"),
        "wall_seconds": elapsed,
        "cells": cells,
        "cells_computed": len(runner.computed),
        "cells_from_cache": len(runner.cached),
        "corrupt_cache_files_recomputed": runner.cache.corrupt,
    }
    outcome_line = (
        f"profile {profile} on {device}: {len(runner.computed)} cells computed, {len(runner.cached)} from the cache"
        + (f", {len(runner.cache.corrupt)} corrupt cache files recomputed" if runner.cache.corrupt else "")
        + f", {elapsed:.1f} s"
    )
    preamble = (
        f"Produced by kadam {kadam.__version__} (torch {torch.__version__}, Python {platform.python_version()}) with "
        f"`kadam reproduce --profile {profile} --device {device}"
        + (f" --seeds {seeds}" if seeds else "")
        + (f" --sections {' '.join(section.name for section in sections)}" if len(sections) < len(SECTIONS) else "")
        + f" --jobs {jobs}` on {started_at:%Y-%m-%d %H:%M} UTC: "
        + outcome_line
        + ". Every number and figure below was computed by this run's cells (a cached cell is the "
        "stored result of the identical call). The theory is docs/theory.md (`kadam theory` prints it; `THEORY §N` below is its §N); each section says what it measured, how, "
        "and what this run found, including where the measurement contradicts the paper."
    )
    summary = practitioner_summary(documents, committed_study_answer(), committed_confirmatory_answer())
    paths = write_report(
        out, "kadam reproduce: the paper's claims, re-measured", preamble, documents, metadata, summary
    )
    console.print(_summary_table(documents, outcome_line))
    console.print(f"Report: {paths['html']}  (also {paths['markdown'].name}, {paths['json'].name}, figures/)")
    return ReproduceOutcome(
        paths, documents, len(runner.computed), len(runner.cached), list(runner.cache.corrupt), elapsed
    )
