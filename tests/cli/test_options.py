"""Conventions every sub-command follows: output paths and numbers checked before any computation, with
one-line errors naming the option; a thread count of its own, put back afterwards; stage lines on stderr
when it is not a terminal; torch-free start-up for ``--help`` and ``region``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kadam.flow
from kadam.cli import main
from tests.cli.helpers import exit_status, no_computation, read_only_dir, refused  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def one_line_error(capsys, arguments, *fragments):
    return refused(capsys, arguments, *fragments)


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
    one_line_error(
        capsys, ["reproduce", "--out", str(tmp_path / "file" / "report")], "argument --out", "not a directory"
    )
    one_line_error(capsys, ["reproduce", "--out", str(read_only_dir / "report")], "argument --out", "read-only")
    one_line_error(capsys, ["reproduce", "--out", str(read_only_dir)], "argument --out", "read-only")


def test_reproduce_out_may_be_created_with_its_parents(monkeypatch, tmp_path):
    import kadam.experiments.reproduce

    received = []
    monkeypatch.setattr(
        kadam.experiments.reproduce, "reproduce", lambda profile, out, *rest, **kw: received.append(out)
    )
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
        one_line_error(
            capsys, ["region", option, "inf", other, "0.9"], f"argument {option}: must be a number in [0, 1)"
        )
        one_line_error(
            capsys, ["region", option, "nan", other, "0.9"], f"argument {option}: must be a number in [0, 1)"
        )
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
        "kadam flow: [1/3",
        "kadam flow: [2/3",
        "kadam flow: [3/3",
    ]
    assert "discrete KAdam, 5 steps" in error[2] and "continuous model (exact rates, order 1), 5 steps" in error[4]
    assert sum("done in" in line for line in error) == 3


def test_the_cli_offers_the_choices_the_library_implements():
    """The command line lists its choices from kadam.vocabulary (no torch); each is one the library runs."""
    import torch

    from kadam import vocabulary
    from kadam.experiments.comparison.protocol import arm_hyperparameters, make_arm_optimizer
    from kadam.experiments.comparison.section import comparison_config
    from kadam.experiments.flow.extra import make_flow_problem

    for arm in vocabulary.ARMS:
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))  # one hidden matrix (Muon's)
        point = arm_hyperparameters(arm, {"lr": 1e-3, "beta": 0.9, "gamma": 0.999, "weight_decay": 0.0})
        optimizer = make_arm_optimizer(
            arm, model.parameters(), point["lr"], point["beta"], point["gamma"], point["weight_decay"], model=model
        )
        assert isinstance(optimizer, torch.optim.Optimizer)
    for problem in vocabulary.FLOW_PROBLEMS:
        assert make_flow_problem(problem).theta0.numel() > 0
    for profile in vocabulary.COMPARE_PROFILES:
        assert comparison_config(profile).workloads


@pytest.mark.parametrize(
    "arguments", [["--help"], ["--version"], ["region"], ["region", "--json", "--beta", "0.9", "--gamma", "0.8"]]
)
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
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------------------
# every output path of every command, checked by one helper before anything runs

OUTPUTS = [  # (the command up to its output option, the rest of a command line that would run)
    (["flow", "--plot"], []),
    (["region", "--plot"], []),
    (["norms", "--plot"], []),
    (["monitor", "plot", "LOG", "--out"], []),
    (["reproduce", "--out"], []),
    (["compare", "--task", "noisy-quadratic", "--out"], []),
]
FIGURES = [option for option, _ in OUTPUTS if option[0] in ("flow", "region", "norms", "monitor")]


def _command(option, tmp_path, value):
    """The command line with LOG replaced by a real (empty) file and the output option set to value."""
    log = tmp_path / "run.csv"
    log.write_text("")
    return [str(log) if part == "LOG" else part for part in option] + [value]


def _prog(option):
    return "kadam monitor plot" if option[0] == "monitor" else f"kadam {option[0]}"


@pytest.mark.parametrize("option", [option for option, _ in OUTPUTS], ids=" ".join)
def test_an_empty_output_path_is_refused(capsys, tmp_path, monkeypatch, no_computation, option):
    monkeypatch.chdir(tmp_path)
    refused(
        capsys,
        _command(option, tmp_path, ""),
        f"argument {option[-1]}: must be a",
        "path, got ''",
        prog=_prog(option),
        unchanged=tmp_path,
    )


def test_reproduce_out_empty_writes_nothing_in_the_working_directory(capsys, tmp_path, monkeypatch, no_computation):
    monkeypatch.chdir(tmp_path)
    refused(
        capsys,
        ["reproduce", "--profile", "smoke", "--out", ""],
        "argument --out: must be a directory path",
        unchanged=tmp_path,
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", [option for option, _ in OUTPUTS], ids=" ".join)
def test_an_output_under_a_missing_folder_of_proc_is_refused(capsys, tmp_path, no_computation, option):
    """/proc accepts no new entry even for root: a missing folder there can be neither found nor created."""
    directory = option[-1] == "--out" and option[0] != "monitor"
    target = "/proc/kadam-missing/y" if directory else "/proc/kadam-missing/m.png"
    message = "cannot create" if directory else "does not exist"
    refused(
        capsys,
        _command(option, tmp_path, target),
        f"argument {option[-1]}: ",
        message,
        prog=_prog(option),
        unchanged=tmp_path,
    )


@pytest.mark.parametrize("option", [option for option, _ in OUTPUTS], ids=" ".join)
def test_an_output_path_of_the_wrong_kind_is_refused(capsys, tmp_path, no_computation, option):
    directory = option[-1] == "--out" and option[0] != "monitor"
    if directory:  # an existing file where a folder is expected, and a folder under a file
        refused(
            capsys,
            _command(option, tmp_path, "/proc/version"),
            "argument --out: '/proc/version' exists and is not a directory",
            prog=_prog(option),
            unchanged=tmp_path,
        )
        (tmp_path / "file").write_text("")
        refused(
            capsys,
            _command(option, tmp_path, str(tmp_path / "file" / "out")),
            "argument --out: cannot create",
            "is not a directory",
            prog=_prog(option),
            unchanged=tmp_path,
        )
    else:  # an existing folder where a file is expected, and a file under a file
        refused(
            capsys,
            _command(option, tmp_path, str(tmp_path)),
            f"argument {option[-1]}: ",
            "is a directory",
            prog=_prog(option),
            unchanged=tmp_path,
        )
        refused(
            capsys,
            _command(option, tmp_path, "/proc/version/m.png"),
            f"argument {option[-1]}: ",
            "'/proc/version' is not a directory",
            prog=_prog(option),
            unchanged=tmp_path,
        )


@pytest.mark.parametrize("option", FIGURES, ids=" ".join)
def test_a_figure_needs_an_image_extension_matplotlib_writes(capsys, tmp_path, no_computation, option):
    for name in ("x.xyz", "r.txt", "noextension"):
        refused(
            capsys,
            _command(option, tmp_path, str(tmp_path / name)),
            f"argument {option[-1]}: ",
            "a figure is written as one of .png, .pdf",
            prog=_prog(option),
            unchanged=tmp_path,
        )


def test_the_figure_formats_are_written_by_the_installed_matplotlib(tmp_path):
    """Every extension a figure option accepts is one matplotlib writes, and writing it works (case-insensitive)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.figure import Figure

    from kadam.cli.options import FIGURE_FORMATS, output_figure

    assert set(FIGURE_FORMATS) <= set(FigureCanvasBase.get_supported_filetypes())
    figure = Figure()
    figure.subplots().plot([0, 1], [1, 0])
    for extension in FIGURE_FORMATS:
        for name in (f"figure.{extension}", f"upper.{extension.upper()}"):
            path = output_figure(str(tmp_path / name))
            figure.savefig(path)
            assert path.stat().st_size > 0, path


