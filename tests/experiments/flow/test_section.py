"""Section 2 merges its per-(problem, k) accuracy cells only when they share every setting."""

import pytest

from kadam.experiments.flow.section import merge_accuracy


def _part(problem, k, lr=1e-3):
    return {
        "lr": lr,
        "steps": 10,
        "rates": "exact",
        "order": 1,
        "seed": 0,
        "bar": 0.01,
        "rows": [{"problem": problem, "k": k, "max_rel_error": 0.001 * k}],
    }


def test_merge_keeps_every_row_and_the_shared_settings():
    merged = merge_accuracy([_part("quadratic", 1), _part("logistic", 2)])
    assert [(row["problem"], row["k"]) for row in merged["rows"]] == [("quadratic", 1), ("logistic", 2)]
    assert merged["lr"] == 1e-3 and merged["bar"] == 0.01


def test_merge_refuses_parts_that_differ_in_a_setting():
    with pytest.raises(ValueError, match="differ in \\['lr'\\]"):
        merge_accuracy([_part("quadratic", 1), _part("logistic", 1, lr=2e-3)])


def test_quick_profile_measures_the_slope_on_logistic_regression_too():
    from kadam.experiments.flow.section import build_section
    from kadam.experiments.profiles import Settings

    cells = {cell.label: cell for cell in build_section(Settings("quick", "cpu", None)).cells}
    quadratic, logistic = cells["convergence quadratic"], cells["convergence logistic"]
    assert quadratic.kwargs["lrs"] == [4e-3, 2e-3, 1e-3, 4e-4]  # unchanged: its cached cell stays valid
    assert len(logistic.kwargs["lrs"]) >= 3 and set(logistic.kwargs["lrs"]) <= set(quadratic.kwargs["lrs"])
    assert logistic.kwargs["horizon"] == quadratic.kwargs["horizon"]


def _convergence(problem, slope, lrs):
    variants = ("exact/order1", "paper/order1", "exact/order2")
    return {
        "problem": problem,
        "horizon": 1.0,
        "k": 1,
        "seed": 0,
        "lrs": list(lrs),
        "per_lr": [
            {
                "lr": lr,
                "variants": {name: {"final_rel_error": lr**slope, "max_rel_error": lr**slope} for name in variants},
            }
            for lr in lrs
        ],
        "slopes": {name: {"final": slope + 0.01 * i, "max": slope} for i, name in enumerate(variants)},
    }


def test_the_section_reports_each_problems_slope_beside_the_others(tmp_path):
    from kadam.experiments.flow.section import _document

    row = {
        "max_rel_error": 0.001,
        "final_rel_error": 0.001,
        "min_cosine": 0.99,
        "passes": True,
        "simulate_seconds": 1.0,
        "discrete_seconds": 1.0,
        "error_curve": {"steps": [0, 1], "values": [1e-4, 1e-3]},
    }
    parts = [
        {**_part(problem, 1), "rows": [{**row, "problem": problem, "k": 1}]} for problem in ("quadratic", "logistic")
    ]
    convergences = [
        _convergence("quadratic", 1.04, (4e-3, 2e-3, 1e-3, 4e-4)),
        _convergence("logistic", 0.96, (4e-3, 2e-3, 1e-3)),
    ]
    document = _document(parts, convergences, [], tmp_path)
    slopes = dict(document.headline)["log–log slope of error vs η, first-order models (1 expected)"]
    assert slopes == "quadratic exact 1.04, paper 1.05; logistic exact 0.96, paper 0.97"
    table = next(table for table in document.tables if table.caption.startswith("Convergence in η"))
    assert {(row[0], row[1]) for row in table.rows} == {
        ("quadratic", "0.004, 0.002, 0.001, 0.0004"),
        ("logistic", "0.004, 0.002, 0.001"),
    }
    assert {figure.path.rsplit("/", 1)[-1] for figure in document.figures} >= {
        "flow_convergence_quadratic.png",
        "flow_convergence_logistic.png",
    }
    assert any(detail.startswith("logistic (η = 0.004, 0.002, 0.001)") for detail in document.details)


