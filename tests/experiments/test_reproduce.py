"""`kadam reproduce`'s machinery (cells, cache, runner, report writers) and the smoke profile end to end."""

import base64
import json
import math
import re
import time

import pytest
from rich.console import Console

from kadam.experiments.cells import Cell, CellCache, CellRunner
from kadam.experiments.comparison.protocol import EVALUATION_SEED_OFFSET as COMPARISON_SEED_OFFSET
from kadam.experiments.registry import SECTIONS
from kadam.experiments.report import Figure, SectionDocument, Table, json_safe, write_report
from kadam.experiments.reproduce import reproduce

CALLS = []


def square(x, progress=None):
    """A toy experiment for the runner tests (importable by spawned workers)."""
    if progress is not None:
        progress(1, 2)
    CALLS.append(x)
    return {"x": x, "square": x * x}


def fail_on_three(x):
    if x == 3:
        raise KeyboardInterrupt  # stands in for Ctrl-C in the middle of a run
    return {"x": x}


def _cells(function, values):
    return [Cell("toy", f"x={x}", globals()[function], {"x": x}, cost=0.5) for x in values]


def _runner(tmp_path, jobs=1):
    return CellRunner(CellCache(tmp_path / "cache"), jobs=jobs, console=Console(quiet=True), show_progress=False)


def test_cell_key_depends_on_the_call_only():
    base = Cell("s", "a", square, {"x": 1, "y": [1, 2]}, cost=1.0)
    assert base.key == Cell("other", "b", square, {"y": [1, 2], "x": 1}, cost=9.0).key
    assert base.key != Cell("s", "a", square, {"x": 2, "y": [1, 2]}).key
    assert base.key != Cell("s", "a", fail_on_three, {"x": 1, "y": [1, 2]}).key


def test_cell_key_changes_with_the_library_code(monkeypatch):
    import kadam.experiments.cells as cells

    cell = Cell("s", "a", square, {"x": 1})
    before = cell.key
    assert len(cells.code_fingerprint("kadam.experiments.training.protocol")) == 64
    monkeypatch.setattr(cells, "code_fingerprint", lambda module, root=None: "another version of the code")
    assert cell.key != before


