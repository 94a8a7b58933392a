"""``kadam transfer``: printed values equal the library's; a bad value is one line naming the flag, exit status 2."""

from __future__ import annotations

import json
import math
import re

import pytest

from kadam import transfer as transfer_module
from kadam.cli import main
from kadam.transfer import BATCH_RULES, transfer_batch_size, transfer_lr
from tests.cli.helpers import exit_status, refused


def synthetic_evidence() -> dict:
    """A study summary in the packaged format: linear is best at κ >= 2, unchanged below 1 (made up for these tests;
    the packaged file's own test checks it against results/transfer-study)."""
    rows = []
    for factor in (0.25, 0.5, 2, 4, 8):
        for index, rule in enumerate(BATCH_RULES):
            best = "linear" if factor > 1 else "unchanged"
            relative = 0.0 if rule == best else 0.01 * (index + 1)
            for workload in ("gpt", "cnn"):
                rows.append(
                    {
                        "workload": workload,
                        "regime": "samples",
                        "factor": factor,
                        "rule": rule,
                        "regret": relative,
                        "low": relative - 0.01,
                        "high": relative + 0.01,
                        "relative": relative,
                        "tolerance": 0.02,
                        "verdict": "holds",
                    }
                )
    return {
        "source": "a synthetic study",
        "regime": "samples",
        "factors": [0.25, 0.5, 2, 4, 8],
        "base_batch": 32,
        "workloads": ["gpt", "cnn"],
        "evaluation_seeds": 3,
        "tolerance_fraction": 0.02,
        "rows": rows,
    }


@pytest.fixture(autouse=True)
def _evidence(monkeypatch):
    monkeypatch.setattr(transfer_module, "batch_evidence", synthetic_evidence)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = exit_status(["transfer", *argv])
    return status, capsys.readouterr().out


def test_batch_size_transfer_recommends_the_rule_with_the_lowest_measured_regret(capsys):
    argv = ("--lr", "3e-3", "--betas", "0.9", "0.999", "--batch-size", "32", "--to-batch-size", "256")
    status, out = run(capsys, *argv)
    assert status == 0
    expected = transfer_batch_size(3e-3, (0.9, 0.999), 32, to_batch_size=256, rule="linear").target
    assert "rule: batch-linear (factor 8)" in out
    to_line = next(line for line in out.splitlines() if line.strip().startswith("to "))
    assert f"lr {expected.lr:.6g}" in to_line and "batch 256" in to_line
    assert "why: the lowest measured regret at ×8 in the committed study" in out
    assert "evidence: a synthetic study" in out and "3 paired seeds" in out
    ranked = [
        line.split()[-1] for line in out.splitlines() if " relative " in line for line in [line.split(" relative ")[0]]
    ]
    assert ranked[0] == "linear" and set(ranked) == set(BATCH_RULES)
    assert "gpt +0 [-0.01, +0.01] holds" in out
    assert all(f"  {rule} " in out for rule in BATCH_RULES)  # every alternative is printed
    assert "inside gamma > beta**2" in out and "WARNING: factor" not in out
    assert "note: at this budget linear is not distinguishable from sqrt (their regret intervals overlap" in out
    status, out = run(capsys, *argv, "--rule", "sqrt")
    assert (
        "rule: batch-sqrt (factor 8)" in out
        and "chosen with --rule (the lowest measured regret at ×8 is linear)" in out
    )
    printed = json.loads(run(capsys, *argv, "--json")[1])
    assert printed["rule"] == "batch-linear" and printed["evidence"]["rule"] == "linear"
    assert printed["evidence"]["studied_factor"] == 8 and printed["evidence"]["inside"] is True
    assert len(printed["evidence"]["ranked"]) == len(BATCH_RULES)


def test_a_factor_outside_the_study_is_said_so(capsys):
    status, out = run(capsys, "--lr", "3e-3", "--batch-size", "32", "--to-batch-size", "1024")
    assert status == 0 and "rule: batch-linear (factor 32)" in out
    assert "WARNING: factor 32 lies outside the studied factors; the evidence is from ×8" in out
    status, out = run(capsys, "--lr", "3e-3", "--batch-size", "32", "--to-batch-size", "96")
    assert "note: factor 3 was not studied; the evidence is from ×4, the nearest" in out
    status, out = run(capsys, "--lr", "3e-3", "--batch-size", "32", "--to-batch-size", "16")
    assert "rule: batch-unchanged (factor 0.5)" in out


def test_the_recommendation_skips_a_rule_these_betas_cannot_take(capsys, monkeypatch):
    evidence = synthetic_evidence()
    for row in evidence["rows"]:
        row["relative"] = -1.0 if row["rule"] == "sqrt" else row["relative"]
    monkeypatch.setattr(transfer_module, "batch_evidence", lambda: evidence)
    status, out = run(capsys, "--lr", "3e-3", "--batch-size", "32", "--factor", "8")
    assert "rule: batch-sqrt" in out  # 8 * (1 - 0.9) <= 1: the best rule applies
    status, out = run(capsys, "--lr", "3e-3", "--batch-size", "32", "--factor", "16")
    assert status == 0 and "rule: batch-linear" in out  # 16 * 0.1 > 1: the next best