def test_warm_start_modified_equations_and_transformer_are_full_profile_cells_only():
    from kadam.experiments.flow.section import build_section
    from kadam.experiments.profiles import Settings

    labels = {
        profile: {cell.label for cell in build_section(Settings(profile, "cpu", None)).cells}
        for profile in ("quick", "full")
    }
    extras = {"warm start", "transformer problem", "modified equations quadratic", "modified equations logistic"}
    assert extras <= labels["full"] and not extras & labels["quick"]
    coupled = {"modified equations coupled", "modified equations coupled-from-rest"}
    assert coupled <= labels["quick"] and coupled <= labels["full"]


def _warm(problem, errors, **more):
    return {
        "problem": problem,
        "lr": 1e-3,
        "steps": 2000,
        "k": 1,
        "modified": False,
        "seed": 0,
        **more,
        "rows": [
            {"warm_start": s, "max_rel_error": e, "final_rel_error": e / 2, "gradient_evaluations": 100}
            for s, e in errors
        ],
    }


def _modified(problem, first, second, crossing=100.0):
    lrs = (4e-3, 2e-3, 1e-3)
    return {
        "problem": problem,
        "horizon": 1.0,
        "k": 1,
        "warm_start": 1,
        "seed": 0,
        "lrs": list(lrs),
        "per_lr": [
            {
                "lr": lr,
                "steps": round(1 / lr),
                "variants": {
                    "first_order": {"final_rel_error": lr**first},
                    "modified": {"final_rel_error": lr**second},
                },
                "first_zero_crossing": {"steps": crossing * 4e-3 / lr, "coordinate": 0, "within_10_steps": 0},
            }
            for lr in lrs
        ],
        "slopes": {"first_order": {"final": first, "max": first}, "modified": {"final": second, "max": second}},
    }


@pytest.mark.parametrize(
    "errors,slope,verdicts",
    [
        (((0, 0.06), (5, 0.008), (10, 0.004)), 2.01, ("not resolved at this budget", "confirmed")),
        (((0, 0.06), (10, 0.02), (50, 0.005)), 1.2, ("not resolved at this budget", "refuted")),
    ],
)
def test_the_extra_experiments_state_their_claims_from_the_numbers(tmp_path, errors, slope, verdicts):
    """The warm start runs one seed, so it cannot be resolved; the coupled problems are deterministic."""
    from kadam.experiments.flow.section import _document

    row = {
        "max_rel_error": 0.001,
        "final_rel_error": 0.001,
        "min_cosine": 0.99,
        "passes": True,
        "simulate_seconds": 1.0,
        "discrete_seconds": 1.0,
        "error_curve": {"steps": [0, 1], "values": [1e-4, 1e-3]},
    }
    parts = [{**_part("quadratic", 1), "rows": [{**row, "problem": "quadratic", "k": 1}]}]
    extras = {
        "warm_start": _warm("mlp", errors),
        "modified": [_modified("coupled", 1.0, slope)],
        "transformer": _warm("transformer", ((0, 0.03), (5, 0.01)), parameters=3000),
    }
    document = _document(parts, [_convergence("quadratic", 1.0, (4e-3, 2e-3))], [], tmp_path, extras)
    claims = {claim.text: claim for claim in document.claims}
    warm = claims[
        "After a warm start of ≤ 10 discrete steps the model tracks the mlp within 1% (η = 0.001, 2000 steps)"
    ]
    assert warm.verdict == verdicts[0] and warm.seeds == 1
    smooth = next(
        c for text, c in claims.items() if text.startswith("The O(η²) modified equations are second order where")
    )
    every = next(
        c for text, c in claims.items() if text.startswith("The O(η²) modified equations are second order on every")
    )
    assert smooth.verdict == every.verdict == verdicts[1] and smooth.seeds is None
    captions = [table.caption for table in document.tables]
    assert any(c.startswith("mlp: the model started after s discrete steps") for c in captions)
    assert any(c.startswith("tiny character transformer") and "3000 parameters" in c for c in captions)
    assert any(f"modified equations {slope:.2f}" in detail for detail in document.details)
    assert document.data["warm_start"]["rows"][0]["warm_start"] == 0
    tracking = next(c for c in document.claims if c.text.startswith("The continuous-time model tracks"))
    assert tracking.kind == "paper" and tracking.seeds == 1 and tracking.verdict == "not resolved at this budget"
    assert "the paper's transformer included" in tracking.evidence and tracking.criterion.startswith(
        "the project's bar"
    )


