"""The cache key covers the code that computes a cell, and nothing else (prose, plots, docstrings, comments)."""

import shutil
from pathlib import Path

import pytest

import kadam
from kadam.experiments.cells import Cell, code_fingerprint, computing_sources, source_digest
from kadam.experiments.stability.protocol import switch_off_experiment

STABILITY = "kadam.experiments.stability.protocol"


@pytest.fixture()
def package(tmp_path):
    """A copy of the kadam package folder to edit."""
    root = tmp_path / "kadam"
    shutil.copytree(Path(kadam.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_the_copy_has_the_same_fingerprint_as_the_package(package):
    assert code_fingerprint(STABILITY, package) == code_fingerprint(STABILITY)


@pytest.mark.parametrize(
    "relative, old, new",
    [
        ("experiments/stability/section.py", '"not monotone": "not monotone in η."', '"not monotone": "no trend."'),
        ("experiments/stability/plots.py", 'colormap("Reds")', 'colormap("Oranges")'),
        ("experiments/stability/protocol.py", "Measuring the stable region", "Measuring, carefully, the stable region"),
        (
            "experiments/stability/protocol.py",
            '    """Least-squares slope of ``values`` against their index."""',
            '    """The least-squares slope of ``values`` against their index (reworded)."""',
        ),
        ("experiments/stability/protocol.py", "_EPS_MARGIN = 1e6  #", "_EPS_MARGIN = 1e6  # reworded comment;"),
        (
            "experiments/report.py",
            "def format_number(",
            "def format_number_renamed(value, digits=4):\n    pass\n\n\ndef format_number(",
        ),
        ("experiments/registry.py", '"stability", ', '"stability", "extra", '),
        ("experiments/profiles.py", "margin_steps=300", "margin_steps=301"),
        ("experiments/flow/protocol.py", "ERROR_BAR = 0.01", "ERROR_BAR = 0.02"),
        ("cli/reproduce.py", "def default_jobs", "def default_jobs_renamed"),
        ("optimizer/kadam.py", "import torch\n", "import torch  # a new comment\n"),
    ],
    ids=[
        "finding-wording",
        "plot-colour",
        "module-docstring",
        "function-docstring",
        "comment",
        "report-writer",
        "registry",
        "profiles",
        "another-slice",
        "cli",
        "library-comment",
    ],
)
def test_edits_that_cannot_change_a_number_keep_the_key(package, relative, old, new):
    before = code_fingerprint(STABILITY, package)
    _edit(package / relative, old, new)
    assert code_fingerprint(STABILITY, package) == before


@pytest.mark.parametrize(
    "relative, old, new",
    [
        ("experiments/stability/protocol.py", "_EPS_MARGIN = 1e6", "_EPS_MARGIN = 1e5"),
        (
            "experiments/workloads/loop.py",
            "report_every = progress_every or max(1, steps // 100)",
            "report_every = progress_every or max(1, steps // 50)",
        ),
        ("stability.py", "import numpy as np\n", "import numpy as np\n\n_UNUSED_BUT_CODE = 1\n"),
        ("optimizer/csrc/fused_kadam_cpu.cpp", "#include <cmath>\n", "#include <cmath>\n#include <limits>\n"),
    ],
    ids=["protocol", "workloads", "library", "native-kernel"],
)
def test_edits_to_computing_code_change_the_key(package, relative, old, new):
    before = code_fingerprint(STABILITY, package)
    _edit(package / relative, old, new)
    assert code_fingerprint(STABILITY, package) != before


def test_the_key_covers_the_protocol_workloads_and_library_but_not_sections_or_plots():
    root = Path(kadam.__file__).parent
    covered = {path.relative_to(root).as_posix() for path in computing_sources(STABILITY)}
    assert "experiments/stability/protocol.py" in covered and "experiments/workloads/loop.py" in covered
    assert "optimizer/kadam.py" in covered and "stability.py" in covered
    assert "optimizer/csrc/fused_kadam_cpu.cpp" in covered
    assert not covered & {
        "experiments/stability/section.py",
        "experiments/stability/plots.py",
        "experiments/report.py",
        "experiments/registry.py",
        "experiments/profiles.py",
        "experiments/cells.py",
        "experiments/flow/protocol.py",
        "cli/reproduce.py",
    }


def test_source_digest_ignores_docstrings_and_comments(tmp_path):
    first, second = tmp_path / "a.py", tmp_path / "b.py"
    first.write_text('"""Module."""\nX = 1\n\n\ndef f():\n    """Doc."""\n    return X\n')
    second.write_text("# comment\nX = 1  # one\n\ndef f():\n    return X\n")
    assert source_digest(first) == source_digest(second)
    second.write_text("X = 2\n\ndef f():\n    return X\n")
    assert source_digest(first) != source_digest(second)


def test_a_cell_names_its_function_and_its_key_uses_the_functions_module():
    cell = Cell("stability", "switch-off", switch_off_experiment, {"point_limit": 2})
    assert cell.name == "kadam.experiments.stability.protocol:switch_off_experiment"
    assert len(cell.key) == 24


def test_the_comparison_runs_key_leaves_out_its_analysis():
    """Re-analysing the cached training runs (selection, statistics) must not recompute them."""
    root = Path(kadam.__file__).parent
    covered = {path.relative_to(root).as_posix() for path in computing_sources("kadam.experiments.comparison.protocol")}
    assert "experiments/comparison/protocol.py" in covered
    assert not covered & {
        "experiments/comparison/analysis.py",
        "experiments/comparison/section.py",
        "experiments/comparison/plots.py",
    }
