"""Conventions every sub-command follows: output paths and numbers checked before any computation, with
one-line errors naming the option; a thread count of its own, put back afterwards; stage lines on stderr
when it is not a terminal; torch-free start-up for ``--help`` and ``region``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kadam.flow
from kadam.cli import main
from tests.cli.helpers import exit_status

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no file can be created in: permission bits, or /proc where they do not bind (root)."""
    if os.geteuid() == 0:
        yield Path("/proc")
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield folder
    folder.chmod(stat.S_IRWXU)


@pytest.fixture
def no_computation(monkeypatch):
    """Fail the test if a command gets as far as computing anything."""
    def forbidden(*args, **kwargs):
        raise AssertionError("computed before checking its options")

    import kadam.experiments.reproduce
    monkeypatch.setattr(kadam.flow, "discrete", forbidden)
    monkeypatch.setattr(kadam.experiments.reproduce, "reproduce", forbidden)


def one_line_error(capsys, arguments, *fragments):
    assert exit_status(arguments) == 2
    error = capsys.readouterr().err
    lines = error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kadam {arguments[0]}: error: "), error
    for fragment in fragments:
        assert fragment in error, error
    assert "_positive_float" not in error and "invalid" not in error
    return error


FILE_OPTIONS = [["flow", "--plot"], ["region", "--plot"], ["norms", "--plot"]]


@pytest.mark.parametrize("command", FILE_OPTIONS, ids=" ".join)
def test_output_file_in_a_missing_directory(capsys, tmp_path, no_computation, command):
    one_line_error(capsys, [*command, str(tmp_path / "missing" / "x.png")], f"argument {command[1]}", "does not exist")


@pytest.mark.parametrize("command", FILE_OPTIONS, ids=" ".join)
def test_output_file_in_a_read_only_directory(capsys, read_only_dir, no_computation, command):
    one_line_error(capsys, [*command, str(read_only_dir / "x.png")], f"argument {command[1]}", "cannot write")


@pytest.mark.parametrize("command", FILE_OPTIONS, ids=" ".join)
def test_output_file_that_is_a_directory(capsys, tmp_path, no_computation, command):
    one_line_error(capsys, [*command, str(tmp_path)], f"argument {command[1]}", "is a directory")


@pytest.mark.parametrize("command", FILE_OPTIONS, ids=" ".join)
def test_output_file_under_a_file(capsys, tmp_path, no_computation, command):
    (tmp_path / "file").write_text("")
    one_line_error(capsys, [*command, str(tmp_path / "file" / "x.png")], f"argument {command[1]}", "not a directory")


def test_reproduce_out_checks(capsys, tmp_path, read_only_dir, no_computation):
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["reproduce", "--out", str(tmp_path / "file")], "argument --out", "not a directory")
    one_line_error(capsys, ["reproduce", "--out", str(tmp_path / "file" / "report")], "argument --out", "not a directory")
    one_line_error(capsys, ["reproduce", "--out", str(read_only_dir / "report")], "argument --out", "read-only")
    one_line_error(capsys, ["reproduce", "--out", str(read_only_dir)], "argument --out", "read-only")


def test_reproduce_out_may_be_created_with_its_parents(monkeypatch, tmp_path):
    import kadam.experiments.reproduce

    received = []
    monkeypatch.setattr(kadam.experiments.reproduce, "reproduce", lambda profile, out, *rest, **kw: received.append(out))
    assert main(["reproduce", "--out", str(tmp_path / "a" / "b")]) == 0
    assert received == [str(tmp_path / "a" / "b")] and not (tmp_path / "a").exists()  # checking creates nothing


