"""Section 1 of the report: the stability of (β, γ) (THEORY §2, §3, §5).

Cells: the switch-off protocol (one cell), the training protocol (one cell per learning rate and seed, over
:func:`~kadam.experiments.stability.protocol.protocol_grid`), and the stability-margin runs (one cell per
learning rate and seed, :func:`~kadam.experiments.stability.protocol.margin_runs`). The criterion that classifies
a training run is stated in the method, before any number; every verdict reads an interval over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kadam.experiments.cells import Cell
from kadam.experiments.profiles import Settings, plain, profile_sizes
from kadam.experiments.report import MIN_SEEDS, Claim, SectionDocument, Table, budget_verdict, format_number
from kadam.experiments.sections import Section, draw_figure, p_value_text
from kadam.experiments.stability import plots
from kadam.experiments.stability.analysis import (
    AGREEMENT_BAR,
    RATE_FACTOR,
    EtaTrend,
    agreement_verdict,
    growth_rates,
    growth_verdict,
    margin_analysis,
    margin_verdict_rule,
    region_versus_harm,
    summarize_training_protocol,
)
from kadam.experiments.stability.protocol import (
    CRITERION,
    DIVERGENCE_FACTOR,
    GROWTH_BLOCKS,
    GROWTH_CONFIDENCE,
    GROWTH_FACTOR,
    REGIONS,
    margin_runs,
    protocol_grid,
    region_of,
    switch_off_experiment,
    training_protocol,
)

__all__ = ["TREND_SENTENCES", "build_section", "interval_text", "make_claim", "stability_claims"]

TITLE = "Stability of (β, γ)"
UNRESOLVED = "not resolved at this budget"

TREND_SENTENCES: Mapping[EtaTrend, str] = {
    "none": "the same count at every η of this run",
    "widens": "fewer as η shrinks, the direction the paper's reviewers observed",
    "narrows": "more as η shrinks, against the direction the paper's reviewers observed",
    "not monotone": "not monotone in η.",
}
"""The prose for each :func:`~kadam.experiments.stability.analysis.eta_trend` verdict."""


def make_claim(
    text: str, verdict: str, evidence: str, kind: str, *, seeds: int | None = None, criterion: str = ""
) -> Claim:
    """A :class:`Claim` of ``kind`` "exactness", "paper" or "project" (whose claim it is goes to ``source``).

    A measured claim (not "exactness") resting on fewer than :data:`~kadam.experiments.report.MIN_SEEDS` seeds
    reads "not resolved at this budget" whatever ``verdict`` says (:func:`~kadam.experiments.report.budget_verdict`);
    an exactness check involves no seed."""
    measured = kind != "exactness"
    return Claim(
        text,
        budget_verdict(verdict, seeds) if measured else verdict,  # type: ignore[arg-type]
        evidence,
        source="paper" if kind == "paper" else "project",
        kind=kind,  # type: ignore[arg-type]
        criterion=criterion,
        seeds=seeds if measured else None,
    )


def interval_text(summary: Mapping[str, Any], digits: int = 2, percent: bool = False) -> str:
    """A mean and its interval over seeds: "93% [80%, 100%]" or "0.0021 [−0.0010, 0.0052]"; "—" when empty."""

    def number(value: float) -> str:
        return f"{value:.0%}" if percent else format_number(value, digits)

    if summary["mean"] is None:
        return "—"
    if summary["low"] is None:
        return f"{number(summary['mean'])} (no interval: one seed)"
    return f"{number(summary['mean'])} [{number(summary['low'])}, {number(summary['high'])}]"


_AGREEMENT_RULE = (
    f"confirmed if the agreement's interval lies at or above {AGREEMENT_BAR:.0%} at every η; refuted "
    f"if its upper end is below {AGREEMENT_BAR:.0%} at some η"
)


def _agreement_evidence(merged: Mapping[str, Any], name: str) -> str:
    return (
        "agreement with the criterion [95% interval over the runs], late phase: "
        + "; ".join(
            f"η = {e['learning_rate']:g}: {interval_text(e['intervals'][f'late_agreement_{name}'], percent=True)}"
            for e in merged["per_learning_rate"]
        )
        + "; whole run: "
        + ", ".join(f"{e[f'agreement_{name}']:.0%}" for e in merged["per_learning_rate"])
    )


def stability_claims(
    switch: Mapping[str, Any],
    merged: Mapping[str, Any],
    growth: Mapping[str, Any],
    margin: Mapping[str, Any],
    harm: Mapping[str, Any],
    seeds: int | None = None,
    margin_seeds: int | None = None,
) -> list[Claim]:
    """The section's claims, each verdict chosen by this run's intervals over seeds (THEORY §2, §3, §5).

    ``seeds`` / ``margin_seeds``: how many seeds the training protocol's / the margin runs' verdicts rest on."""
    k1 = sum(len(row["betas"]) == 1 for row in switch["rows"])
    claims = [
        make_claim(
            "With the gradient switched off, the optimizer's update grows or decays at exactly ln β − ½ ln γ per step "
            "(THEORY §2; the real KAdam code, no training)",
            "confirmed" if switch["all_within_tolerance"] else "refuted",
            f"{k1} k = 1 points on both sides of γ = β² and {len(switch['rows']) - k1} k = 2 configurations; largest "
            f"|measured − predicted| slope {format_number(switch['max_abs_error'], 2)} per step",
            "exactness",
            criterion="every point within 2% of the predicted slope + 1e-3 per step",
        )
    ]
    ratio = "—" if growth["largest_ratio"] is None else format_number(growth["largest_ratio"], 2)
    claims.append(
        make_claim(
            "Outside the stable region the updates grow exponentially at the predicted rate ln β − ½ ln γ in training",
            growth["verdict"],
            f"late-phase slope of ln‖u_n‖∞ over seeds: {growth['too_slow']} of {growth['points']} (point, η) outside "
            f"γ = β² grow slower than half the predicted rate at the interval's upper end, {growth['match']} lie within a "
            f"factor {RATE_FACTOR:g} of it; largest measured/predicted ratio {ratio}",
            "paper",
            seeds=seeds,
            criterion=f"confirmed if every point's interval lies within [ρ/{RATE_FACTOR:g}, {RATE_FACTOR:g}ρ]; refuted if "
            f"at least half lie below ρ/{RATE_FACTOR:g}",
        )
    )
    claims.append(
        make_claim(
            f"Adam's stable region is γ > β/(2−β) (the paper's boundary): training runs are measured unstable exactly "
            f"outside it (late-phase agreement ≥ {AGREEMENT_BAR:.0%} at every η)",
            agreement_verdict(merged["per_learning_rate"], "late_agreement_paper"),
            _agreement_evidence(merged, "paper"),
            "paper",
            seeds=seeds,
            criterion=_AGREEMENT_RULE,
        )
    )
    claims.append(
        make_claim(
            f"The stable region is γ > β² (THEORY §2's exact bound): training runs are measured unstable exactly outside "
            f"it (late-phase agreement ≥ {AGREEMENT_BAR:.0%} at every η)",
            agreement_verdict(merged["per_learning_rate"], "late_agreement_exact"),
            _agreement_evidence(merged, "exact"),
            "project",
            seeds=seeds,
            criterion=_AGREEMENT_RULE,
        )
    )
    significant = [s for s in margin["strata"] if s["significant"]]
    claims.append(
        make_claim(
            "A larger stability margin gives a lower validation loss",
            margin_verdict_rule(margin),
            f"within β over the runs that trained: {margin['tests']} (η, β) strata tested, "
            f"{sum(s['spearman_rho'] < 0 for s in significant)} significantly negative and "
            f"{sum(s['spearman_rho'] > 0 for s in significant)} significantly positive after Holm at "
            f"α = {margin['alpha']:g}; {len(margin['diverged'])} diverged run(s) excluded",
            "paper",
            seeds=margin_seeds,
            criterion="confirmed if at least half of the tested strata are significantly negative and none positive; "
            "refuted if some are significantly positive and none negative",
        )
    )
    if harm["outside"]:
        verdict = (
            "confirmed"
            if harm["harmed"] == harm["outside"]
            else "refuted"
            if 2 * harm["unharmed"] > harm["outside"]
            else UNRESOLVED
        )
    else:
        verdict = UNRESOLVED
    claims.append(
        make_claim(
            "Full-batch training outside γ > β² ends with a worse training loss than inside both regions (the training "
            "protocol; the mini-batch margin runs' divergences are counted in the margin row)",
            verdict,
            f"(point, η) outside γ = β²: {harm['harmed']} harmed, {harm['unharmed']} within {harm['tolerance']:.0%} of "
            f"the worst inside-both point, {harm['unresolved']} unresolved (final-loss interval over seeds)",
            "project",
            seeds=seeds,
            criterion="confirmed if every outside point is harmed; refuted if most are unharmed",
        )
    )
    return claims


def _span(values: Sequence[float]) -> str:
    low, high = format_number(min(values), 2), format_number(max(values), 2)
    return low if low == high else f"{low}–{high}"


def _region_text(entry: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{region} {'—' if entry['late_unstable_by_region'][region] is None else format(entry['late_unstable_by_region'][region], '.0%')}"
        for region in REGIONS
    )


def _diverged_groups(margin: Mapping[str, Any]) -> list[str]:
    """The diverged margin runs grouped by (β, γ, η): seeds diverged out of seeds run, and the range of their losses."""
    groups: dict[tuple[float, float, float], list[Any]] = {}
    for run in margin["diverged"]:
        groups.setdefault((run["beta"], run["gamma"], run["lr"]), []).append(run["validation_loss"])
    seeds = {(r["beta"], r["gamma"], r["lr"]) for r in margin["runs"]}
    counts = {key: sum((r["beta"], r["gamma"], r["lr"]) == key for r in margin["runs"]) for key in seeds}
    out = []
    for (beta, gamma, lr), losses in sorted(groups.items()):
        finite = [loss for loss in losses if loss is not None and math.isfinite(loss)]
        spread = (
            "not finite"
            if not finite
            else format_number(min(finite), 3)
            if len(finite) == 1
            else f"{format_number(min(finite), 3)}–{format_number(max(finite), 3)}"
        )
        if finite and len(finite) < len(losses):
            spread += " or not finite"
        out.append(
            f"(β, γ) = ({beta:g}, {gamma:.4g}) at η = {lr:g}: {len(losses)} of {counts.get((beta, gamma, lr), len(losses))} seeds "
            f"(validation loss {spread})"
        )
    return out


def _details(merged: Mapping[str, Any], margin: Mapping[str, Any], harm: Mapping[str, Any]) -> list[str]:
    """Appendix sentences: every learning rate's counts, every outside point's loss state, every margin stratum."""
    details = [
        f"Training protocol at η = {entry['learning_rate']:g} ({entry['points']} points × {len(entry['seeds'])} "
        f"seeds): measured unstable in the late phase {format_number(entry['measured_late_unstable'], 3)} points per "
        f"seed, over the whole run {format_number(entry['measured_unstable'], 3)}; fraction of runs measured unstable "
        f"(late) by region: {_region_text(entry)}; diverged runs: {entry['diverged']}."
        for entry in merged["per_learning_rate"]
    ]
    details.append(
        f"Final training loss outside γ = β² against inside both regions (tolerance {harm['tolerance']:.0%}): "
        + "; ".join(
            f"η = {e['learning_rate']:g}: "
            + ", ".join(f"({p['beta']:g}, {p['gamma']:g}) {p['state']}" for p in e["points"])
            for e in harm["per_learning_rate"]
        )
        + "."
    )
    tested = [s for s in margin["strata"] if s["p_value"] is not None]
    if tested:
        details.append(
            "Margin against validation loss per (η, β) stratum: "
            + "; ".join(
                f"η = {s['lr']:g}, β = {s['beta']:g}: ρ = {s['spearman_rho']:+.2f} (p {p_value_text(s['p_value'])}, "
                f"Holm {p_value_text(s['holm_p'])}{', significant' if s['significant'] else ''})"
                for s in tested
            )
            + "."
        )
    return details


def _conclusion(
    merged: Mapping[str, Any], growth: Mapping[str, Any], margin: Mapping[str, Any], harm: Mapping[str, Any]
) -> list[str]:
    """What the section adds to the report's conclusion beyond its rows: where instability was seen in training."""
    rows = merged["rows"]
    unstable = [r for r in rows if r["late_unstable"]]
    inside = [r for r in unstable if r["stable_exact"]]
    where = sorted({(r["beta"], r["gamma"], r["learning_rate"]) for r in unstable})
    sentences = [
        f"In training, {len(unstable)} of {len(rows)} runs were measured unstable in the late phase"
        + (f", {len(inside)} of them inside γ > β²" if unstable else "")
        + (": " + ", ".join(f"(β, γ) = ({b:g}, {g:.4g}) at η = {lr:g}" for b, g, lr in where) if where else "")
        + f". Outside γ = β² the updates grew at a median {format_number(growth['median_ratio'], 2)} of the predicted "
        "rate: the exponential growth of the switch-off protocol does not carry over to training at these sizes."
    ]
    harmed = [(e["learning_rate"], p) for e in harm["per_learning_rate"] for p in e["points"] if p["state"] == "harmed"]
    if harmed or margin["diverged"]:
        parts = [
            f"(β, γ) = ({p['beta']:g}, {p['gamma']:.4g}) at η = {lr:g} ended full-batch training with a worse loss"
            for lr, p in harmed
        ]
        if margin["diverged"]:
            parts.append("mini-batch runs diverged at " + "; ".join(_diverged_groups(margin)))
        outside = all(d["gamma"] <= d["beta"] ** 2 for d in margin["diverged"])
        sentences.append(
            ("What went wrong, all of it outside γ = β²: " if outside else "What went wrong: ") + "; ".join(parts) + "."
        )
    return sentences


