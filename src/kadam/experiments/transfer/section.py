"""Section "transfer": do the rules of THEORY §6 hold for discrete AdamW?"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kadam.experiments.cells import Cell
from kadam.experiments.profiles import profile_sizes
from kadam.experiments.report import Claim, Figure, SectionDocument, Table, budget_verdict, format_number
from kadam.experiments.sections import Section, seed_interval
from kadam.experiments.transfer import analysis, plots
from kadam.experiments.transfer.config import BatchStudyConfig
from kadam.experiments.transfer.protocol import lr_transfer_cell
from kadam.experiments.transfer.study import batch_study_cells
from kadam.transfer import BATCH_RULES

_LR_STEP_SECONDS = {"quadratic": 1e-3, "logistic": 4e-3, "mlp": 2e-2}
RULE_TITLES = {
    "sqrt": "the square-root rule of Malladi et al. 2022",
    "linear": "linear lr scaling",
    "sqrt-lr": "square-root lr scaling",
    "sqrt-lr+half-life": "square-root lr with β2's half-life kept (Marek et al. 2025)",
    "linear+half-life": "linear lr with β2's half-life kept (Marek et al. 2025)",
    "power-lines": "weight decay ∝ batch size (Power Lines, Bergsma et al. 2025)",
    "unchanged": "every hyperparameter kept",
}
"""A short title per rule of :data:`kadam.transfer.BATCH_RULES` for the claims table."""
TOLERANCE_TEXT = f"{analysis.TOLERANCE_FRACTION:.0%} of the loss the tuned optimum removes"


def build_section(settings: Any, full_batch: bool = True) -> Section:
    """The transfer section at ``settings.profile``'s sizes (:func:`~kadam.experiments.profiles.profile_sizes`);
    ``full_batch=False``: the batch-size study alone (``kadam transfer --study``)."""
    config = profile_sizes(settings.profile).transfer
    lr_cells = [
        Cell(
            "transfer",
            f"lr {problem} η={lr:g}",
            lr_transfer_cell,
            {"problem": problem, "lr": lr, "factors": list(config.lr_factors), "horizon": config.horizon, "seed": seed},
            cost=_LR_STEP_SECONDS[problem] * (config.horizon / lr) * (1 + 3 * sum(1 / c for c in config.lr_factors)),
        )
        for problem in config.lr_problems
        for lr in config.lr_values
        for seed in config.seeds[:1]
        if full_batch
    ]
    study = batch_study_cells(config.batch)

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        return _document(config, [results[cell.key] for cell in lr_cells], study.read(results), figures)

    return Section(
        "transfer",
        "Hyperparameter transfer (THEORY §6)",
        dataclasses.asdict(config),
        [*lr_cells, *study.sweep_cells()],
        finish,
        followup=study.followup,
        followup_cost=study.followup_cost(),
    )


def packaged_evidence(results: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of a batch-size study's ``results.json`` that ships with the package (``kadam/transfer_evidence.json``,
    read by :func:`kadam.transfer.batch_evidence`): the first regime's rows with their regrets, intervals and
    verdicts, and where they come from."""
    study = results["sections"]["transfer"]["data"]["batch_study"]
    regime = study["regimes"][0]
    keys = ("workload", "regime", "factor", "rule", "regret", "low", "high", "relative", "tolerance", "verdict")
    return {
        "source": f"results/transfer-study (`{results['command']}`, kadam {results['kadam_version']}, "
        f"torch {results['environment']['torch']})",
        "regime": regime,
        "factors": study["factors"],
        "base_batch": study["base_batch"],
        "workloads": study["workloads"],
        "evaluation_seeds": study["evaluation_seeds"],
        "tolerance_fraction": study["tolerance_fraction"],
        "rows": [{key: row[key] for key in keys} for row in study["rows"]],
    }