NUMERIC = [
    (["flow", "--lr"], ["inf", "nan", "-1", "0", "abc"], "must be a positive finite number"),
    (["flow", "--steps"], ["0", "inf", "1.5"], "must be an integer >= 1"),
    (["flow", "--k"], ["0", "nan"], "must be an integer >= 1"),
    (["flow", "--threads"], ["0", "inf"], "must be an integer >= 1"),
    (["demo", "--lr"], ["inf", "nan", "0"], "must be a positive finite number"),
    (["demo", "--steps"], ["0", "inf"], "must be an integer >= 1"),
    (["norms", "--lr"], ["inf", "nan"], "must be a positive finite number"),
    (["norms", "--weight-decay"], ["inf", "nan", "-1"], "must be a finite number >= 0"),
    (["norms", "--beta"], ["inf", "nan", "1"], "must be a number in [0, 1)"),
    (["norms", "--hidden"], ["0", "inf"], "must be an integer >= 1"),
    (["reproduce", "--jobs"], ["0", "inf"], "must be an integer >= 1"),
    (["reproduce", "--seeds"], ["1", "nan"], "must be an integer >= 2"),
]


@pytest.mark.parametrize("option, values, message", NUMERIC, ids=[" ".join(case[0]) for case in NUMERIC])
def test_numbers_are_checked_at_parse_time(capsys, no_computation, option, values, message):
    for value in values:
        one_line_error(capsys, [*option, value], f"argument {option[1]}: {message}, got {value!r}")


def test_region_rejects_non_finite_numbers(capsys):
    for option in ("--beta", "--gamma"):
        other = "--gamma" if option == "--beta" else "--beta"
        one_line_error(capsys, ["region", option, "inf", other, "0.9"], option, "finite")
        one_line_error(capsys, ["region", option, "nan", other, "0.9"], option, "finite")
    one_line_error(capsys, ["region", "--steps", "inf"], "--steps")


def test_flow_names_the_discrete_run_when_it_diverges(capsys):
    assert main(["flow", "--lr", "1e200", "--steps", "3"]) == 1
    error = capsys.readouterr().err
    assert "the discrete optimizer diverged at step" in error and "continuous model failed" not in error


def test_flow_sets_its_threads_and_puts_them_back(monkeypatch, capsys):
    seen = []
    real_discrete = kadam.flow.discrete

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_discrete(*args, **kwargs)

    monkeypatch.setattr(kadam.flow, "discrete", recording)
    before = torch.get_num_threads()
    other = 2 if before != 2 else 3
    assert main(["flow", "--steps", "5", "--threads", str(other)]) == 0
    assert seen == [other] and torch.get_num_threads() == before
    assert main(["flow", "--steps", "5"]) == 0
    assert seen[-1] == 1 and torch.get_num_threads() == before


def test_flow_prints_a_line_per_stage_when_stderr_is_not_a_terminal(capsys):
    assert main(["flow", "--steps", "5", "--json"]) == 0
    error = capsys.readouterr().err.splitlines()
    assert [line.split("] ")[0] for line in error if "done in" not in line] == [
        "kadam flow: [1/3", "kadam flow: [2/3", "kadam flow: [3/3"]
    assert "discrete KAdam, 5 steps" in error[2] and "continuous model (exact rates, order 1), 5 steps" in error[4]
    assert sum("done in" in line for line in error) == 3


def test_the_cli_offers_the_choices_the_library_implements():
    """The command line lists its choices from kadam.vocabulary (no torch); each is one the library runs."""
    import torch

    from kadam import vocabulary
    from kadam.experiments.comparison.config import PROFILES as COMPARISON_PROFILES
    from kadam.experiments.comparison.protocol import make_arm_optimizer
    from kadam.experiments.flow.extra import make_flow_problem

    for arm in vocabulary.ARMS:
        assert isinstance(make_arm_optimizer(arm, [torch.nn.Parameter(torch.ones(2))], 1e-3, 0.9, 0.999, 0.0),
                          torch.optim.Optimizer)
    for problem in vocabulary.FLOW_PROBLEMS:
        assert make_flow_problem(problem).theta0.numel() > 0
    assert set(vocabulary.COMPARE_PROFILES) <= set(COMPARISON_PROFILES)


@pytest.mark.parametrize("arguments", [["--help"], ["region"], ["region", "--json", "--beta", "0.9", "--gamma", "0.8"]])
def test_help_and_region_start_without_torch(arguments):
    code = (
        "import sys\n"
        "from kadam.cli import main\n"
        "try:\n"
        f"    main({arguments!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert result.returncode == 0, result.stderr