def _findings(
    switch: Mapping[str, Any],
    merged: Mapping[str, Any],
    rates: Sequence[Mapping[str, Any]],
    growth: Mapping[str, Any],
    margin: Mapping[str, Any],
    harm: Mapping[str, Any],
) -> list[str]:
    """The section's findings, most important first: growth against the prediction, the η dependence, the
    classes by region, the harm, the margin test, the margin runs, and last the exactness check."""
    findings = []
    outside = [r for r in rates if r["predicted_rate"] > 0 and r["late_slope"]["mean"] is not None]
    if outside:
        fastest = max(outside, key=lambda r: r["late_slope"]["mean"])
        findings.append(
            f"Growth in training: outside γ = β² the predicted rate is {_span([r['predicted_rate'] for r in outside])} "
            f"per step; the largest measured late-phase slope is "
            f"{interval_text(fastest['late_slope'], 2)} per step at (β, γ) = ({fastest['beta']:g}, {fastest['gamma']:.4g}), "
            f"η = {fastest['learning_rate']:g} (predicted {format_number(fastest['predicted_rate'], 2)}); the median "
            f"measured/predicted ratio is {format_number(growth['median_ratio'], 2)}. Per η, the mean late slope outside: "
            + ", ".join(
                f"η = {lr:g}: {format_number(sum(r['late_slope']['mean'] for r in outside if r['learning_rate'] == lr) / max(1, sum(r['learning_rate'] == lr for r in outside)), 2)}"
                for lr in merged["learning_rates"]
            )
            + "."
        )
    findings.append(
        "Dependence on η: points measured unstable per seed, late phase, "
        + ", ".join(
            f"η = {e['learning_rate']:g}: {format_number(e['measured_late_unstable'], 3)}"
            for e in merged["per_learning_rate"]
        )
        + f" ({TREND_SENTENCES[merged['late_trend']].rstrip('.')}); whole run "
        + ", ".join(f"{format_number(e['measured_unstable'], 3)}" for e in merged["per_learning_rate"])
        + f" ({TREND_SENTENCES[merged['trend']].rstrip('.')})."
    )
    findings.append(
        "Measured unstable in the late phase, fraction of runs by region (outside both / between / inside both): "
        + "; ".join(
            f"η = {e['learning_rate']:g}: "
            + " / ".join(
                "—" if e["late_unstable_by_region"][r] is None else f"{e['late_unstable_by_region'][r]:.0%}"
                for r in REGIONS
            )
            for e in merged["per_learning_rate"]
        )
        + "."
    )
    findings.append(
        f"Final training loss outside γ = β² against the worst inside both regions (within {harm['tolerance']:.0%}): "
        f"{harm['harmed']} of {harm['outside']} (point, η) harmed, {harm['unharmed']} unharmed, {harm['unresolved']} "
        "unresolved."
    )
    tested = [s for s in margin["strata"] if s["p_value"] is not None]
    significant = [s for s in tested if s["significant"]]
    findings.append(
        f"Margin against validation loss within β: {len(tested)} (η, β) strata tested; after Holm "
        + (
            ", ".join(
                f"η = {s['lr']:g}, β = {s['beta']:g}: ρ = {s['spearman_rho']:+.2f} (Holm p {p_value_text(s['holm_p'])})"
                for s in significant
            )
            if significant
            else "none is significant"
        )
        + (
            f" (smallest uncorrected p {p_value_text(min(s['p_value'] for s in tested))})"
            if tested and not significant
            else ""
        )
        + "."
    )
    for entry in margin["per_learning_rate"]:
        findings.append(
            f"Margin runs at η = {entry['lr']:g}: {entry['trained']} of {entry['runs']} trained (validation loss below the "
            f"constant predictor's {format_number(entry['constant_predictor_loss'], 3)}), {entry['diverged']} diverged "
            f"(above {margin['divergence_factor']:g}× the untrained {format_number(entry['untrained_loss'], 3)}); median "
            f"validation loss of those that trained {format_number(entry['median_trained_loss'], 3)}."
        )
    if margin["diverged"]:
        findings.append("Diverged margin runs (excluded from every test): " + "; ".join(_diverged_groups(margin)) + ".")
    findings.append(
        f"Exactness check, switch-off protocol: largest |measured − predicted| slope "
        f"{format_number(switch['max_abs_error'], 2)} per step over {len(switch['rows'])} configurations "
        f"(every one within tolerance: {'yes' if switch['all_within_tolerance'] else 'NO'})."
    )
    return findings