def committed_transfer_answer() -> str | None:
    """One sentence on what ``kadam transfer`` recommends for a batch-size change, from the committed study's
    packaged summary (:func:`kadam.transfer.batch_evidence`): the lowest-regret rule per studied factor and whether
    any rule holds at every point; ``None`` when the summary is not installed."""
    from kadam.transfer import batch_evidence, recommend_batch_rule

    try:
        evidence = batch_evidence()
    except ValueError:
        return None
    groups: list[tuple[str, list[float]]] = []
    for factor in evidence["factors"]:
        rule = recommend_batch_rule(factor, evidence).rule
        if groups and groups[-1][0] == rule:
            groups[-1][1].append(factor)
        else:
            groups.append((rule, [factor]))
    best = "; ".join(
        f"×{'–'.join(f'{f:g}' for f in (factors[0], factors[-1])[: 1 + (len(factors) > 1)])} {rule}"
        for rule, factors in groups
    )
    everywhere = [
        rule
        for rule in BATCH_RULES
        if all(row["verdict"] == "holds" for row in evidence["rows"] if row["rule"] == rule)
    ]
    return (
        f"for a batch size ×κ it recommends the lowest-regret rule of the committed study (results/transfer-study, "
        f"{len(evidence['workloads'])} workloads, {evidence['evaluation_seeds']} seeds): {best}; "
        + (f"{', '.join(everywhere)} held everywhere" if everywhere else "no rule held within tolerance everywhere")
    )


def run_batch_study(profile: str, out: str | Path, jobs: int, command: str) -> dict[str, Path]:
    """The transfer section alone at ``profile`` (``kadam transfer --study``): its report under ``out`` and the
    evidence summary ``out/transfer_evidence.json`` (:func:`packaged_evidence`), cached and resumable."""
    import json
    import sys

    from kadam.experiments.comparison.study import run_section_study

    paths = run_section_study(
        functools.partial(build_section, full_batch=False),
        "transfer",
        profile,
        out,
        jobs,
        show_progress=sys.stderr.isatty(),
        command=command,
    )
    results = json.loads((Path(out) / "results.json").read_text(encoding="utf-8"))
    evidence = Path(out) / "transfer_evidence.json"
    evidence.write_text(json.dumps(packaged_evidence(results), indent=1) + "\n", encoding="utf-8")
    return {**paths, "evidence": evidence}


def _slope(lrs: list[float], gaps: list[float]) -> float | None:
    if len(lrs) < 2 or min(gaps) <= 0:
        return None
    return float(np.polyfit(np.log(lrs), np.log(gaps), 1)[0])


