"""``kadam monitor plot``: registered on a fresh parser (the lead adds "monitor" to the CLI's subcommands)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kadam.cli import monitor as monitor_cli
from tests.monitor.helpers import monitored_run_outside_the_region


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="kadam")
    monitor_cli.register(root.add_subparsers(dest="command", required=True))
    return root


def test_plot_writes_a_figure_from_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monitor = monitored_run_outside_the_region()  # outside the region: one event
    monitor.to_csv(tmp_path / "log.csv")
    args = parser().parse_args(["monitor", "plot", str(tmp_path / "log.csv"), "--out", str(tmp_path / "fig.png")])
    assert args.func(args) == 0
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "5 recorded steps, 4 tensors, 1 events" in capsys.readouterr().out


def test_plot_rejects_a_missing_log_and_bad_worst(tmp_path: Path) -> None:
    args = parser().parse_args(["monitor", "plot", str(tmp_path / "none.csv"), "--out", str(tmp_path / "f.png")])
    with pytest.raises(ValueError, match="does not exist"):
        args.func(args)
    (tmp_path / "log.csv").write_text("kind,step,tensor,quantity,level,value,threshold,explanation,suggestion\n")
    args = parser().parse_args(["monitor", "plot", str(tmp_path / "log.csv"), "--out", "f.png", "--worst", "0"])
    with pytest.raises(ValueError, match="--worst must be"):
        args.func(args)
