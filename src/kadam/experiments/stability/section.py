"""Section 1 of the report: the stability of (β, γ) (THEORY §2, §3, §5).

Cells: the switch-off protocol (one cell), the training protocol (one cell per learning rate; summarized over
all of them by :func:`~kadam.experiments.stability.analysis.summarize_training_protocol`), and the
stability-margin runs (:func:`kadam.experiments.training.protocol.train_run` at every (β, γ, η) of the grid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kadam.experiments.cells import Cell
from kadam.experiments.profiles import Settings, plain, profile_sizes
from kadam.experiments.report import Claim, SectionDocument, Table, format_number
from kadam.experiments.sections import Section, draw_figure, p_value_text
from kadam.experiments.stability import plots
from kadam.experiments.stability.analysis import (
    EtaTrend,
    bound_versus_harm,
    margin_correlation_without_diverged,
    stability_margin_correlation,
    summarize_training_protocol,
)
from kadam.experiments.stability.protocol import switch_off_experiment, training_protocol
from kadam.experiments.training.protocol import train_run

__all__ = ["TREND_SENTENCES", "build_section", "harm_findings", "margin_findings", "margin_verdict", "stability_claims"]

TITLE = "Stability of (β, γ)"

TREND_SENTENCES: Mapping[EtaTrend, str] = {
    "none": "the same count at every η of this grid: no dependence on η is visible at this resolution.",
    "widens": "fewer unstable points as η shrinks: the measured stable region widens, as the paper's reviewers observed.",
    "narrows": "more unstable points as η shrinks: the measured stable region narrows, against the reviewers' observation.",
    "not monotone": "not monotone in η.",
}
"""The prose for each :func:`~kadam.experiments.stability.analysis.eta_trend` verdict."""


def margin_verdict(entry: Mapping[str, Any]) -> str:
    """The verdict on one learning rate's Spearman correlation of validation loss with the stability margin."""
    rho = entry["spearman_rho"]
    if rho is None:
        return "no rank correlation can be computed"
    if not entry["claimed"]:
        return f"not significant (p {p_value_text(entry['p_value'])})"
    direction = ("larger margin, lower validation loss, as the paper claims" if rho < 0
                 else "larger margin, HIGHER validation loss, against the paper's claim")
    return f"significant (p {p_value_text(entry['p_value'])}): {direction}"


def _range(values: Any) -> str:
    return "—" if values is None else f"{format_number(values[0], 3)}–{format_number(values[1], 3)}"


def harm_findings(harm: Mapping[str, Any]) -> list[str]:
    """Sentences that separate "the bound is exceeded" from "training is harmed" (:func:`bound_versus_harm`)."""
    if harm["unstable"] == 0:
        return ["No training-protocol run exceeded the bound, so this run cannot say whether exceeding it harms training."]
    sentences = [
        f"Bound exceeded versus training harmed: {harm['unstable_unharmed']} of {harm['unstable']} runs measured "
        f"unstable reach a final training loss within {harm['tolerance']:.0%} of the stable runs' worst "
        + "(" + "; ".join(f"η = {e['learning_rate']:g}: unstable {_range(e['unstable_loss_range'])} vs stable "
                          f"{_range(e['stable_loss_range'])}" for e in harm["per_learning_rate"]) + ")."]
    harmed = [(e["learning_rate"], h) for e in harm["per_learning_rate"] for h in e["harmed"]]
    if harmed:
        sentences.append("Harmed: " + ", ".join(
            f"(β, γ) = ({h['beta']:g}, {h['gamma']:g}) at η = {lr:g} "
            + ("diverged" if h["diverged"] else f"final loss {format_number(h['final_loss'], 3)}") for lr, h in harmed) + ".")
    else:
        sentences.append("No run measured unstable was harmed (none diverged, none ended worse than the stable runs).")
    return sentences


