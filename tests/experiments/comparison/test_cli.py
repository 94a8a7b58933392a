"""``kadam compare`` on a tiny noisy quadratic: the table, --json's keys, resuming from the cache, bad input."""

import json

import pytest

from kadam.cli import main
from tests.cli.helpers import no_computation, refused  # noqa: F401 (fixture)

TINY = [
    "--task",
    "noisy-quadratic",
    "--profile",
    "smoke",
    "--optimizers",
    "kadam1",
    "kadam2",
    "--trials",
    "2",
    "--seeds",
    "2",
    "--steps",
    "30",
    "--refine",
    "2",
    "--sensitivity",
    "--no-progress",
]


def test_compare_prints_the_table_then_resumes_from_the_cache(tmp_path, capsys):
    assert main(["compare", *TINY, "--out", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert "kadam compare --task noisy-quadratic" in first and "kadam2" in first
    assert "15 runs computed, 0 cached" in first  # 3 arms × (2 trials + 1 refinement + 2 seeds)
    assert "tied AdamW exactly" in first
    assert main(["compare", *TINY, "--out", str(tmp_path)]) == 0
    assert "0 runs computed, 15 cached" in capsys.readouterr().out


def test_compare_json_keys(tmp_path, capsys):
    assert main(["compare", *TINY, "--out", str(tmp_path), "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert set(output) == {
        "task",
        "command",
        "config",
        "budget",
        "rows",
        "lr_only_rows",
        "target_train_loss",
        "control_pairs_checked",
        "analysis",
    }
    rows = {row["arm"]: row for row in output["rows"]}
    assert set(rows) == {"adamw", "kadam1", "kadam2"}
    assert rows["adamw"]["difference"] is None
    assert rows["kadam1"]["difference"]["mean"] == 0.0 and rows["kadam1"]["lr_ratio_to_adamw"] == 1.0
    assert {"p_holm", "ci_adjusted_low", "ci_adjusted_high", "mde", "significant"} <= set(rows["kadam2"]["difference"])
    assert {
        "hyperparameters",
        "test_loss",
        "steps_to_target",
        "seconds_to_target",
        "seconds_per_step",
        "target_reached",
        "diverged",
    } <= set(rows["kadam2"])
    assert output["control_pairs_checked"] == 5 and output["lr_only_rows"] == []
    assert json.loads((tmp_path / "compare.json").read_text())["rows"] == output["rows"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "1"], "argument --seeds: must be an integer >= 2, got '1'"),
        (["--trials", "0"], "argument --trials: must be an integer >= 1, got '0'"),
        (["--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
        (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
        (["--jobs", "0"], "argument --jobs: must be an integer >= 1, got '0'"),
        (["--lr-only-trials", "-1"], "argument --lr-only-trials: must be an integer >= 0, got '-1'"),
        (["--sensitivity", "0.1", "-2"], "argument --sensitivity: must be a positive finite number, got '-2'"),
        (["--refine", "0.5", "1"], "argument --refine: factors must be distinct and not 1"),
        (["--executor", "spark"], "argument --executor: executor must be one of process, dask or a Dask scheduler"),
        (["--out", "/proc/kadam-missing/y"], "argument --out: cannot create '/proc/kadam-missing/y'"),
        (["--out", "/proc/version"], "argument --out: '/proc/version' exists and is not a directory"),
        (["--out", ""], "argument --out: must be a directory path, got ''"),
    ],
)
def test_compare_refuses_bad_input_before_any_run(tmp_path, monkeypatch, capsys, no_computation, extra, message):
    monkeypatch.chdir(tmp_path)
    refused(capsys, ["compare", *TINY, "--out", str(tmp_path / "out"), *extra], message, unchanged=tmp_path)


def test_compare_needs_a_task_or_study(tmp_path, capsys, no_computation):
    refused(
        capsys,
        ["compare", "--out", str(tmp_path), "--trials", "2"],
        "argument --task: required (or --study",
        unchanged=tmp_path,
    )


def test_compare_without_the_control_says_so(tmp_path, capsys):
    arguments = [a for a in TINY if a != "kadam1"]
    assert main(["compare", *arguments, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "No k = 1 control" in out and "tied AdamW exactly" not in out