def test_rule_and_study_options_are_checked(capsys):
    refused(
        capsys, ["transfer", "--lr", "1e-3", "--factor", "2", "--rule", "sqrt"], "argument --rule: only for a batch"
    )
    refused(capsys, ["transfer", "--study"], "argument --out: required with --study")
    refused(capsys, ["transfer", "--factor", "2"], "argument --lr: required")


def test_lr_transfer_json_equals_the_library(capsys):
    status, out = run(
        capsys, "--lr", "1e-3", "--betas", "0.9", "0.999", "0", "0.99", "--factor", "4", "--steps", "1000", "--json"
    )
    assert status == 0
    printed = json.loads(out)
    expected = transfer_lr(1e-3, [(0.9, 0.999), (0.0, 0.99)], steps=1000, factor=4).to_dict()
    assert printed["target"] == json.loads(json.dumps(expected["target"]))
    assert printed["rule"] == "lr-exact" and printed["stable"] is True
    status, out = run(
        capsys, "--lr", "1e-3", "--to-lr", "4e-3", "--steps", "1000", "--betas", "0.9", "0.999", "0", "0.99", "--json"
    )
    assert json.loads(out)["target"] == printed["target"]


def test_unstable_target_is_reported_with_the_nearest_pair(capsys):
    status, out = run(capsys, "--lr", "1e-3", "--betas", "0.9", "0.815", "--factor", "0.1", "--rates", "paper")
    assert status == 0
    assert "OUTSIDE gamma > beta**2" in out and "nearest stable pair" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--lr", "1e-3", "--betas", "0.9", "--factor", "2"],
            "argument --betas: takes (beta, gamma) pairs, one per level: an even count of numbers, got 1",
        ),
        (
            ["--lr", "1e-3", "--betas", "0.9", "1", "--factor", "2"],
            "argument --betas: must be a number in [0, 1), got '1'",
        ),
        (
            ["--lr", "1e-3", "--batch-size", "32", "--to-batch-size", "64", "--to-lr", "1e-2"],
            "argument --to-lr: not allowed with a batch-size transfer",
        ),
        (["--lr", "1e-3", "--to-batch-size", "64"], "argument --to-batch-size: needs --batch-size"),
        (["--lr", "1e-3"], "argument --factor: give exactly one of --factor and --to-lr"),
        (
            ["--lr", "1e-3", "--factor", "2", "--to-lr", "1e-2"],
            "argument --factor: give exactly one of --factor and --to-lr",
        ),
        (["--lr", "1e-3", "--batch-size", "32"], "argument --factor: give exactly one of --factor and --to-batch-size"),
        (
            ["--lr", "1e-3", "--batch-size", "32", "--factor", "16", "--rule", "sqrt"],
            "argument --factor: the square-root rule needs "
            "factor * (1 - beta) <= 1 at every level; level 1 "
            "has beta = 0.9, so --factor must be <= 10, got 16",
        ),
        (
            ["--lr", "1e-3", "--batch-size", "32", "--to-batch-size", "512", "--rule", "sqrt"],
            "argument --to-batch-size: the square-root rule needs factor * (1 - beta) <= 1",
        ),
        (
            ["--lr", "1e-3", "--batch-size", "3", "--factor", "0.5"],
            "argument --factor: --batch-size * --factor must be a whole number in [1, 2**53], got 3 * 0.5 = 1.5",
        ),
        (
            ["--lr", "1e-3", "--batch-size", "0", "--factor", "2"],
            "argument --batch-size: must be an integer >= 1, got '0'",
        ),
        (["--lr", "1e-3", "--to-lr", "0"], "argument --to-lr: must be a positive finite number, got '0'"),
        (["--lr", "1e-3", "--factor", "nan"], "argument --factor: must be a positive finite number, got 'nan'"),
        (["--lr", "1e-3", "--factor", "2", "--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
        (
            ["--lr", "1e-3", "--factor", "2", "--weight-decay", "-1"],
            "argument --weight-decay: must be a finite number >= 0",
        ),
        (["--lr", "1e300", "--to-lr", "1e-300"], "argument --to-lr: --to-lr / --lr must be a positive finite number"),
        (
            ["--lr", "1e-3", "--factor", "1e-300"],
            "argument --factor: too small for float64: below 5.55e-14, level 1's "
            "gamma**factor (gamma = 0.999) rounds to 1; --factor must be >= 5.55e-14 "
            "for these betas, got 1e-300",
        ),
        (["--lr", "1e-3", "--factor", "1e-300", "--rates", "paper"], "argument --factor: too small for float64"),
        (
            ["--lr", "1e-3", "--to-lr", "1e-300"],
            "argument --to-lr: too small for float64: below 5.55e-14, level 1's "
            "gamma**factor (gamma = 0.999) rounds to 1; --to-lr / --lr must be >=",
        ),
        (
            ["--lr", "1e-3", "--batch-size", "32", "--factor", "1e-300", "--rule", "sqrt"],
            "argument --factor: too small for float64: below 5.56e-14, level 1's 1 - factor * (1 - gamma)",
        ),
        (
            ["--lr", "1e300", "--factor", "1e300"],
            "argument --factor: too large for float64: a new lr would overflow; "
            "--factor must be <= 1.8e+08 with --lr 1e+300, got 1e+300",
        ),
        (
            ["--lr", "1e-3", "--betas", "0", "0", "--factor", "1e-310", "--steps", "1000"],
            "argument --factor: too small for --steps 1000: steps / factor must stay <= 2**53",
        ),
        (
            ["--lr", "1e-300", "--betas", "0", "0", "--factor", "1e-30"],
            "argument --factor: --factor = 1e-30 makes the new lr 0 in float64; it must stay positive and finite",
        ),
    ],
)
def test_bad_arguments_are_one_line_naming_the_flag(capsys, argv, message):
    line = refused(capsys, ["transfer", *argv], message)
    assert not re.search(r"\b(batch_size|to_lr|to_batch_size|weight_decay)\b|factor=|beta must lie", line), line