def _document(
    config: Any, lr_results: list[dict[str, Any]], batch: dict[tuple, dict[str, Any]], figures: Path
) -> SectionDocument:
    lr_rows, findings, figure_list = [], [], []
    for result in lr_results:
        for row in result["rows"]:
            variants = row["variants"]
            lr_rows.append(
                [
                    result["problem"],
                    f"{result['lr']:g}",
                    str(row["factor"]),
                    format_number(variants["exact"]["loss_gap"]),
                    format_number(variants["paper"]["loss_gap"]),
                    format_number(variants["naive"]["loss_gap"]),
                    format_number(variants["exact"]["theta_gap"]),
                    format_number(variants["naive"]["theta_gap"]),
                ]
            )
    slope_rows = []
    for problem in dict.fromkeys(result["problem"] for result in lr_results):
        mine = sorted((r for r in lr_results if r["problem"] == problem), key=lambda r: r["lr"])
        for factor in config.lr_factors:
            for name in ("exact", "paper", "naive"):
                gaps = [
                    next(row for row in r["rows"] if row["factor"] == factor)["variants"][name]["loss_gap"]
                    for r in mine
                ]
                slope = _slope([r["lr"] for r in mine], gaps)
                slope_rows.append([problem, str(factor), name, "—" if slope is None else f"{slope:.2f}"])
    for result in lr_results:
        wins = sum(
            row["variants"]["exact"]["loss_gap"] < row["variants"]["naive"]["loss_gap"] for row in result["rows"]
        )
        worst = max(row["variants"]["exact"]["loss_gap"] for row in result["rows"])
        worst_naive = max(row["variants"]["naive"]["loss_gap"] for row in result["rows"])
        findings.append(
            f"{result['problem']}, η = {result['lr']:g}: transferred betas (β^c, γ^c) give a smaller loss gap than the "
            f"naive ones at {wins} of {len(result['rows'])} factors (largest gap {worst:.2%} of the loss drop, naive "
            f"{worst_naive:.2%})."
        )
    if lr_results:
        first = lr_results[-1]
        figure_list.append(
            Figure(
                plots.plot_lr_transfer(first, str(figures / "transfer_lr.png")),
                f"{first['problem']}: full-batch loss against t = η·step at η = {first['lr']:g} and at "
                "c·η with transferred, paper-rate and naive betas.",
            )
        )
    batch_tables, batch_findings, batch_figures, evidence = _batch_document(config.batch, batch, figures)
    findings.extend(batch_findings)
    figure_list.extend(batch_figures)
    full_batch_tables = [
        Table(
            "Full batch: loss gap max_t |L_cη(t) − L_η(t)| / (L(0) − min L) and parameter gap "
            "max_t ‖θ_cη(t) − θ_η(t)‖ / ‖θ_η(T) − θ₀‖",
            ["problem", "η", "c", "loss gap exact", "loss gap paper", "loss gap naive", "θ gap exact", "θ gap naive"],
            lr_rows,
        ),
        Table(
            "How the loss gap scales with η (log–log slope over the base learning rates)",
            ["problem", "c", "betas", "slope"],
            slope_rows,
        ),
    ]
    tables = [*(full_batch_tables if lr_rows else []), *batch_tables]

    def paragraph(name: str) -> str:
        text = analysis.__doc__.split(f"**{name}")[1].split("\n\n")[0].replace("\n", " ")
        return text.lstrip(".* ")

    method = (
        "THEORY §6. Full batch: AdamW at η and at c·η with the exact-rate betas (β^c, γ^c), the paper-rate betas "
        "and the same betas, compared at equal t = η·step. Batch size ×κ: at each batch size the optimum tuned on "
        "validation (an lr grid × every γ a rule moves to); each rule's regret is the test loss at its "
        "hyperparameters minus at that optimum, paired over fresh seeds, and the rule holds where the regret's "
        f"upper bound is within {TOLERANCE_TEXT}.\n\n"
        + "\n\n".join(
            f"{name}: {paragraph(name)}" for name in ("Design", "Metric", "Verdict", "Mini-batch lr transfer", "Surge")
        )
    )
    best = evidence["recommended"]
    headline = [
        (
            "transfer: batch-size rule with the lowest regret",
            "; ".join(f"×{row['factor']:g}: {row['rule']} ({row['relative']:+.1%} of the loss drop)" for row in best)
            or "—",
        )
    ]
    data = {"lr": lr_results, "batch_study": evidence}
    lr_outcomes = [
        {
            "problem": r["problem"],
            "lr": r["lr"],
            "factor": row["factor"],
            "exact": row["variants"]["exact"]["loss_gap"],
            "naive": row["variants"]["naive"]["loss_gap"],
        }
        for r in lr_results
        for row in r["rows"]
    ]
    return SectionDocument(
        "transfer",
        "Hyperparameter transfer (THEORY §6)",
        method,
        findings,
        tables,
        figure_list,
        headline,
        data,
        claims=transfer_claims(lr_outcomes, evidence),
    )


def _interval(row: Mapping[str, Any]) -> str:
    return f"{row['regret']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"


