"""The preregistered confirmatory study: its configuration meets the bar it was declared against, its held-out
text is another one, and its one-sided test with Holm over the workloads decides as declared."""

import json

import pytest
from scipy import stats

from kadam.experiments.comparison.analysis import minimum_detectable_effect, one_sided_family
from kadam.experiments.comparison.confirmatory import CONFIRMATORY, HYPOTHESIS
from kadam.experiments.comparison.section import (
    committed_confirmatory_answer,
    comparison_config,
    preregistered_test,
)
from kadam.experiments.profiles import profile_sizes
from kadam.experiments.workloads import char_corpus
from kadam.experiments.workloads.stdlib_docs import build_docs_gpt_task, docstring_corpus


def test_the_confirmatory_configuration_meets_its_declaration():
    config = comparison_config("confirmatory")
    assert config is CONFIRMATORY and config.one_sided_arm == "kadam2" and HYPOTHESIS.startswith("KAdam k = 2")
    exploratory = {w.name for w in profile_sizes("study").comparison.workloads}
    assert len(config.workloads) >= 3 and not exploratory & {w.name for w in config.workloads}
    assert config.seeds >= 8 and config.refinement_factors
    for workload in config.workloads:
        assert workload.steps >= 1500 and {"adamw", "kadam2"} <= set(workload.arms)
        assert workload.arms == config.workloads[0].arms  # one budget for every arm on every workload
    shapes = {(w.size_kwargs["width"], w.size_kwargs["layers"], w.size_kwargs["context"]) for w in config.workloads}
    assert len(shapes) == 3 and all(width >= 128 for width, _, _ in shapes)


def test_the_held_out_text_is_not_the_exploratory_one():
    text, topics = docstring_corpus(), char_corpus()
    assert len(text) >= 1_800_000
    probe = topics[5000:5200]  # a passage of the CPython help topics
    assert probe not in text
    assert docstring_corpus() == text  # deterministic
    task = build_docs_gpt_task(corpus_chars=20_000, context=16, width=16, heads=2, layers=1, evaluation_windows=8)
    assert task.name == "docs-gpt-wide" and task.splits["test"].inputs.shape == (8, 16)
    with pytest.raises(ValueError, match="corpus_chars must be at most"):
        build_docs_gpt_task(corpus_chars=10**9)


def _analysis(rows):
    return {
        "workloads": {
            name: {"search": {"versus_reference": {"kadam2": {"n": 8, "mean": mean, "std": std}}}}
            for name, mean, std in rows
        }
    }


def test_one_sided_test_rejects_by_holm_over_the_workloads():
    test = one_sided_family(_analysis([("a", -0.05, 0.02), ("b", -0.05, 0.02), ("c", -0.05, 0.02)]), "kadam2")
    p = float(stats.t.cdf(-0.05 / (0.02 / 8**0.5), 7))
    assert [t["p_one_sided"] for t in test["tests"]] == pytest.approx([p] * 3)
    assert [t["p_holm"] for t in test["tests"]] == pytest.approx([3 * p] * 3)
    assert test["verdict"] == "confirmed" and preregistered_test(test).verdict == "confirmed"
    upper = -0.05 + stats.t.ppf(1 - 0.05 / 3, 7) * 0.02 / 8**0.5
    assert test["tests"][0]["upper_bound"] == pytest.approx(upper) and upper < 0


def test_one_sided_test_partly_supported_and_worse():
    test = one_sided_family(_analysis([("a", -0.05, 0.02), ("b", 0.0, 0.02), ("c", 0.06, 0.02)]), "kadam2")
    assert [t["rejects"] for t in test["tests"]] == [True, False, False]
    assert [t["worse"] for t in test["tests"]] == [False, False, True]
    assert test["verdict"] == "partly supported" and preregistered_test(test).verdict == "refuted"
    unresolved = one_sided_family(_analysis([("a", -0.001, 0.02), ("b", 0.001, 0.02), ("c", 0.0, 0.02)]), "kadam2")
    assert unresolved["verdict"] == "not confirmed"
    assert preregistered_test(unresolved).verdict == "not resolved at this budget"


def test_one_sided_detectable_difference_has_the_declared_power():
    mde = minimum_detectable_effect(0.015, 8, 0.05, 0.8, family_size=3, one_sided=True)["exact"]
    critical = stats.t.ppf(1 - 0.05 / 3, 7)
    assert stats.nct.sf(critical, 7, mde * 8**0.5 / 0.015) == pytest.approx(0.8, abs=1e-6)
    assert mde < minimum_detectable_effect(0.015, 8, 0.05, 0.8, family_size=3)["exact"]  # one tail: smaller


def test_the_committed_answer_reads_the_test_from_results_json(tmp_path):
    test = one_sided_family(_analysis([("a", -0.05, 0.02), ("b", 0.0, 0.02), ("c", 0.06, 0.02)]), "kadam2")
    assert committed_confirmatory_answer(tmp_path) is None  # no runs committed yet
    results = {"command": "kadam compare --study --profile confirmatory", "sections": {"comparison": {"data": {}}}}
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert committed_confirmatory_answer(tmp_path) is None  # a report without the preregistered test
    results["sections"]["comparison"]["data"]["preregistered_test"] = test
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    answer = committed_confirmatory_answer(tmp_path)
    assert answer["verdict"] == "refuted" and answer["command"] == results["command"]
    assert [row["workload"] for row in answer["rows"]] == ["a", "b", "c"]
    assert [row["mean"] for row in answer["rows"]] == pytest.approx([-0.05, 0.0, 0.06])
    assert all(row["low"] < row["mean"] < row["high"] and row["seeds"] == 8 for row in answer["rows"])
