"""`kadam reproduce` on the command line: flags reach the library; bad input is one line and exit 2."""

import pytest
import torch

import kadam.cli.reproduce as cli_reproduce
import kadam.experiments.reproduce as library_reproduce
from kadam.cli import main
from tests.cli.helpers import exit_status


def test_flags_reach_the_library(monkeypatch, tmp_path):
    received = {}

    def fake_reproduce(profile, out, device, seeds, jobs, show_progress, executor, sections):
        received.update(
            profile=profile,
            out=out,
            device=device,
            seeds=seeds,
            jobs=jobs,
            show_progress=show_progress,
            executor=executor,
            sections=sections,
        )

    monkeypatch.setattr(library_reproduce, "reproduce", fake_reproduce)
    assert (
        main(
            ["reproduce", "--profile", "smoke", "--out", str(tmp_path), "--seeds", "4", "--jobs", "3", "--no-progress"]
        )
        == 0
    )
    assert received == {
        "profile": "smoke",
        "out": str(tmp_path),
        "device": "cpu",
        "seeds": 4,
        "jobs": 3,
        "show_progress": False,
        "executor": "process",
        "sections": None,
    }
    assert main(["reproduce"]) == 0
    assert received["profile"] == "quick" and received["out"] == "kadam-report" and received["seeds"] is None
    assert main(["reproduce", "--sections", "stability", "flow"]) == 0
    assert received["sections"] == ["stability", "flow"]
    assert received["jobs"] == cli_reproduce.default_jobs() >= 1
    assert main(["reproduce", "--executor", "tcp://scheduler:8786"]) == 0
    assert received["executor"] == "tcp://scheduler:8786"


def test_interrupt_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(library_reproduce, "reproduce", interrupted)
    assert main(["reproduce", "--out", "somewhere"]) == 130
    error = capsys.readouterr().err
    assert "rerun the same command to resume" in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--seeds", "1"], "argument --seeds: must be an integer >= 2, got '1'"),
        (["--jobs", "0"], "argument --jobs: must be an integer >= 1, got '0'"),
        (["--jobs", "inf"], "argument --jobs: must be an integer >= 1, got 'inf'"),
        (["--sections", "stability", "stability"], "argument --sections: each section at most once"),
        (["--sections", "nowhere"], "argument --sections: invalid choice: 'nowhere'"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "torch.cuda.is_available() is False")]),
)
def test_bad_settings_are_one_line_and_exit_2(capsys, tmp_path, arguments, message):
    assert exit_status(["reproduce", "--profile", "smoke", "--out", str(tmp_path), *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("arguments", [["--profile", "medium"], ["--device", "tpu"], ["--seeds", "two"]])
def test_argparse_rejects_unknown_choices(arguments):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", *arguments])
    assert exit_info.value.code == 2
