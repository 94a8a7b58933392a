"""The transfer slice: cells are deterministic and well-formed, and the smoke section writes its document."""

from __future__ import annotations

import json

import pytest

from kadam.experiments.profiles import PROFILE_SIZES, Settings
from kadam.experiments.transfer.protocol import batch_transfer_cell, lr_transfer_cell
from kadam.experiments.transfer.section import build_section


def test_lr_cell_against_its_definition():
    result = lr_transfer_cell("quadratic", 4e-3, [2], 0.2)
    assert result["steps"] == 50
    row = result["rows"][0]
    assert row["variants"]["exact"]["betas"] == pytest.approx([0.9**2, 0.999**2])
    assert row["variants"]["naive"]["betas"] == [0.9, 0.999]
    assert row["variants"]["exact"]["loss_gap"] < row["variants"]["naive"]["loss_gap"]
    with pytest.raises(ValueError, match="divisible by every factor"):
        lr_transfer_cell("quadratic", 4e-3, [3], 0.2)


def test_batch_cell_is_deterministic_and_uses_the_rule():
    kwargs = dict(
        task="digits-cnn", base_batch=8, base_lr=3e-3, samples=8 * 2 * 2, checkpoints=2, task_sizes={"channels": 2}
    )
    first = batch_transfer_cell(**kwargs, factor=2, rule="sqrt", seed=3)
    assert first == batch_transfer_cell(**kwargs, factor=2, rule="sqrt", seed=3)
    assert (first["batch"], first["steps"], first["samples_seen"]) == (16, 2, [16, 32])
    assert first["lr"] == pytest.approx(3e-3 * 2**0.5) and first["betas"] == pytest.approx([0.8, 0.998])
    assert batch_transfer_cell(**kwargs, factor=2, rule="unchanged", seed=3)["lr"] == 3e-3
    with pytest.raises(ValueError, match="samples must be divisible"):
        batch_transfer_cell(**{**kwargs, "samples": 30}, factor=2)
    with pytest.raises(ValueError, match="rule must be one of"):
        batch_transfer_cell(**kwargs, factor=2, rule="cubic")


def test_profiles_divide_evenly():
    for name, sizes in PROFILE_SIZES.items():
        config = sizes.transfer
        for lr in config.lr_values:
            steps = round(config.horizon / lr)
            assert all(steps % factor == 0 for factor in config.lr_factors), name
        assert all(config.samples % (config.base_batch * f * config.checkpoints) == 0 for f in config.batch_factors)


def test_smoke_section_computes_and_writes_its_document(tmp_path):
    section = build_section(Settings(profile="smoke", device="cpu", seeds=None))
    assert section.name == "transfer" and json.dumps(section.configuration)
    results = {}
    for cell in section.cells:
        results[cell.key] = cell.function(**cell.kwargs)
    document = section.finish(results, tmp_path)
    assert len(document.tables) == 3 and document.findings
    assert all((tmp_path / figure.path.split("/")[-1]).exists() for figure in document.figures)
    json.dumps(document.data)


def test_transfer_claims_follow_the_measured_points():
    from kadam.experiments.transfer.section import transfer_claims

    def lr(*pairs):
        return [{"problem": "q", "lr": 1e-3, "factor": i + 2, "exact": e, "naive": n} for i, (e, n) in enumerate(pairs)]

    def batch(*rows):
        return [
            {"task": "t", "factor": 2 ** (i + 1), "holds": list(holds), "best": best}
            for i, (holds, best) in enumerate(rows)
        ]

    claims = transfer_claims(lr((0.01, 0.1), (0.02, 0.2)), batch((["sqrt"], "sqrt"), (["sqrt", "unchanged"], "sqrt")))
    assert [c.verdict for c in claims] == ["confirmed", "confirmed", "refuted"]
    assert "2 of 2" in claims[0].evidence and "2.00%" in claims[0].evidence
    claims = transfer_claims(
        lr((0.3, 0.1), (0.3, 0.2), (0.01, 0.2)),
        batch((["linear"], "linear"), (["linear"], "linear"), (["sqrt"], "sqrt")),
    )
    assert [c.verdict for c in claims] == ["refuted", "refuted", "not resolved at this budget"]
    assert "the closest rule at 2" in claims[2].evidence
    assert transfer_claims([], []) == []