def test_cache_round_trip_and_corruption_is_detected(tmp_path):
    cache = CellCache(tmp_path)
    cell = _cells("square", [4])[0]
    assert cache.load(cell) is None
    cache.store(cell, {"value": 1.5}, seconds=0.25)
    assert cache.load(cell)["result"] == {"value": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == [f"{cell.key}.json"]  # no temporary file left behind
    path = cache.path(cell)
    entry = json.loads(path.read_text())
    entry["result"]["value"] = 2.5  # tampered: the digest no longer matches
    path.write_text(json.dumps(entry))
    assert cache.load(cell) is None
    path.write_text(path.read_text()[:20])  # truncated: not JSON
    assert cache.load(cell) is None
    assert cache.corrupt == [path.name, path.name]


@pytest.mark.parametrize("jobs", [1, 2])
def test_runner_computes_once_then_serves_from_cache(tmp_path, jobs):
    CALLS.clear()
    runner = _runner(tmp_path, jobs)
    with runner.session(runner.pending_cost(_cells("square", range(4)))):
        results = runner.run(_cells("square", range(4)))
    assert sorted(r["square"] for r in results.values()) == [0, 1, 4, 9]
    assert len(runner.computed) == 4 and not runner.cached
    if jobs == 1:
        assert sorted(CALLS) == [0, 1, 2, 3]
    again = _runner(tmp_path, jobs)
    with again.session(again.pending_cost(_cells("square", range(5)))):
        results = again.run(_cells("square", range(5)))
    assert len(again.cached) == 4 and len(again.computed) == 1 and len(results) == 5


def test_an_interrupted_run_resumes_losing_only_the_cell_in_flight(tmp_path):
    runner = _runner(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with runner.session(3.0):
            runner.run(_cells("fail_on_three", [1, 2, 3, 4]))
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2  # 1 and 2 finished; 3 was in flight
    resumed = _runner(tmp_path)
    with resumed.session(resumed.pending_cost(_cells("square", [3, 4]))):
        resumed.run(_cells("fail_on_three", [1, 2]) + _cells("square", [3, 4]))
    assert len(resumed.cached) == 2 and len(resumed.computed) == 2


def test_progress_shows_the_whole_run_and_long_cells(tmp_path):
    import io

    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=120)
    runner = CellRunner(CellCache(tmp_path), jobs=1, console=console, show_progress=True)
    long_cells = [Cell("toy", f"long x={x}", square, {"x": x}, cost=5.0) for x in range(2)]
    with runner.session(runner.pending_cost(long_cells)):
        runner.run(long_cells)
    shown = stream.getvalue()
    assert "kadam reproduce" in shown and "ETA" in shown and "100%" in shown
    assert "toy: long x=0" in shown  # the bar within a long cell


def test_runner_refuses_to_run_outside_a_session(tmp_path):
    with pytest.raises(RuntimeError, match="inside"):
        _runner(tmp_path).run(_cells("square", [1]))
    with pytest.raises(ValueError, match="jobs must be"):
        CellRunner(CellCache(tmp_path), jobs=0)


def test_report_writers_embed_figures_and_keep_every_number(tmp_path):
    from kadam.experiments.figures import panels, save_figure

    (tmp_path / "figures").mkdir()
    figure_path = tmp_path / "figures" / "line.png"
    figure, axes = panels(1, 1, (4, 3))
    axes[0][0].plot([0, 1], [1, 0])
    save_figure(figure, figure_path)
    document = SectionDocument(
        "toy",
        "A toy section",
        "We drew a line.",
        ["It goes down."],
        [Table("numbers", ["a", "b"], [["1", "<2>"]])],
        [Figure(str(figure_path), "a falling line")],
        [("slope", "-1")],
        {"slope": -1.0, "bound": math.inf},
    )
    paths = write_report(tmp_path, "Title", "Preamble.", [document], {"kadam_version": "x", "configuration": {"p": 1}})
    page = paths["html"].read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(embedded[0]) == figure_path.read_bytes()
    assert "&lt;2&gt;" in page and 'src="http' not in page and "<link" not in page
    markdown = paths["markdown"].read_text()
    assert "![line](figures/line.png)" in markdown and "*a falling line*" in markdown and "| 1 | <2> |" in markdown
    results = json.loads(paths["json"].read_text())
    assert results["sections"]["toy"]["data"] == {"slope": -1.0, "bound": "inf"}
    assert results["configuration"] == {"p": 1}
    assert json_safe([math.nan, -math.inf, {"a": 1.0}]) == ["nan", "-inf", {"a": 1.0}]


def _numbers(value):
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def test_smoke_profile_end_to_end_then_from_cache_then_only_what_changed(tmp_path):
    out = tmp_path / "report"
    started = time.perf_counter()
    first = reproduce("smoke", out, jobs=1, console=Console(quiet=True), show_progress=False)
    first_seconds = time.perf_counter() - started
    results = json.loads((out / "results.json").read_text())
    assert [s.name for s in first.sections] == list(SECTIONS) and set(results["sections"]) == set(SECTIONS)
    for name, section in results["sections"].items():
        assert section["headline"] and section["findings"], name
        assert len(_numbers(section["data"])) >= 10, name
    comparison = results["sections"]["comparison"]["data"]["analysis"]
    assert set(comparison["workloads"]) == {"noisy-quadratic"}
    kadam2 = comparison["workloads"]["noisy-quadratic"]["search"]["arms"]["kadam2"]["test_loss"]
    assert kadam2["n"] == 2
    # the numbers in the report are the ones the cells computed in this run
    cells = {cell["key"]: cell for cell in results["cells"]}
    assert first.computed == len(cells) and first.cached == 0 and all(not c["from_cache"] for c in cells.values())
    evaluation_losses = [
        json.loads((out / "cache" / f"{key}.json").read_text())["result"]["test_loss"]
        for key, cell in cells.items()
        if cell["label"].startswith("noisy-quadratic kadam2 evaluate_search ")
    ]
    assert len(evaluation_losses) == 2
    assert kadam2["mean"] == pytest.approx(sum(evaluation_losses) / len(evaluation_losses), rel=1e-12)
    page = (out / "report.html").read_text()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures and page.count("data:image/png;base64,") == len(figures)
    assert (out / "report.md").read_text().count("](figures/") == len(figures)
    # the claims table: before the sections, every claim linked to a section of this run, numbers from this run
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Claims and verdicts") < markdown.index("## 1. ") < markdown.index("## Conclusion")
    claims = results["claims"]
    assert {claim["section"] for claim in claims} == set(SECTIONS)
    assert all(f"(#{claim['section']})" in markdown for claim in claims) and 'id="claims"' in page
    assert {claim["kind"] for claim in claims} <= {"exactness", "paper", "project"}
    # the summary comes first, within its word limit, every line linked to a section of this run; the body within
    # its limit (the quick and full profiles' budget; a smoke report is shorter), counted from report.md itself
    from kadam.experiments.report import BODY_WORD_LIMIT, SUMMARY_WORD_LIMIT, body_text, prose_word_count, summary_text

    summary = summary_text(markdown)
    assert summary is not None and markdown.index("## What this means for you") < markdown.index(
        "## Claims and verdicts"
    )
    assert 0 < prose_word_count(summary) <= SUMMARY_WORD_LIMIT == 300
    assert len(results["summary"]) >= 4 and all(
        re.search(r"\]\(#(stability|comparison|monitor|transfer)\)", line) for line in results["summary"]
    )
    assert "results/comparison-study" in summary  # the committed study's answer, read at report time
    body = prose_word_count(body_text(markdown))
    assert body == results["words"]["body"] and body <= BODY_WORD_LIMIT == 3500

    second = reproduce("smoke", out, jobs=1, console=Console(quiet=True), show_progress=False)
    assert second.computed == 0 and second.cached == first.computed
    again = json.loads((out / "results.json").read_text())
    assert again["sections"] == results["sections"]

    third = reproduce("smoke", out, seeds=3, jobs=1, console=Console(quiet=True), show_progress=False)
    new = [cell for cell in json.loads((out / "results.json").read_text())["cells"] if not cell["from_cache"]]
    assert len(new) == third.computed
    # one new evaluation seed per (workload, arm, result) in the comparison, nothing else recomputed
    arms = len(comparison["workloads"]["noisy-quadratic"]["search"]["arms"])
    results_per_arm = sum(result in comparison["workloads"]["noisy-quadratic"] for result in ("search", "lr_only"))
    assert {cell["section"] for cell in new} == {"comparison"} and len(new) == arms * results_per_arm
    assert all(
        cell["label"].endswith(f"seed {COMPARISON_SEED_OFFSET + 2}") for cell in new if cell["section"] == "comparison"
    )
    print(f"smoke profile: first run {first_seconds:.1f} s")


def test_reproduce_rejects_bad_settings(tmp_path):
    for kwargs, message in [
        ({"profile": "huge"}, "profile must be one of"),
        ({"device": "tpu"}, "device must be one of"),
        ({"seeds": 1}, "seeds must be"),
        ({"jobs": 0}, "jobs must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            reproduce(out=tmp_path, **kwargs)