def _tables(merged: Mapping[str, Any], rates: Sequence[Mapping[str, Any]], margin: Mapping[str, Any]) -> list[Table]:
    agreement = Table(
        "Training protocol per learning rate: agreement of each boundary's prediction with the measured class "
        "(the criterion above): fraction of runs [95% exact binomial interval over points × seeds], in the late phase "
        "and over the whole run",
        [
            "η",
            "seeds",
            "late: γ = β²",
            "late: paper",
            "whole run: γ = β²",
            "whole run: paper",
            "late unstable by region (outside both / between / inside both)",
        ],
        [
            [
                format_number(e["learning_rate"], 2),
                str(len(e["seeds"])),
                *(
                    interval_text(e["intervals"][key], percent=True)
                    for key in ("late_agreement_exact", "late_agreement_paper", "agreement_exact", "agreement_paper")
                ),
                " / ".join(
                    "—" if e["late_unstable_by_region"][r] is None else f"{e['late_unstable_by_region'][r]:.0%}"
                    for r in REGIONS
                ),
            ]
            for e in merged["per_learning_rate"]
        ],
    )
    slopes = Table(
        "Growth of ‖u_n‖∞ in training outside γ = β²: predicted rate ln β − ½ ln γ against the measured late-phase "
        "slope of ln‖u_n‖∞ (per step; mean [95% interval] over seeds)",
        ["β", "γ", "η", "predicted", "measured (late phase)", "measured / predicted", "diverged runs"],
        [
            [
                format_number(r["beta"], 3),
                format_number(r["gamma"], 4),
                format_number(r["learning_rate"], 2),
                format_number(r["predicted_rate"], 3),
                interval_text(r["late_slope"], 2),
                "—"
                if r["late_slope"]["mean"] is None
                else format_number(r["late_slope"]["mean"] / r["predicted_rate"], 2),
                f"{r['diverged']}/{r['runs']}",
            ]
            for r in rates
            if r["predicted_rate"] > 0
        ],
    )
    strata = Table(
        "Margin against validation loss within β (runs that trained): Spearman ρ, p-value and Holm-adjusted p",
        ["η", "β", "trained / runs", "Spearman ρ", "p", "Holm p"],
        [
            [
                format_number(s["lr"], 2),
                format_number(s["beta"], 3),
                f"{s['trained']}/{s['runs']}",
                "—" if s["spearman_rho"] is None else f"{s['spearman_rho']:+.2f}",
                "—" if s["p_value"] is None else p_value_text(s["p_value"]).lstrip("= "),
                "—" if s["holm_p"] is None else p_value_text(s["holm_p"]).lstrip("= "),
            ]
            for s in margin["strata"]
        ],
        appendix=True,
    )
    return [agreement, slopes, strata]


