"""``kadam norms``: output equals the library's result; bad input is one line and exit status 2."""

from __future__ import annotations

import json

import pytest

from kadam.cli import main
from kadam.experiments.normalization.protocol import digits_norms
from tests.cli.helpers import exit_status

SMALL = ["--steps", "60", "--hidden", "16", "--lr", "0.01", "--weight-decay", "0.5"]


def test_json_equals_the_library_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["norms", "--task", "digits-ln", *SMALL, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads(json.dumps(digits_norms(norm="layer", lr=0.01, weight_decay=0.5, steps=60, hidden=16)))
    assert printed["tracked"] == expected["tracked"] == ["0.weight", "3.weight"]
    for got, want in zip(printed["layers"], expected["layers"]):
        for key in ("measured_norm", "corrected_norm", "orthogonal_norm", "measured_angular_update"):
            assert got[key] == pytest.approx(want[key], rel=1e-6)


def test_table_lists_invariant_tensors_and_writes_the_plot(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    plot = tmp_path / "norms.png"
    assert main(["norms", "--task", "digits-bn", *SMALL, "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    stages = [line for line in captured.err.splitlines() if "done in" not in line]  # stderr is not a terminal
    assert stages == [
        "kadam norms: [1/2] finding the scale-invariant tensors and training digits-bn, 60 steps",
        f"kadam norms: [2/2] drawing {plot}",
    ]
    assert "0.weight" in out and "3.weight" in out and "BatchNorm1d" in out
    assert "tracked (invariant, explained by structure): 0.weight, 3.weight" in out
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--lr", "0"], "argument --lr: must be a positive finite number, got '0'"),
        (["--lr", "inf"], "argument --lr: must be a positive finite number, got 'inf'"),
        (["--weight-decay", "-1"], "argument --weight-decay: must be a finite number >= 0"),
        (["--weight-decay", "nan"], "argument --weight-decay: must be a finite number >= 0, got 'nan'"),
        (["--weight-decay", "0"], "argument --weight-decay: must be > 0 for adamw"),
        (["--lr", "1", "--weight-decay", "2"], "argument --weight-decay: must satisfy --lr * --weight-decay < 1"),
        (["--steps", "3"], "argument --steps: must be an integer >= 10"),
        (["--beta", "1.5"], "argument --beta: must be a number in [0, 1)"),
        (["--beta=-inf"], "argument --beta: must be a number in [0, 1), got '-inf'"),
    ],
)
def test_bad_values_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], arguments, message) -> None:
    assert exit_status(["norms", *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_unknown_task_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["norms", "--task", "cifar"])
    assert exit_info.value.code == 2
