"""``kadam compare`` on a tiny noisy quadratic: the table, --json's keys, resuming from the cache, bad input."""

import argparse
import json

import pytest

from kadam.cli import compare

TINY = ["--task", "noisy-quadratic", "--profile", "smoke", "--optimizers", "kadam1", "kadam2", "--trials", "2",
        "--seeds", "2", "--steps", "30", "--sensitivity", "--no-progress"]


def _main(argv):
    """``kadam <argv>`` with the compare sub-command registered as ``kadam.cli`` registers it."""
    parser = argparse.ArgumentParser(prog="kadam")
    compare.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:
        print(f"kadam {args.command}: error: {error}")
        return 2


def test_compare_prints_the_table_then_resumes_from_the_cache(tmp_path, capsys):
    assert _main(["compare", *TINY, "--out", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert "kadam compare --task noisy-quadratic" in first and "kadam2" in first
    assert "12 runs computed, 0 cached" in first  # 3 arms × (2 trials + 2 seeds)
    assert "tied AdamW exactly" in first
    assert _main(["compare", *TINY, "--out", str(tmp_path)]) == 0
    assert "0 runs computed, 12 cached" in capsys.readouterr().out


def test_compare_json_keys(tmp_path, capsys):
    assert _main(["compare", *TINY, "--out", str(tmp_path), "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert set(output) == {"task", "command", "config", "budget", "rows", "lr_only_rows", "target_train_loss",
                           "control_pairs_checked", "analysis"}
    rows = {row["arm"]: row for row in output["rows"]}
    assert set(rows) == {"adamw", "kadam1", "kadam2"}
    assert rows["adamw"]["difference"] is None
    assert rows["kadam1"]["difference"]["mean"] == 0.0 and rows["kadam1"]["lr_ratio_to_adamw"] == 1.0
    assert {"p_holm", "ci_adjusted_low", "ci_adjusted_high", "mde", "significant"} <= set(rows["kadam2"]["difference"])
    assert {"hyperparameters", "test_loss", "steps_to_target", "seconds_to_target", "seconds_per_step",
            "target_reached", "diverged"} <= set(rows["kadam2"])
    assert output["control_pairs_checked"] == 4 and output["lr_only_rows"] == []
    assert json.loads((tmp_path / "compare.json").read_text())["rows"] == output["rows"]


@pytest.mark.parametrize("extra, match", [(["--seeds", "1"], "--seeds must be ≥ 2"),
                                          (["--trials", "0"], "--trials must be ≥ 1"),
                                          (["--steps", "0"], "--steps must be ≥ 1")])
def test_compare_rejects_bad_input(tmp_path, capsys, extra, match):
    assert _main(["compare", *TINY, "--out", str(tmp_path), *extra]) == 2
    assert match in capsys.readouterr().out


def test_compare_needs_a_task_or_study(tmp_path, capsys):
    assert _main(["compare", "--out", str(tmp_path), "--trials", "2"]) == 2
    assert "--task is required" in capsys.readouterr().out
