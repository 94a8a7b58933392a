"""`kadam demo`: trains Adam, AdamW and 2-Adam on one small task and prints their losses."""

import re

import pytest

from kadam.cli import main
from tests.cli.helpers import exit_status


def test_demo_prints_one_row_per_optimizer_with_finite_losses(capsys):
    assert main(["demo", "--task", "digits-cnn", "--steps", "30", "--lr", "3e-3"]) == 0
    captured = capsys.readouterr()
    output = captured.out
    rows = {name: re.search(rf"│ {name}\s+│([^\n]*)", output) for name in ("adam", "adamw", "kadam2")}
    for name, row in rows.items():
        assert row is not None, name
        first, last, validation, accuracy, _seconds = (float(v) for v in re.findall(r"\d+\.\d+", row.group(1)))
        assert last < first and 0.0 <= accuracy <= 1.0 and validation > 0
    assert "digits-cnn, 30 steps" in output
    stages = [line for line in captured.err.splitlines() if "done in" not in line]
    assert stages == [
        f"kadam demo: [{i}/3] training digits-cnn with {name}, 30 steps"  # stderr is not a terminal
        for i, name in enumerate(("adam", "adamw", "kadam2"), start=1)
    ]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
        (["--lr", "-1"], "argument --lr: must be a positive finite number, got '-1'"),
        (["--lr", "inf"], "argument --lr: must be a positive finite number, got 'inf'"),
        (["--lr", "nan"], "argument --lr: must be a positive finite number, got 'nan'"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1"),
    ],
)
def test_demo_bad_input_is_one_line_and_exit_2(capsys, arguments, message):
    assert exit_status(["demo", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_demo_unknown_task_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--task", "imagenet"])
    assert exit_info.value.code == 2
