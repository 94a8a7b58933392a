"""``kadam monitor plot``: the figure of a log, and bad arguments refused before anything is read or drawn."""

from __future__ import annotations

from pathlib import Path

import pytest

from kadam.cli import main
from tests.cli.helpers import no_computation, refused  # noqa: F401 (fixture)
from tests.monitor.helpers import monitored_run_outside_the_region


def test_plot_writes_a_figure_from_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monitor = monitored_run_outside_the_region()  # outside the region: one event
    monitor.to_csv(tmp_path / "log.csv")
    assert main(["monitor", "plot", str(tmp_path / "log.csv"), "--out", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "5 recorded steps, 4 tensors, 1 events" in capsys.readouterr().out


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    path.write_text("kind,step,tensor,quantity,level,value,threshold,explanation,suggestion\n")
    return path


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["LOG", "--out", "fig.png", "--worst", "0"], "argument --worst: must be an integer >= 1, got '0'"),
        (["MISSING", "--out", "fig.png"], "argument LOG: 'MISSING' does not exist"),
        (["DIR", "--out", "fig.png"], "argument LOG: 'DIR' is a directory; give a file"),
        (
            ["LOG", "--out", "/proc/kadam-missing/m.png"],
            "argument --out: directory '/proc/kadam-missing' does not exist",
        ),
        (["LOG", "--out", "/proc/version/m.png"], "argument --out: '/proc/version' is not a directory"),
        (["LOG", "--out", "DIR"], "argument --out: 'DIR' is a directory; give a file name"),
        (
            ["LOG", "--out", "fig.xyz"],
            "argument --out: 'fig.xyz' has extension '.xyz'; a figure is written as one of .png",
        ),
        (["LOG", "--out", ""], "argument --out: must be a file path, got ''"),
    ],
)
def test_plot_refuses_bad_arguments_before_reading_the_log(
    tmp_path: Path,
    log: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_computation: None,
    arguments: list[str],
    message: str,
) -> None:
    """One line naming ``kadam monitor plot`` and the argument, exit status 2, nothing read or written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    names = {"LOG": str(log), "MISSING": "none.csv", "DIR": "dir"}
    argv = ["monitor", "plot", *(names.get(part, part) for part in arguments)]
    expected = message.replace("'MISSING'", "'none.csv'").replace("'DIR'", "'dir'")
    refused(capsys, argv, expected, prog="kadam monitor plot", unchanged=tmp_path)


def test_an_unreadable_log_is_reported_by_kadam_monitor_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log.csv").write_text("not,a,monitor,log\n")
    refused(
        capsys,
        ["monitor", "plot", str(tmp_path / "log.csv"), "--out", str(tmp_path / "f.png")],
        "not a kadam monitor log",
        prog="kadam monitor plot",
    )
    assert not (tmp_path / "f.png").exists()