def _batch_document(
    config: BatchStudyConfig, study: Mapping[str, Any], figures: Path
) -> tuple[list[Table], list[str], list[Figure], dict[str, Any]]:
    """The batch-size study's tables, findings, figures and evidence (the rows ``kadam transfer`` reads)."""
    lrs = analysis.lr_grid(config)
    optimum_rows, regret_rows, rows, findings = [], [], [], []
    for (workload, regime, factor), optimum in study["optimum"].items():
        point, runs = optimum["point"], optimum["runs"]
        losses = [analysis.run_loss(run) for run in runs]
        mean, low, high = seed_interval(losses)
        edge = point["lr"] in (lrs[0], lrs[-1])
        optimum_rows.append(
            [
                workload,
                regime,
                f"{analysis.batch_of(config, factor)} (×{factor:g})",
                f"{point['lr']:.3g}" + (" (grid edge)" if edge else ""),
                f"{point['gamma']:.6g}",
                f"{mean:.4f} [{low:.4f}, {high:.4f}]",
            ]
        )
    for (workload, regime, factor, rule), entry in study["rules"].items():
        optimum = study["optimum"][(workload, regime, factor)]["runs"]
        row = {
            "workload": workload,
            "regime": regime,
            "factor": factor,
            "rule": rule,
            "point": entry["point"],
            **analysis.regret(entry["runs"], optimum),
        }
        rows.append(row)
        regret_rows.append(
            [
                workload,
                regime,
                f"×{factor:g}",
                rule,
                f"{entry['point']['lr']:.3g}",
                f"({entry['point']['beta']:.3g}, {entry['point']['gamma']:.5g})",
                f"{entry['point']['weight_decay']:.3g}",
                _interval(row),
                f"{row['tolerance']:.3f}",
                row["verdict"] + (f" ({row['diverged']} diverged)" if row["diverged"] else ""),
            ]
        )
    recommended, ranking_rows = [], []
    for regime in config.regimes:
        for factor in config.factors:
            ranked = analysis.ranking([r for r in rows if r["regime"] == regime and r["factor"] == factor])
            if regime == config.regimes[0] and ranked:
                recommended.append({"factor": factor, "rule": ranked[0][0], "relative": ranked[0][1]})
            ranking_rows.append(
                [regime, f"×{factor:g}", ", ".join(f"{rule} {value:+.1%}" for rule, value, _ in ranked)]
            )
    for rule in BATCH_RULES:
        mine = [r for r in rows if r["rule"] == rule and r["regime"] == config.regimes[0]]
        counts = {v: sum(r["verdict"] == v for r in mine) for v in ("holds", "fails", "not resolved")}
        findings.append(
            f"{rule} ({config.regimes[0]} regime): holds at {counts['holds']}, fails at {counts['fails']}, not resolved "
            f"at {counts['not resolved']} of {len(mine)} (workload, κ) points; mean relative regret "
            f"{sum(r['relative'] for r in mine) / max(1, len(mine)):+.1%}."
        )
    surge_rows = []
    surges = {}
    for workload in config.workloads:
        regime = config.regimes[0]
        sweeps = {
            factor: {lr: study["sweeps"][(workload, regime, factor)][(lr, config.gamma)] for lr in lrs}
            for factor in (1, *config.factors)
        }
        indices = analysis.tuned_lr_indices(sweeps, lrs)
        surges[workload] = {"verdict": analysis.surge(indices), "tuned_lr": {f: lrs[i] for f, i in indices.items()}}
        surge_rows.append(
            [
                workload,
                ", ".join(
                    f"{analysis.batch_of(config, f)}: {lrs[i]:.3g}" + ("*" if i in (0, len(lrs) - 1) else "")
                    for f, i in sorted(indices.items())
                ),
                surges[workload]["verdict"],
            ]
        )
        findings.append(
            f"{workload}: the tuned lr (γ₀ sweep, {regime} regime) by batch size "
            + ", ".join(f"{analysis.batch_of(config, f)} → {lrs[i]:.3g}" for f, i in sorted(indices.items()))
            + f": {surges[workload]['verdict']} (Li et al. 2024's surge: rise, then fall)."
        )
    lr_rows = []
    lr_outcomes = []
    for (workload, c, variant), runs in study["lr_transfer"].items():
        base = study["optimum"][(workload, config.regimes[0], 1)]["runs"]
        row = analysis.regret(runs, base)
        row["verdict"] = analysis.equivalence_verdict(row["low"], row["high"], row["tolerance"])
        lr_outcomes.append({"workload": workload, "factor": c, "variant": variant, **row})
        lr_rows.append([workload, f"×{c}", variant, _interval(row), f"{row['tolerance']:.3f}", row["verdict"]])
    tables = [
        Table(
            "Tuned optimum at each batch size (selected on validation at the tuning seeds; test loss at the evaluation "
            "seeds, mean [95% interval])",
            ["workload", "regime", "batch", "lr", "γ", "test loss"],
            optimum_rows,
        ),
        Table(
            "Regret of each rule: test loss at the rule's hyperparameters minus at the tuned optimum, paired over the "
            "evaluation seeds (mean [95% interval]); verdict against the tolerance",
            ["workload", "regime", "κ", "rule", "lr", "(β, γ)", "λ", "regret", "tolerance", "verdict"],
            regret_rows,
        ),
        Table(
            "Rules by mean relative regret (regret / loss removed by the tuned optimum) over the workloads",
            ["regime", "κ", "rules, best first"],
            ranking_rows,
        ),
        Table("The tuned lr by batch size (* at the grid's edge)", ["workload", "tuned lr", "shape"], surge_rows),
        Table(
            "Mini-batch lr transfer η → cη, steps/c at the base batch: test loss minus the base optimum's (paired)",
            ["workload", "c", "betas", "difference", "tolerance", "verdict"],
            lr_rows,
        ),
    ]
    figure_list = [
        Figure(
            plots.plot_regret(rows, str(figures / "transfer_regret.png")),
            "Regret of each batch-size rule against the tuned optimum at the new batch size, by batch factor κ, one "
            "panel per workload and regime (mean and 95% interval over the evaluation seeds; the shaded band is the "
            "tolerance). Below zero: the rule beat the optimum selected on the tuning seeds.",
        ),
        Figure(
            plots.plot_tuned_lr(surges, config, str(figures / "transfer_tuned_lr.png")),
            "The tuned learning rate (grid argmin of the mean validation loss, γ₀ sweep) against the batch size, "
            "with the square-root and linear rules' predictions from the base batch.",
        ),
    ]
    evidence = {
        "regimes": list(config.regimes),
        "factors": list(config.factors),
        "base_batch": config.base_batch,
        "workloads": list(config.workloads),
        "evaluation_seeds": len(config.evaluation_seeds),
        "tolerance_fraction": analysis.TOLERANCE_FRACTION,
        "rows": [{k: v for k, v in r.items()} for r in rows],
        "recommended": recommended,
        "surge": {
            w: {"verdict": v["verdict"], "tuned_lr": {str(f): lr for f, lr in v["tuned_lr"].items()}}
            for w, v in surges.items()
        },
        "lr_transfer": lr_outcomes,
        "optimum": [
            {
                "workload": w,
                "regime": r,
                "factor": f,
                "point": o["point"],
                "test_loss": [analysis.run_loss(x) for x in o["runs"]],
            }
            for (w, r, f), o in study["optimum"].items()
        ],
    }
    return tables, findings, figure_list, evidence


