"""The normalization section's claims: each verdict follows synthetic numbers on both sides of its rule, reads the
interval over seeds (never one seed's value), compares 2-Adam with the seed-to-seed control at the corrected step
size, and credits the corrected equilibrium to Kosson et al. 2024."""

from __future__ import annotations

import pytest

from kadam.experiments.normalization.section import EQUIVALENCE_MARGIN, NORM_TOLERANCE, normalization_claims

EXACT = {"max_direction_error": 1e-14, "steps": 200}


def _walks(corrected, orthogonal):
    """One random-walk result per seed: ``corrected[s]`` / ``orthogonal[s]`` are that seed's norm errors (one β)."""
    return [
        {
            "by_beta": [
                {
                    "beta": 0.9,
                    "measured_norm": 1.0,
                    "measured_angular_update": 0.01,
                    "corrected_norm_error": c,
                    "orthogonal_norm_error": o,
                    "corrected_angular_error": c,
                    "orthogonal_angular_error": o,
                }
            ]
        }
        for c, o in zip(corrected, orthogonal)
    ]


def _norm_runs(corrected_a_priori, orthogonal_a_priori, replay=0.01, equilibrated=True):
    """One AdamW digits run per seed; the a-priori errors are (predicted / measured − 1) of that seed."""
    return [
        {
            "task": "digits-bn",
            "optimizer": "adamw",
            "weight_decay": 0.1,
            "seed": seed,
            "equilibrated": equilibrated,
            "relaxation_times_run": 8.0 if equilibrated else 0.8,
            "layers": [
                {
                    "name": "hidden.0",
                    "measured_norm": 2.0,
                    "corrected_equilibrium_norm": 2.0 * (1 + c),
                    "orthogonal_equilibrium_norm": 2.0 * (1 + o),
                    "corrected_norm_error": replay,
                    "orthogonal_norm_error": -0.3,
                    "measured_update_sq_over_d": 0.5,
                    "noise_update_sq_over_d": 1.0,
                }
            ],
        }
        for seed, (c, o) in enumerate(zip(corrected_a_priori, orthogonal_a_priori))
    ]


def _networks(corrected, control, uncorrected):
    """One LayerNorm MLP result per seed: final cosines with AdamW of each copy (one β > 0, one layer)."""
    copies = ("adamw", "sphere", "sphere_corrected", "control")
    return [
        {
            "task": "digits-ln",
            "seed": seed,
            "configs": [
                {
                    "beta": 0.9,
                    "step_scale": 0.23,
                    "copies": list(copies),
                    "layers": [
                        {
                            "sphere": {"final_cosine": u, "angular_update_ratio": 4.0},
                            "sphere_corrected": {"final_cosine": c, "angular_update_ratio": 1.0},
                            "control": {"final_cosine": k, "angular_update_ratio": 1.0},
                        }
                    ],
                    "losses": {copy: {"diverged": False} for copy in copies},
                    "test_accuracy": {copy: 0.9 for copy in copies},
                }
            ],
        }
        for seed, (c, k, u) in enumerate(zip(corrected, control, uncorrected))
    ]


GOOD_WALK = _walks([0.01, -0.02, 0.0], [-0.4, -0.42, -0.41])
GOOD_RUNS = _norm_runs([0.02, -0.01, 0.03], [-0.5, -0.52, -0.49])
GOOD_NETWORK = _networks([0.80, 0.82, 0.79], [0.81, 0.80, 0.83], [0.1, 0.12, 0.08])


def _by_text(claims):
    def find(words):
        return next(claim for claim in claims if words in claim.text)

    return {
        "exact": find("unit sphere when level 1 is a normalized gradient"),
        "orthogonal": find("orthogonal equilibrium norm"),
        "corrected": find("momentum-corrected"),
        "replay": find("Driven by the measured update norms"),
        "walk": find("random walk"),
        "network": find("Adam + normalization ≈ 2-Adam"),
    }


def test_every_row_has_its_kind_criterion_and_seeds_and_the_correction_is_credited():
    claims = _by_text(normalization_claims(GOOD_WALK, EXACT, GOOD_NETWORK, GOOD_RUNS))
    assert claims["exact"].kind == "exactness" and claims["exact"].verdict == "confirmed"
    assert "1.0e-14" in claims["exact"].evidence and "1e-08" in claims["exact"].criterion
    assert claims["orthogonal"].kind == "paper" and claims["network"].kind == "paper"
    assert claims["corrected"].kind == "project" and "Kosson et al. 2024" in claims["corrected"].text
    for name in ("orthogonal", "corrected", "replay", "walk", "network"):
        assert claims[name].criterion and claims[name].seeds == 3, name
    assert {name: claims[name].verdict for name in ("orthogonal", "corrected", "replay", "walk", "network")} == {
        "orthogonal": "refuted",  # −50%: the interval lies wholly outside ±10%
        "corrected": "confirmed",
        "replay": "confirmed",
        "walk": "confirmed",
        "network": "confirmed",  # 2-Adam at the corrected step ends as close to AdamW as a second AdamW run
    }


