"""Section 2 merges its per-(problem, k) accuracy cells only when they share every setting."""

import pytest

from kadam.experiments.flow.section import merge_accuracy


def _part(problem, k, lr=1e-3):
    return {"lr": lr, "steps": 10, "rates": "exact", "order": 1, "seed": 0, "bar": 0.01,
            "rows": [{"problem": problem, "k": k, "max_rel_error": 0.001 * k}]}


def test_merge_keeps_every_row_and_the_shared_settings():
    merged = merge_accuracy([_part("quadratic", 1), _part("logistic", 2)])
    assert [(row["problem"], row["k"]) for row in merged["rows"]] == [("quadratic", 1), ("logistic", 2)]
    assert merged["lr"] == 1e-3 and merged["bar"] == 0.01


def test_merge_refuses_parts_that_differ_in_a_setting():
    with pytest.raises(ValueError, match="differ in \\['lr'\\]"):
        merge_accuracy([_part("quadratic", 1), _part("logistic", 1, lr=2e-3)])