def test_the_tracking_claim_says_where_a_run_fails_and_reads_the_seeds(tmp_path):
    from kadam.experiments.flow.section import flow_claims

    def accuracy(final):
        curve = {"steps": [1, 50, 100, 200, 2000], "values": [0.06, 0.012, 0.015, 0.02, final]}
        return {
            "lr": 1e-3,
            "steps": 2000,
            "bar": 0.01,
            "rows": [
                {"problem": "mlp", "k": 1, "max_rel_error": 0.06, "final_rel_error": final, "error_curve": curve},
                {
                    "problem": "quadratic",
                    "k": 1,
                    "max_rel_error": 0.001,
                    "final_rel_error": 0.001,
                    "error_curve": curve,
                },
            ],
        }

    restart = {"problem": "mlp", "k": 1, "rows": [{"restart_step": 100, "max_rel_error": 0.0005}]}
    one = flow_claims([accuracy(0.049)], [], restart)[0]
    assert one.verdict == "not resolved at this budget" and one.seeds == 1
    assert "mlp k=1: above 1% from step 1, 1.5% at step 100, 4.9% at the end" in one.evidence
    assert "restarted from the discrete state at step 100: max 0.05%" in one.evidence
    assert "not run in this profile" in one.evidence
    three = flow_claims([accuracy(0.049), accuracy(0.05), accuracy(0.048)], [], restart)[0]
    assert three.verdict == "refuted" and three.seeds == 3


def test_the_modified_equations_claim_separates_problems_whose_gradient_crosses_zero_early(tmp_path):
    """Second order on the smooth problem, first order where a coordinate crosses zero at once: the claim
    under the derivation's assumption holds, the claim over every problem is refuted, the finding says why."""
    from kadam.experiments.flow.section import _document

    row = {
        "max_rel_error": 0.001,
        "final_rel_error": 0.001,
        "min_cosine": 0.99,
        "passes": True,
        "simulate_seconds": 1.0,
        "discrete_seconds": 1.0,
        "error_curve": {"steps": [0, 1], "values": [1e-4, 1e-3]},
    }
    parts = [{**_part("quadratic", 1), "rows": [{**row, "problem": "quadratic", "k": 1}]}]
    extras = {
        "modified": [
            _modified("coupled", 0.95, 2.1, crossing=250.0),
            _modified("coupled-from-rest", 0.5, 0.65, crossing=0.0),
            _modified("quadratic", 0.97, 1.73, crossing=9.0),
        ]
    }
    document = _document(parts, [_convergence("quadratic", 1.0, (4e-3, 2e-3))], [], tmp_path, extras)
    claims = {claim.text: claim for claim in document.claims}
    smooth = next(
        c for text, c in claims.items() if text.startswith("The O(η²) modified equations are second order where")
    )
    every = next(
        c for text, c in claims.items() if text.startswith("The O(η²) modified equations are second order on every")
    )
    assert smooth.verdict == "confirmed" and "coupled 2.10" in smooth.evidence and "quadratic" not in smooth.evidence
    assert every.verdict == "refuted" and "coupled-from-rest 0.65 (first zero crossing after 0 steps)" in every.evidence
    assert every.seeds is None  # decided by the deterministic problems alone
    crossing = [detail for detail in document.details if detail.startswith("coupled-from-rest:")]
    assert len(crossing) == 1 and "within the moments' memory" in crossing[0]
    assert not any("within the moments' memory" in f for f in document.details if f.startswith("coupled:"))
    table = next(t for t in document.tables if t.caption.startswith("quadratic: first-order model against"))
    assert list(table.columns)[-2:] == ["steps to first zero crossing", "coordinates crossing within 10 steps"]
