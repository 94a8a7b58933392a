"""``kadam transfer`` (src/kadam/cli/transfer.py), registered on a fresh parser: printed values equal the library's."""

from __future__ import annotations

import argparse
import json

import pytest

from kadam.cli import transfer as transfer_cli
from kadam.transfer import transfer_batch_size, transfer_lr


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="kadam")
    transfer_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["transfer", *argv])
    status = args.func(args)
    return status, capsys.readouterr().out


def test_batch_size_transfer_prints_the_square_root_rule(capsys):
    status, out = run(capsys, "--lr", "3e-3", "--betas", "0.9", "0.999", "--batch-size", "32", "--to-batch-size", "256")
    assert status == 0
    expected = transfer_batch_size(3e-3, (0.9, 0.999), 32, to_batch_size=256).target
    assert "rule: batch-sqrt (factor 8)" in out
    to_line = next(line for line in out.splitlines() if line.strip().startswith("to "))
    assert f"lr {expected.lr:.6g}" in to_line and f"({expected.betas[0][0]:.6g}, {expected.betas[0][1]:.6g})" in to_line
    assert "batch 256" in to_line
    assert "linear" in out and "unchanged" in out and "inside gamma > beta**2" in out


def test_lr_transfer_json_equals_the_library(capsys):
    status, out = run(capsys, "--lr", "1e-3", "--betas", "0.9", "0.999", "0", "0.99", "--factor", "4", "--steps", "1000",
                      "--json")
    assert status == 0
    printed = json.loads(out)
    expected = transfer_lr(1e-3, [(0.9, 0.999), (0.0, 0.99)], steps=1000, factor=4).to_dict()
    assert printed["target"] == json.loads(json.dumps(expected["target"]))
    assert printed["rule"] == "lr-exact" and printed["stable"] is True
    status, out = run(capsys, "--lr", "1e-3", "--to-lr", "4e-3", "--steps", "1000", "--betas", "0.9", "0.999", "0", "0.99",
                      "--json")
    assert json.loads(out)["target"] == printed["target"]


def test_unstable_target_is_reported_with_the_nearest_pair(capsys):
    status, out = run(capsys, "--lr", "1e-3", "--betas", "0.9", "0.815", "--factor", "0.1", "--rates", "paper")
    assert status == 0
    assert "OUTSIDE gamma > beta**2" in out and "nearest stable pair" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "1e-3", "--betas", "0.9", "--factor", "2"], "even count"),
        (["--lr", "1e-3", "--batch-size", "32", "--to-batch-size", "64", "--to-lr", "1e-2"], "--to-lr cannot"),
        (["--lr", "1e-3", "--to-batch-size", "64"], "needs --batch-size"),
        (["--lr", "1e-3"], "exactly one of factor and to_lr"),
        (["--lr", "1e-3", "--batch-size", "32", "--factor", "16"], "factor must be <= 10"),
    ],
)
def test_bad_arguments_raise_value_error(capsys, argv, message):
    with pytest.raises(ValueError, match=message):
        run(capsys, *argv)


def test_main_module_runs_it_once_registered(capsys, monkeypatch):
    """With "transfer" in kadam.cli._SUBCOMMANDS (the lead adds it), ``kadam transfer`` reaches this module."""
    from kadam import cli

    monkeypatch.setattr(cli, "_SUBCOMMANDS", (*cli._SUBCOMMANDS, "transfer") if "transfer" not in cli._SUBCOMMANDS
                        else cli._SUBCOMMANDS)
    assert cli.main(["transfer", "--lr", "3e-3", "--batch-size", "32", "--to-batch-size", "256"]) == 0
    assert "batch-sqrt" in capsys.readouterr().out
    assert cli.main(["transfer", "--lr", "3e-3", "--batch-size", "32", "--factor", "16"]) == 2
    assert "factor must be <= 10" in capsys.readouterr().err