@pytest.mark.parametrize("rates", ["exact", "paper"])
def test_the_smallest_factor_reported_is_accepted_and_a_smaller_one_is_not(capsys, rates):
    line = refused(capsys, ["transfer", "--lr", "1e-3", "--rates", rates, "--factor", "1e-300"], "--factor must be >=")
    smallest = float(re.search(r"must be >= (\S+) for these betas", line).group(1))
    status, out = run(capsys, "--lr", "1e-3", "--rates", rates, "--factor", repr(smallest), "--json")
    assert status == 0
    target = json.loads(out)["target"]
    assert all(0 <= decay < 1 for pair in target["betas"] for decay in pair)
    refused(
        capsys, ["transfer", "--lr", "1e-3", "--rates", rates, "--factor", repr(smallest / 2)], "--factor must be >="
    )


@pytest.mark.parametrize("lr", ["1e-300", "1e-3", "1e300"])
@pytest.mark.parametrize("factor", ["1e-300", "1e-20", "1e-9", "0.5", "8", "1e9", "1e300"])
@pytest.mark.parametrize(
    "mode",
    [
        [],
        ["--rates", "paper"],
        ["--batch-size", "32"],
        *(["--batch-size", "32", "--rule", rule] for rule in ("sqrt", "linear+half-life", "power-lines")),
        ["--betas", "0", "0"],
        ["--betas", "0", "0", "--batch-size", "2", "--steps", "1000", "--weight-decay", "1e-2"],
    ],
)
def test_every_answer_is_finite_or_a_one_line_error(capsys, lr, factor, mode):
    status = exit_status(["transfer", "--lr", lr, "--factor", factor, "--json", *mode])
    captured = capsys.readouterr()
    if status == 2:
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith("kadam transfer: error: argument --factor: ")
        return
    assert status == 0, captured.err
    printed = json.loads(captured.out)
    for settings in (printed["target"], *printed["alternatives"].values()):
        assert math.isfinite(settings["lr"]) and settings["lr"] > 0
        assert math.isfinite(settings["eps"]) and math.isfinite(settings["weight_decay"])
        assert all(0 <= decay < 1 for pair in settings["betas"] for decay in pair)


def test_a_boundary_pair_is_not_called_inside(capsys):
    status, out = run(capsys, "--lr", "1e-3", "--betas", "0", "0", "--factor", "2")
    assert status == 0
    line = next(line for line in out.splitlines() if line.startswith("stability:"))
    assert "inside gamma" not in line and "on the boundary gamma = beta**2" in line and "sign(gradient)" in line
    status, out = run(capsys, "--lr", "1e-3", "--betas", "0.9", "0.81", "--factor", "2")
    line = next(line for line in out.splitlines() if line.startswith("stability:"))
    assert "inside gamma" not in line and "WARNING" in line and "ON the boundary gamma = beta**2" in line
    status, out = run(capsys, "--lr", "1e-3", "--betas", "0.9", "0.999", "--factor", "2")
    assert "level 1 (0.81, 0.998001) inside gamma > beta**2" in out


def test_main_runs_it(capsys):
    assert main(["transfer", "--lr", "3e-3", "--batch-size", "32", "--to-batch-size", "256"]) == 0
    assert "rule: batch-linear" in capsys.readouterr().out


def test_without_packaged_evidence_a_named_rule_still_works(capsys, monkeypatch):
    def missing():
        raise ValueError("no measured evidence: kadam/transfer_evidence.json is missing from this installation")

    monkeypatch.setattr(transfer_module, "batch_evidence", missing)
    refused(capsys, ["transfer", "--lr", "1e-3", "--batch-size", "32", "--factor", "2"], "argument --rule: no measured")
    status, out = run(capsys, "--lr", "1e-3", "--batch-size", "32", "--factor", "2", "--rule", "sqrt")
    assert status == 0 and "rule: batch-sqrt" in out and "evidence:" not in out