def margin_findings(correlation: Mapping[str, Any], without: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the margin correlations rest on: ρ again without the diverged runs, and its sign at each η."""
    sentences = []
    for entry, again in zip(correlation["per_learning_rate"], without):
        if again["diverged"] == 0:
            continue
        rho = "—" if again["spearman_rho"] is None else format_number(again["spearman_rho"], 3)
        tail = ("; the significant correlation rests on the divergence" if again["rests_on_divergence"]
                else "" if not entry["claimed"] else "; still significant without it")
        sentences.append(f"At η = {entry['lr']:g}, {again['diverged']} run(s) diverged; without them ρ = {rho} over "
                         f"{again['runs']} runs (p {p_value_text(again['p_value'])}){tail}.")
    positive = [a["lr"] for a in without if a["spearman_rho"] is not None and a["spearman_rho"] > 0]
    if positive:
        sentences.append("Without diverged runs ρ is positive (larger margin, higher validation loss: the opposite of "
                         f"the paper's claim) at η = {', '.join(f'{lr:g}' for lr in positive)}"
                         + (", every one of them not significant." if not any(
                             a["claimed"] for a in without if a["lr"] in positive) else ", significantly at some."))
    return sentences


def stability_claims(switch: Mapping[str, Any], merged: Mapping[str, Any], harm: Mapping[str, Any],
                     without: Sequence[Mapping[str, Any]]) -> list[Claim]:
    """The section's claims with verdicts chosen by this run's numbers (THEORY §2, §3, §5)."""
    exact = [e["agreement_exact"] for e in merged["per_learning_rate"]]
    paper = [e["agreement_paper"] for e in merged["per_learning_rate"]]
    def percent(values: Sequence[float]) -> str:
        return f"{min(values):.0%}" if min(values) == max(values) else f"{min(values):.0%}–{max(values):.0%}"

    agreement = (f"measured class agrees with γ = β/(2−β) at {percent(paper)} of points against {percent(exact)} "
                 f"for γ = β² (every η)")
    if min(paper) == 1.0 and min(exact) == 1.0:
        paper_verdict = exact_verdict = "not resolved at this budget"  # the grid does not separate the boundaries
    else:
        paper_verdict = "refuted" if max(paper) < min(exact) else "confirmed" if min(paper) == 1.0 else "not resolved at this budget"
        exact_verdict = ("confirmed" if min(exact) >= 0.95 and switch["all_within_tolerance"]
                         else "refuted" if max(exact) < min(paper) else "not resolved at this budget")
    claims = [
        Claim("Adam's stable region is γ > β/(2−β) (the paper's boundary)", paper_verdict, agreement, "paper"),
        Claim("The stable region is γ > β² (THEORY §2's exact bound)", exact_verdict,
              f"{agreement}; switch-off slope error ≤ {format_number(switch['max_abs_error'], 2)}"),
    ]
    if harm["unstable"]:
        blew = ", ".join(f"({d['beta']:g}, {d['gamma']:g}) at η = {d['learning_rate']:g}" for d in harm["diverged"]) or "none"
        harmed = harm["unstable"] - harm["unstable_unharmed"]
        verdict = "refuted" if harm["unstable_unharmed"] > harmed else "confirmed" if harmed == harm["unstable"] else "not resolved at this budget"
        claims.append(Claim("Runs that exceed the bound are harmed in training", verdict,
                            f"{harm['unstable_unharmed']} of {harm['unstable']} runs measured unstable train as well as "
                            f"the stable ones; diverged: {blew}"))
    else:
        claims.append(Claim("Runs that exceed the bound are harmed in training", "not resolved at this budget",
                            "no run exceeded the bound"))
    significant = [a for a in without if a["claimed"]]
    rhos = "; ".join(f"η = {a['lr']:g}: ρ = {'—' if a['spearman_rho'] is None else format_number(a['spearman_rho'], 2)}"
                     f" (p {p_value_text(a['p_value'])})" for a in without)
    if any(a["spearman_rho"] > 0 for a in significant):
        margin = "refuted"
    elif significant and len(significant) == len(without):
        margin = "confirmed"
    else:
        margin = "not resolved at this budget"
    claims.append(Claim("A larger stability margin gives a lower validation loss", margin,
                        f"Spearman ρ without diverged runs: {rhos}", "paper"))
    return claims


def _findings(switch: Mapping[str, Any], merged: Mapping[str, Any], correlation: Mapping[str, Any]) -> list[str]:
    k1_rows = [row for row in switch["rows"] if len(row["betas"]) == 1]
    points = len(merged["betas"]) * len(merged["gammas"])
    findings = [
        f"Switch-off protocol: {len(k1_rows)} k = 1 points ({switch['points_k1_stable']} stable, "
        f"{switch['points_k1_unstable']} unstable) and {len(switch['rows']) - len(k1_rows)} k = 2 configurations; "
        f"largest |measured − predicted| slope {format_number(switch['max_abs_error'])} per step; every point within "
        f"tolerance: {'yes' if switch['all_within_tolerance'] else 'NO'}.",
    ]
    counts = sorted(((e["learning_rate"], e["measured_unstable"]) for e in merged["per_learning_rate"]), reverse=True)
    findings.append("Training protocol: points measured unstable per learning rate "
                    + ", ".join(f"η = {lr:g}: {n}/{points}" for lr, n in counts)
                    + f" — {TREND_SENTENCES[merged['widening']['trend']]}")
    for entry in correlation["per_learning_rate"]:
        rho = entry["spearman_rho"]
        findings.append(f"Margin vs validation loss at η = {entry['lr']:g}: Spearman ρ = "
                        f"{'—' if rho is None else format_number(rho, 3)} over {len(entry['points'])} runs; "
                        f"{margin_verdict(entry)}.")
    return findings


def _headline(switch: Mapping[str, Any], merged: Mapping[str, Any], correlation: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("switch-off: max |slope error|", f"{format_number(switch['max_abs_error'])} "
                                          f"({'all' if switch['all_within_tolerance'] else 'NOT all'} within tolerance)"),
        ("training protocol: agreement with γ=β² / paper, per η",
         "; ".join(f"{e['learning_rate']:g}: {e['agreement_exact']:.0%} / {e['agreement_paper']:.0%}"
                   for e in merged["per_learning_rate"])),
        ("margin vs validation loss: Spearman ρ (p), per η",
         "; ".join(f"{e['lr']:g}: " + ("—" if e["spearman_rho"] is None
                                       else f"{e['spearman_rho']:+.2f} (p {p_value_text(e['p_value'])})")
                   for e in correlation["per_learning_rate"])),
    ]


def _figures(figures: Path, switch: Mapping[str, Any], merged: Mapping[str, Any],
             correlation: Mapping[str, Any]) -> list[Any]:
    return [
        draw_figure(figures, "stability_region.png", plots.plot_region_map,
                    "The (β, γ) plane: log10 of the exact update bound B∞ (THEORY §2), the exact boundary γ = β² and "
                    "the paper-rate boundary γ = β/(2−β) (THEORY §3), common presets marked."),
        draw_figure(figures, "stability_training_heatmaps.png", lambda path: plots.plot_training_heatmaps(merged, path),
                    "Training protocol, one panel per learning rate: log10 max‖u_n‖∞ / C_n(β) per (β, γ) with both "
                    "boundaries; runs above the ceiling C_n are measured unstable."),
        draw_figure(figures, "stability_slopes.png", lambda path: plots.plot_slope_scatter(switch, merged, path),
                    "Measured against predicted growth rate ln β − ½ ln γ: switch-off protocol (optimizer alone) and "
                    "the late-phase slope of log‖u_n‖∞ in training."),
        draw_figure(figures, "stability_margin.png", lambda path: plots.plot_stability_margin(correlation, path),
                    "Final validation loss of the character transformer (Adam, mini-batches) against the margin "
                    "½ ln γ − ln β to the boundary γ = β² (right of the red line: inside the stable region)."),
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
    betas, gammas, learning_rates = list(config.betas), list(config.gammas), list(config.learning_rates)
    protocol_sizes = plain(config.protocol_sizes)
    switch_off = Cell("stability", "switch-off protocol", switch_off_experiment, plain(config.switch_off),
                      cost=20.0 if not config.switch_off else 5.0)
    protocol = [
        Cell("stability", f"training protocol lr={lr:g}", training_protocol,
             {"betas": betas, "gammas": gammas, "learning_rate": lr, "sizes": protocol_sizes},
             cost=len(betas) * len(gammas) * protocol_sizes["steps"] * 2e-3)
        for lr in learning_rates
    ]
    margin_sizes = plain(config.margin_task_sizes)
    margin_cells = [
        Cell("stability", f"margin lr={lr:g} β={beta} γ={gamma}", train_run,
             {"task": "char-transformer", "optimizer": "adam", "lr": lr, "steps": config.margin_steps,
              "batch_size": config.margin_batch_size, "seed": 0, "task_sizes": margin_sizes, "betas": [beta, gamma],
              "device": settings.device},
             cost=config.margin_steps * _transformer_step_seconds(margin_sizes, config.margin_batch_size, settings.device))
        for lr in learning_rates for beta in betas for gamma in gammas
    ]

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        switch = results[switch_off.key]
        rows = [row for cell in protocol for row in results[cell.key]["rows"]]
        merged = summarize_training_protocol(rows, betas, gammas, learning_rates, protocol_sizes)
        correlation = stability_margin_correlation([results[cell.key] for cell in margin_cells])
        table_rows = [[format_number(entry["learning_rate"], 2), f"{entry['measured_unstable']}/{entry['points']}",
                       str(entry["predicted_unstable_exact"]), str(entry["predicted_unstable_paper"]),
                       f"{entry['agreement_exact']:.0%}", f"{entry['agreement_paper']:.0%}"]
                      for entry in merged["per_learning_rate"]]
        tables = [Table(
            "Training protocol per learning rate: points measured unstable, predicted unstable by each boundary, and "
            "agreement of the measured class with each boundary",
            ["η", "measured unstable", "predicted (γ = β²)", "predicted (paper)", "agreement γ = β²", "agreement paper"],
            table_rows,
        )]
        method = (
            "Switch-off protocol (the optimizer alone, THEORY §2): gradient 1 until the bias corrections settle, then 0; "
            "the fitted slope of ln|u_n| against the predicted ln β − ½ ln γ, through the real KAdam code "
            "(kadam.experiments.stability.protocol.switch_off_experiment). Training protocol (THEORY §5, the paper's): a "
            "small full-batch character transformer trained by Adam over a (β, γ) grid across both boundaries, per "
            f"learning rate ({', '.join(f'{lr:g}' for lr in learning_rates)}), {protocol_sizes['steps']} steps; runs "
            "classified by the certificate of kadam.experiments.stability.protocol.classify_run. Generalization against "
            f"stability: the mini-batch character transformer trained {config.margin_steps} steps by Adam at every (β, γ) "
            "of the same grid and learning rate; Spearman rank correlation of final validation loss with the margin "
            "½ ln γ − ln β."
        )
        harm = bound_versus_harm(merged["rows"])
        without = margin_correlation_without_diverged(correlation)
        data = {"switch_off": switch, "training_protocol": merged, "margin_correlation": correlation,
                "bound_versus_harm": harm, "margin_correlation_without_diverged": without}
        findings = _findings(switch, merged, correlation) + harm_findings(harm) + margin_findings(correlation, without)
        return SectionDocument("stability", TITLE, method, findings, tables,
                               _figures(figures, switch, merged, correlation), _headline(switch, merged, correlation), data,
                               claims=stability_claims(switch, merged, harm, without))

    configuration = {"switch_off": plain(config.switch_off),
                     "training_protocol": {"betas": betas, "gammas": gammas, "sizes": protocol_sizes,
                                           "learning_rates": learning_rates},
                     "margin": {"steps": config.margin_steps, "batch_size": config.margin_batch_size,
                                "sizes": margin_sizes}}
    return Section("stability", TITLE, configuration, [switch_off, *protocol, *margin_cells], finish)