def _headline(
    switch: Mapping[str, Any], merged: Mapping[str, Any], growth: Mapping[str, Any], margin: Mapping[str, Any]
) -> list[tuple[str, str]]:
    return [
        ("switch-off (exactness): max |slope error|", format_number(switch["max_abs_error"], 2)),
        (
            "late-phase agreement γ=β² / paper, per η",
            "; ".join(
                f"{e['learning_rate']:g}: {e['late_agreement_exact']:.0%} / {e['late_agreement_paper']:.0%}"
                for e in merged["per_learning_rate"]
            ),
        ),
        ("growth outside γ=β²: median measured/predicted slope", format_number(growth["median_ratio"], 2)),
        (
            "margin strata significant after Holm",
            f"{sum(s['significant'] for s in margin['strata'])} of {margin['tests']}",
        ),
    ]


def _figures(
    figures: Path,
    switch: Mapping[str, Any],
    merged: Mapping[str, Any],
    rates: Sequence[Mapping[str, Any]],
    growth: Mapping[str, Any],
    margin: Mapping[str, Any],
) -> list[Any]:
    outside = [r for r in rates if r["predicted_rate"] > 0 and r["late_slope"]["mean"] is not None]
    largest = max((r["late_slope"]["mean"] for r in outside), default=None)
    top = max((r["predicted_rate"] for r in outside), default=None)
    late = ", ".join(
        f"η = {e['learning_rate']:g}: {format_number(e['measured_late_unstable'], 3)} of {e['points']}"
        for e in merged["per_learning_rate"]
    )
    plotted = sum(r["trained"] for r in margin["runs"])
    return [
        draw_figure(
            figures,
            "stability_region.png",
            plots.plot_region_map,
            "Theory only: the (β, γ) plane with log10 of the exact update bound B∞ (THEORY §2), the exact "
            "boundary γ = β² and the paper's boundary γ = β/(2−β) (THEORY §3), common presets marked.",
            appendix=True,
        ),
        draw_figure(
            figures,
            "stability_classification.png",
            lambda path: plots.plot_classification(merged, path),
            "Every training-protocol run, one panel per learning rate: horizontal position is the predicted "
            "rate ln β − ½ ln γ (0 is γ = β²; the magenta tick on each row is γ = β/(2−β)), one row per β, "
            "one marker per seed, filled where the criterion measured the run unstable in the late phase. "
            f"Points measured unstable per seed (late): {late}.",
        ),
        draw_figure(
            figures,
            "stability_slopes.png",
            lambda path: plots.plot_slopes(switch, rates, path),
            "Measured against predicted growth rate of ln‖u_n‖ per step. Left (exactness check): the optimizer "
            "alone with the gradient switched off lies on the identity. Right (the paper's claim, in training): "
            "late-phase slopes with their interval over seeds"
            + (
                f": at most {format_number(largest, 2)} per step where up to {format_number(top, 2)} is predicted"
                if largest is not None
                else ""
            )
            + (
                f"; {growth['too_slow']} of {growth['points']} (point, η) grow slower than half the predicted "
                "rate even at their interval's upper end, so training shows no exponential growth at the "
                "predicted rate, against the paper."
                if growth["points"] and 2 * growth["too_slow"] >= growth["points"]
                else "."
            ),
        ),
        draw_figure(
            figures,
            "stability_margin.png",
            lambda path: plots.plot_stability_margin(margin, path),
            f"Final validation loss against the margin ½ ln γ − ln β, one panel per learning rate, one colour "
            f"per β (lines join the mean over seeds at each γ), only the {plotted} runs that trained; runs that "
            f"did not train or diverged (above {DIVERGENCE_FACTOR:g}× the untrained loss) are counted in each "
            "panel's title, not drawn.",
            appendix=True,
        ),
    ]