def test_a_broken_identity_is_reported_as_a_failed_exactness_check():
    claims = _by_text(normalization_claims(GOOD_WALK, {**EXACT, "max_direction_error": 1e-3}, GOOD_NETWORK, GOOD_RUNS))
    assert claims["exact"].verdict == "refuted" and claims["exact"].kind == "exactness"


def test_a_wide_interval_over_seeds_resolves_nothing_even_when_the_mean_is_right():
    wide = _norm_runs([0.0, 0.25, -0.25], [0.0, 0.25, -0.25])  # mean 0, the interval reaches past ±10%
    claims = _by_text(normalization_claims(GOOD_WALK, EXACT, GOOD_NETWORK, wide))
    assert claims["corrected"].verdict == claims["orthogonal"].verdict == "not resolved at this budget"


def test_fewer_than_three_seeds_is_not_resolved_at_this_budget():
    claims = _by_text(normalization_claims(GOOD_WALK[:2], EXACT, GOOD_NETWORK[:2], GOOD_RUNS[:2]))
    for name in ("orthogonal", "corrected", "replay", "walk", "network"):
        assert claims[name].verdict == "not resolved at this budget", name
        assert claims[name].seeds == 2


def test_runs_shorter_than_their_relaxation_time_are_not_tested_against_an_equilibrium():
    short = _norm_runs([0.02, -0.01, 0.03], [-0.5, -0.52, -0.49], equilibrated=False)
    claims = _by_text(normalization_claims(GOOD_WALK, EXACT, GOOD_NETWORK, short))
    for name in ("orthogonal", "corrected"):
        assert claims[name].verdict == "not resolved at this budget"
        assert "relaxation times" in claims[name].evidence
    assert claims["replay"].verdict == "confirmed"  # the replay does not need an equilibrium


@pytest.mark.parametrize(
    ("corrected", "verdict"),
    [
        ([0.80, 0.82, 0.79], "confirmed"),
        ([0.30, 0.35, 0.32], "refuted"),  # the whole interval of Δ lies below −margin
        ([0.80, 0.40, 0.79], "not resolved at this budget"),
    ],
)
def test_the_meta_adaptive_link_is_read_against_the_seed_to_seed_control(corrected, verdict):
    claims = _by_text(
        normalization_claims(GOOD_WALK, EXACT, _networks(corrected, [0.81, 0.80, 0.83], [0.1] * 3), GOOD_RUNS)
    )
    assert claims["network"].verdict == verdict
    assert "control" in claims["network"].evidence and "uncorrected 2-Adam" in claims["network"].evidence
    assert f"{EQUIVALENCE_MARGIN:g}" in claims["network"].criterion and "1/√F" in claims["network"].criterion


def test_a_low_cosine_that_the_control_shares_does_not_refute_the_link():
    # AdamW runs that differ only in batch order end far apart too: the low cosine is the control's level
    low = _networks([0.30, 0.33, 0.31], [0.31, 0.30, 0.32], [0.05, 0.04, 0.06])
    assert _by_text(normalization_claims(GOOD_WALK, EXACT, low, GOOD_RUNS))["network"].verdict == "confirmed"


def test_the_random_walk_row_fails_when_the_corrected_norm_misses():
    walk = _walks([0.3, 0.32, 0.29], [-0.4, -0.42, -0.41])
    claims = _by_text(normalization_claims(walk, EXACT, GOOD_NETWORK, GOOD_RUNS))
    assert claims["walk"].verdict == "refuted" and f"±{NORM_TOLERANCE:.0%}" in claims["walk"].criterion


def _network_with_curves(cosines, sphere_losses):
    steps = [10 * (i + 1) for i in range(len(cosines))]
    curve = {"steps": steps, "values": cosines}
    flat = {"curve": {"steps": steps, "values": [0.1] * len(steps)}}
    return {
        "configs": [
            {
                "beta": 0.0,
                "copies": ["adamw", "sphere", "control"],
                "layers": [
                    {
                        "sphere": {"cosine_curve": curve},
                        "control": {"cosine_curve": {**curve, "values": [0.9] * len(steps)}},
                    }
                ],
                "losses": {
                    "adamw": flat,
                    "control": flat,
                    "sphere": {"curve": {"steps": steps, "values": sphere_losses}},
                },
            }
        ]
    }


def test_the_meta_adaptive_caption_names_the_blow_up_behind_the_largest_fall_of_a_cosine():
    from kadam.experiments.normalization.section import _drop_text, _largest_drop

    drop = _largest_drop(_network_with_curves([0.9, 0.8, 0.5], [0.01, 0.01, 3.0]))
    assert (drop["step"], drop["copy"], drop["last"]) == (30, "sphere", True)
    text = _drop_text(drop)
    assert "0.30 at step 30 (the last record)" in text and "2-Adam from 0.01 to 3" in text and "blow-up" in text
    quiet = _drop_text(_largest_drop(_network_with_curves([0.9, 0.8, 0.5], [0.01, 0.01, 0.01])))
    assert "no jump of any copy's training loss" in quiet
    assert _drop_text(_largest_drop(_network_with_curves([0.9, 0.88, 0.86], [0.01, 0.01, 3.0]))) == ""
