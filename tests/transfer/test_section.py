"""The transfer slice: cells are deterministic and well-formed, and the smoke section writes its document."""

from __future__ import annotations

import json

import pytest

from kadam.experiments.profiles import PROFILE_SIZES, Settings
from kadam.experiments.transfer import analysis
from kadam.experiments.transfer.protocol import lr_transfer_cell
from kadam.experiments.transfer.section import build_section
from kadam.transfer import BATCH_RULES


def test_lr_cell_against_its_definition():
    result = lr_transfer_cell("quadratic", 4e-3, [2], 0.2)
    assert result["steps"] == 50
    row = result["rows"][0]
    assert row["variants"]["exact"]["betas"] == pytest.approx([0.9**2, 0.999**2])
    assert row["variants"]["naive"]["betas"] == [0.9, 0.999]
    assert row["variants"]["exact"]["loss_gap"] < row["variants"]["naive"]["loss_gap"]
    with pytest.raises(ValueError, match="divisible by every factor"):
        lr_transfer_cell("quadratic", 4e-3, [3], 0.2)


def test_profiles_divide_evenly():
    for name, sizes in PROFILE_SIZES.items():
        config = sizes.transfer
        for lr in config.lr_values:
            steps = round(config.horizon / lr)
            assert all(steps % factor == 0 for factor in config.lr_factors), name
        batch = config.batch
        for regime in batch.regimes:
            for factor in (1, *batch.factors):
                assert analysis.steps_of(batch, factor, regime) * analysis.batch_of(batch, factor) in (
                    batch.samples,
                    batch.samples * factor,
                )
        base_steps = analysis.steps_of(batch, 1, "samples")
        assert all(base_steps % c == 0 for c in batch.lr_factors), name


def test_real_profiles_meet_the_study_design():
    """The quick and full profiles sweep >= 8 learning rates over >= two decades and evaluate on >= 3 seeds."""
    for name in ("quick", "full"):
        batch = PROFILE_SIZES[name].transfer.batch
        assert batch.lr_points >= 8 and batch.lr_high / batch.lr_low >= 100, name
        assert len(batch.evaluation_seeds) >= 3 and not set(batch.evaluation_seeds) & set(batch.tuning_seeds), name
    full = PROFILE_SIZES["full"].transfer.batch
    assert set(full.factors) == {0.25, 0.5, 2, 4, 8} and len(full.workloads) >= 3


def test_smoke_section_computes_and_writes_its_document(tmp_path):
    section = build_section(Settings(profile="smoke", device="cpu", seeds=None))
    assert section.name == "transfer" and json.dumps(section.configuration)
    results = {cell.key: cell.function(**cell.kwargs) for cell in section.cells}
    followup = section.followup(results)
    assert followup and not {cell.key for cell in followup} & set(results)
    results.update({cell.key: cell.function(**cell.kwargs) for cell in followup})
    document = section.finish(results, tmp_path)
    assert len(document.tables) == 7 and document.findings
    evidence = document.data["batch_study"]
    assert {row["rule"] for row in evidence["rows"]} == set(BATCH_RULES)
    assert [row["factor"] for row in evidence["recommended"]] == [0.5, 2]
    assert all((tmp_path / figure.path.split("/")[-1]).exists() for figure in document.figures)
    json.dumps(document.data)


def _row(rule, verdict, relative=0.0, regime="samples"):
    return {"rule": rule, "regime": regime, "verdict": verdict, "relative": relative, "factor": 2, "workload": "w"}


def test_transfer_claims_follow_the_measured_points():
    from kadam.experiments.transfer.section import transfer_claims

    def lr(*pairs):
        return [{"problem": "q", "lr": 1e-3, "factor": i + 2, "exact": e, "naive": n} for i, (e, n) in enumerate(pairs)]

    evidence = {
        "regimes": ["samples"],
        "evaluation_seeds": 3,
        "rows": [
            _row("sqrt", "holds"),
            _row("sqrt", "holds"),
            _row("linear", "fails"),
            _row("linear", "fails"),
            _row("unchanged", "fails"),
            _row("unchanged", "holds"),
            _row("unchanged", "holds"),
        ],
        "lr_transfer": [
            {"variant": "exact", "verdict": "holds"},
            {"variant": "naive", "verdict": "fails"},
        ],
    }
    claims = transfer_claims(lr((0.01, 0.1), (0.02, 0.2)), evidence)
    verdicts = {c.text.split(",")[0]: c.verdict for c in claims}
    assert claims[0].verdict == "confirmed" and "2 of 2" in claims[0].evidence and "2.00%" in claims[0].evidence
    assert claims[1].verdict == "confirmed" and "the same betas: within at 0" in claims[1].evidence
    assert verdicts["Batch-size rule sqrt"] == "confirmed"
    assert verdicts["Batch-size rule linear"] == "refuted"
    assert verdicts["Batch-size rule unchanged"] == "not resolved at this budget"  # 1 fail of 3: neither
    assert claims[0].kind == "paper" and all(c.seeds == 3 for c in claims[1:])
    few = transfer_claims([], {**evidence, "evaluation_seeds": 2})
    assert {c.verdict for c in few} == {"not resolved at this budget"}  # fewer than 3 seeds decide nothing
    assert transfer_claims(lr((0.3, 0.1), (0.3, 0.2), (0.01, 0.2)), {})[0].verdict == "refuted"