def _transformer_step_seconds(sizes: Mapping[str, Any], batch_size: int, device: str) -> float:
    """Rough seconds per training step of the char transformer (for the ETA only): per-step overhead plus
    FLOPs (6 · batch · context · layers · (12 width² + 2 context · width)) over an assumed throughput of one
    CPU core or one GPU; rich's ETA corrects the rate as cells finish."""
    width, context, layers = sizes["width"], sizes["context"], sizes["layers"]
    flops = 6 * batch_size * context * layers * (12 * width * width + 2 * context * width)
    return 3e-3 + flops / 2e13 if device == "cuda" else 1e-3 + flops / 1.5e10


def build_section(settings: Settings) -> Section:
    config = profile_sizes(settings.profile).stability
    points = [list(point) for point in protocol_grid(config.betas, config.rates, config.between, config.gammas)]
    learning_rates = list(config.learning_rates)
    protocol_sizes = plain(config.protocol_sizes)
    switch_off = Cell(
        "stability",
        "switch-off protocol",
        switch_off_experiment,
        plain(config.switch_off),
        cost=20.0 if not config.switch_off else 5.0,
    )
    protocol = [
        Cell(
            "stability",
            f"training protocol lr={lr:g} seed={seed}",
            training_protocol,
            {
                "betas": [],
                "gammas": [],
                "learning_rate": lr,
                "sizes": {**protocol_sizes, "seed": seed},
                "points": points,
            },
            cost=len(points) * protocol_sizes["steps"] * 4e-3,
        )
        for lr in learning_rates
        for seed in config.seeds
    ]
    margin_sizes = plain(config.margin_task_sizes)
    margin_cells = [
        Cell(
            "stability",
            f"margin runs lr={lr:g} seed={seed}",
            margin_runs,
            {
                "points": points,
                "lr": lr,
                "seed": seed,
                "steps": config.margin_steps,
                "batch_size": config.margin_batch_size,
                "task_sizes": margin_sizes,
                "device": settings.device,
            },
            cost=len(points)
            * config.margin_steps
            * _transformer_step_seconds(margin_sizes, config.margin_batch_size, settings.device),
        )
        for lr in config.margin_learning_rates
        for seed in config.margin_seeds
    ]

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        switch = results[switch_off.key]
        rows = [row for cell in protocol for row in results[cell.key]["rows"]]
        merged = summarize_training_protocol(rows, learning_rates, protocol_sizes)
        rates = growth_rates(rows)
        growth = growth_verdict(rates)
        margin = margin_analysis([results[cell.key] for cell in margin_cells])
        harm = region_versus_harm(rows)
        single = min(len(config.seeds), len(config.margin_seeds)) < MIN_SEEDS
        method = (
            "**Criterion (fixed before the runs; stated in full in the appendix).** A run is *measured unstable* in a "
            "window (the whole run, or its late phase: the second half) iff its loss diverged (not finite, or ending "
            f"above {DIVERGENCE_FACTOR:g}× the untrained model's) or ln‖u_n‖∞ grows there: the slope fitted to "
            f"{GROWTH_BLOCKS} block means has a {GROWTH_CONFIDENCE:.0%} interval, from the run's own fluctuation, "
            f"whose lower end is above 0 and multiplies the norm by at least {GROWTH_FACTOR:g} over the window. It "
            "reads neither β, γ nor a boundary, so each boundary can agree or disagree with it. Verdicts read 95% "
            "intervals over seeds (Student t for slopes and losses; exact binomial over points × seeds for "
            "agreements). A margin run diverged if its validation loss is not finite or above "
            f"{DIVERGENCE_FACTOR:g}× the untrained model's, and trained if it did not diverge and beat the constant "
            "predictor; the margin ½ ln γ − ln β is tested within β (only γ varies there) by Spearman's ρ over the "
            "runs that trained, Holm-corrected over the (η, β) strata."
            + (
                f" This profile runs {len(config.seeds)} seed(s), fewer than {MIN_SEEDS}, so every measured verdict "
                "is not resolved at this budget."
                if single
                else ""
            )
            + f"\n\n**The criterion in full.** {CRITERION} For an agreement (a proportion of runs) the interval is "
            "the exact binomial (Clopper–Pearson) 95% interval over the runs (points × seeds), used only with at "
            "least two seeds. The constant predictor's loss is the unigram entropy of the training characters."
            "\n\n"
            "Exactness check, switch-off protocol (the optimizer alone, THEORY §2): gradient 1 until the bias "
            "corrections settle, then 0; the fitted slope of ln|u_n| against ln β − ½ ln γ, through the real KAdam "
            "code. Training protocol (THEORY §5, the paper's): a small full-batch character transformer trained "
            f"{protocol_sizes['steps']} steps by Adam at {len(points)} points (β, γ) ("
            + ", ".join(f"{sum(1 for b, g in points if region_of(b, g) == r)} {r}" for r in REGIONS)
            + f"; 'between': inside γ > β², outside γ > β/(2−β)) at η = {', '.join(f'{lr:g}' for lr in learning_rates)} and seeds "
            f"{', '.join(str(s) for s in config.seeds)}. Margin runs: the mini-batch character transformer trained "
            f"{config.margin_steps} steps by Adam at the same points, η = "
            f"{', '.join(f'{lr:g}' for lr in config.margin_learning_rates)}, seeds "
            f"{', '.join(str(s) for s in config.margin_seeds)}."
        )
        data = {
            "switch_off": switch,
            "training_protocol": merged,
            "growth_rates": rates,
            "growth_verdict": growth,
            "margin_analysis": margin,
            "region_versus_harm": harm,
        }
        return SectionDocument(
            "stability",
            TITLE,
            method,
            _findings(switch, merged, rates, growth, margin, harm),
            _tables(merged, rates, margin),
            _figures(figures, switch, merged, rates, growth, margin),
            _headline(switch, merged, growth, margin),
            data,
            claims=stability_claims(switch, merged, growth, margin, harm, len(config.seeds), len(config.margin_seeds)),
            details=_details(merged, margin, harm),
            conclusion=_conclusion(merged, growth, margin, harm),
        )

    configuration = {
        "switch_off": plain(config.switch_off),
        "training_protocol": {
            "points": points,
            "sizes": protocol_sizes,
            "learning_rates": learning_rates,
            "seeds": list(config.seeds),
            "criterion": CRITERION,
        },
        "margin": {
            "learning_rates": list(config.margin_learning_rates),
            "seeds": list(config.margin_seeds),
            "steps": config.margin_steps,
            "batch_size": config.margin_batch_size,
            "sizes": margin_sizes,
        },
    }
    return Section("stability", TITLE, configuration, [switch_off, *protocol, *margin_cells], finish)