def _verdict(successes: int, failures: int, total: int) -> str:
    """Confirmed when the rule holds at every point, refuted when it fails at more than half of them."""
    if total == 0:
        return "not resolved at this budget"
    if successes == total:
        return "confirmed"
    return "refuted" if failures > total / 2 else "not resolved at this budget"


def _counted_claim(
    text: str, rows: Sequence[Mapping[str, Any]], points: str, extra: str, rule: str, seeds: int, source: str
) -> Claim:
    """A claim over points, each with a ``verdict`` (holds, fails, not resolved): confirmed when it holds at every
    point, refuted when it fails at more than half."""
    holds = sum(row["verdict"] == "holds" for row in rows)
    fails = sum(row["verdict"] == "fails" for row in rows)
    return Claim(
        text,
        budget_verdict(_verdict(holds, fails, len(rows)), seeds),
        f"within the tolerance at {holds} of {len(rows)} {points} points, outside at {fails}; {extra}",
        source=source,
        criterion=f"{rule}; confirmed where it holds at every point, refuted where it fails at more than half",
        seeds=seeds,
    )


def transfer_claims(lr_outcomes: Sequence[Mapping[str, Any]], evidence: Mapping[str, Any]) -> list[Claim]:
    """The section's claims.

    (1) Full batch, the paper's (THEORY §6): the exact-rate lr transfer (β^c, γ^c) keeps the loss-vs-t curve
    closer than the same betas, at every (problem, η, c) — ``lr_outcomes`` rows with the ``exact`` and ``naive``
    loss gaps; deterministic, confirmed at every point, refuted when it loses at more than half.
    (2) Mini-batch, the same rule: its final test loss within the tolerance of the base optimum's at every
    (workload, c) (``evidence["lr_transfer"]``, exact rows).
    (3) Each batch-size rule of :data:`kadam.transfer.BATCH_RULES` (the project's measurement of others' rules):
    confirmed when it holds (regret's upper bound within the tolerance) at every (workload, κ) of the first regime,
    refuted when it fails at more than half, otherwise not resolved.
    """
    claims = []
    if lr_outcomes:
        wins = sum(row["exact"] < row["naive"] for row in lr_outcomes)
        worst = max(row["exact"] for row in lr_outcomes)
        claims.append(
            Claim(
                "Learning-rate transfer η → cη with β → β^c, γ → γ^c keeps the full-batch trajectory (closer than "
                "keeping β, γ)",
                "confirmed"
                if wins == len(lr_outcomes)
                else "refuted"
                if wins < len(lr_outcomes) / 2
                else "not resolved at this budget",
                f"closer than the same betas at {wins} of {len(lr_outcomes)} (problem, η, c) points; largest gap "
                f"{worst:.2%} of the loss drop",
                source="paper",
                criterion="exact-rate gap below the same-betas gap at every point: confirmed; at fewer than half: "
                "refuted",
                seeds=None,
            )
        )
    seeds = evidence.get("evaluation_seeds", 0)
    lr_rows = evidence.get("lr_transfer", [])
    if lr_rows:
        naive_holds = sum(row["verdict"] == "holds" for row in lr_rows if row["variant"] == "naive")
        claims.append(
            _counted_claim(
                "In mini-batch training, η → cη with β → β^c, γ → γ^c (steps/c) keeps the final test loss",
                [row for row in lr_rows if row["variant"] == "exact"],
                "(workload, c)",
                f"(the same betas: within at {naive_holds})",
                "paired test-loss difference from the base optimum; holds where its whole 95% interval lies within "
                f"± {TOLERANCE_TEXT}",
                seeds,
                "paper",
            )
        )
    rows = [row for row in evidence.get("rows", []) if row["regime"] == (evidence.get("regimes") or ["samples"])[0]]
    for rule in BATCH_RULES:
        mine = [row for row in rows if row["rule"] == rule]
        if mine:
            claims.append(
                _counted_claim(
                    f"Batch-size rule {rule}, {RULE_TITLES[rule]}, trains as well as the tuned optimum at the new "
                    "batch size",
                    mine,
                    "(workload, κ)",
                    f"mean relative regret {sum(row['relative'] for row in mine) / len(mine):+.1%}",
                    "paired regret against the tuned optimum at equal samples; holds where its 95% upper bound is at "
                    f"most {TOLERANCE_TEXT}",
                    seeds,
                    "project",
                )
            )
    return claims