def test_the_figure_check_imports_no_matplotlib():
    code = (
        "import sys\nfrom kadam.cli.options import output_figure\noutput_figure('x.png')\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------------------
# conditions on several options, checked before any work


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["flow", "--warm-start", "5000", "--steps", "10"],
            "argument --warm-start: must be an integer in [0, --steps - 1 = 9], got 5000",
        ),
        (
            ["flow", "--warm-start", "10", "--steps", "10"],
            "argument --warm-start: must be an integer in [0, --steps - 1 = 9]",
        ),
        (
            ["flow", "--modified", "--order", "2"],
            "argument --order: --modified corrects the first-order model: --order must be 1, got 2",
        ),
        (["flow", "--modified", "--rates", "paper"], "argument --rates: --modified needs --rates exact"),
        (
            ["norms", "--lr", "1", "--weight-decay", "2"],
            "argument --weight-decay: must satisfy --lr * --weight-decay < 1",
        ),
        (["norms", "--weight-decay", "0"], "argument --weight-decay: must be > 0 for adamw"),
        (["theory", "--section", "9"], "argument --section: must be one of 1..7, got 9"),
        (["region", "--beta", "0.9"], "argument --gamma: give both --beta and --gamma"),
        (
            ["region", "--beta", "0.9", "0.8", "--gamma", "0.5", "0.6", "0.7"],
            "argument --gamma: --beta and --gamma must have the same number of values",
        ),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_combinations_are_checked_before_any_work(capsys, tmp_path, monkeypatch, no_computation, arguments, message):
    monkeypatch.chdir(tmp_path)
    refused(capsys, arguments, message, unchanged=tmp_path)


def test_flow_accepts_the_largest_warm_start(monkeypatch):
    """The check lets through what kadam.flow.simulate accepts: warm start steps - 1."""
    seen = []
    monkeypatch.setattr(kadam.flow, "simulate", lambda *args, **kwargs: seen.append(kwargs["warm_start"]) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["flow", "--warm-start", "4", "--steps", "5"])
    assert seen == [4]


def test_region_int_options_report_the_value_given(capsys):
    for value in ("0", "2.5", "1e3"):
        refused(capsys, ["region", "--steps", value], f"argument --steps: must be an integer >= 1, got {value!r}")
    refused(capsys, ["region", "--steps", "10,0"], "argument --steps: must be an integer >= 1, got '0'")


# ----------------------------------------------------------------------------------------------------------
# kadam --version; no internal references in the help


def test_version_prints_the_package_version(capsys):
    import kadam

    assert exit_status(["--version"]) == 0
    assert capsys.readouterr().out == f"kadam {kadam.__version__}\n"


def test_help_texts_hold_no_internal_issue_numbers(capsys):
    import re

    from kadam.cli import _SUBCOMMANDS

    texts = []
    for arguments in ([], *([name] for name in _SUBCOMMANDS), ["monitor", "plot"]):
        assert exit_status([*arguments, "--help"]) == 0
        texts.append(capsys.readouterr().out)
    for text in texts:
        assert not re.search(r"\bissues? \d+|#\d+\b|\bsession\b", text), text
    for name in _SUBCOMMANDS:
        module = __import__(f"kadam.cli.{name}", fromlist=["_"])
        assert not re.search(r"\bissues? \d+", module.__doc__ or ""), name
