"""Section "transfer": do the rules of THEORY §6 hold for discrete AdamW?"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kadam.experiments.cells import Cell
from kadam.experiments.profiles import profile_sizes
from kadam.experiments.report import Claim, Figure, SectionDocument, Table, format_number
from kadam.experiments.sections import Section
from kadam.experiments.transfer import plots
from kadam.experiments.transfer.protocol import BATCH_RULES, batch_gaps, batch_transfer_cell, lr_transfer_cell

_LR_STEP_SECONDS = {"quadratic": 1e-3, "logistic": 4e-3, "mlp": 2e-2}
_BATCH_SAMPLE_SECONDS = {"digits-cnn": 5e-4, "char-transformer": 2e-3}


def build_section(settings: Any) -> Section:
    """The transfer section at ``settings.profile``'s sizes (:func:`~kadam.experiments.profiles.profile_sizes`)."""
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
    ]
    batch_cells: dict[tuple[str, int, str, int], Cell] = {}
    for task in config.batch_tasks:
        common = {
            "task": task,
            "base_batch": config.base_batch,
            "base_lr": config.base_lr[task],
            "samples": config.samples,
            "checkpoints": config.checkpoints,
            "task_sizes": config.task_sizes.get(task, {}),
        }
        cost = _BATCH_SAMPLE_SECONDS[task] * config.samples
        for seed in config.seeds:
            batch_cells[(task, 1, "base", seed)] = Cell(
                "transfer", f"batch {task} base seed {seed}", batch_transfer_cell, {**common, "seed": seed}, cost
            )
            for factor in config.batch_factors:
                for rule in BATCH_RULES:
                    batch_cells[(task, factor, rule, seed)] = Cell(
                        "transfer",
                        f"batch {task} ×{factor} {rule} seed {seed}",
                        batch_transfer_cell,
                        {**common, "factor": factor, "rule": rule, "seed": seed},
                        cost,
                    )
        noise_seed = max(config.seeds) + 1
        batch_cells[(task, 1, "base", noise_seed)] = Cell(
            "transfer",
            f"batch {task} base seed {noise_seed} (noise)",
            batch_transfer_cell,
            {**common, "seed": noise_seed},
            cost,
        )

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        return _document(
            config,
            [results[cell.key] for cell in lr_cells],
            {key: results[cell.key] for key, cell in batch_cells.items()},
            figures,
        )

    return Section(
        "transfer",
        "Hyperparameter transfer (THEORY §6)",
        dataclasses.asdict(config),
        [*lr_cells, *batch_cells.values()],
        finish,
    )


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
    batch_rows, batch_outcomes = [], []
    for task in config.batch_tasks:
        seed = config.seeds[0]
        base = batch[(task, 1, "base", seed)]
        noise_seed = max(config.seeds) + 1
        noise = batch_gaps(base, [batch[(task, 1, "base", noise_seed)]])[0]["max_gap"]
        runs = [batch[(task, factor, rule, seed)] for factor in config.batch_factors for rule in BATCH_RULES]
        gaps = batch_gaps(base, runs)
        for gap in gaps:
            batch_rows.append(
                [
                    task,
                    f"×{gap['factor']}",
                    gap["rule"],
                    format_number(gap["lr"], 3),
                    f"({gap['betas'][0]:.3g}, {gap['betas'][1]:.4g})",
                    format_number(gap["max_gap"], 3),
                    format_number(gap["final_difference"], 3),
                    format_number(noise, 3),
                ]
            )
        for factor in config.batch_factors:
            by_rule = {gap["rule"]: gap for gap in gaps if gap["factor"] == factor}
            best = min(by_rule, key=lambda rule: by_rule[rule]["max_gap"])
            holds = [rule for rule, gap in by_rule.items() if gap["max_gap"] <= 2 * noise]
            batch_outcomes.append({"task": task, "factor": factor, "holds": holds, "best": best})
            findings.append(
                f"{task}, batch ×{factor}: closest to the base curve: {best} (gap {by_rule[best]['max_gap']:.3g}; sqrt "
                f"{by_rule['sqrt']['max_gap']:.3g}, linear {by_rule['linear']['max_gap']:.3g}, unchanged "
                f"{by_rule['unchanged']['max_gap']:.3g}; seed-to-seed gap {noise:.3g}); within twice the seed gap: "
                + (", ".join(holds) if holds else "none (every rule fails here)")
                + "."
            )
        figure_list.append(
            Figure(
                plots.plot_batch_transfer(task, base, runs, str(figures / f"transfer_batch_{task}.png")),
                f"{task}: validation loss against samples seen, base batch {base['batch']} and ×κ under each rule.",
            )
        )
    tables = [
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
        Table(
            "Mini-batch: largest validation-loss gap from the base batch at equal samples seen",
            ["task", "batch", "rule", "lr", "(β, γ)", "max gap", "final difference", "seed-to-seed gap"],
            batch_rows,
        ),
    ]
    method = (
        "THEORY §6 with kadam.transfer. Full batch: AdamW (λ = 0.01, (0.9, 0.999)) at η and at c·η with the exact-rate "
        "betas (β^c, γ^c), the paper-rate betas and the same betas, compared at equal t = η·step. Mini-batch: AdamW at "
        "the base batch against ×κ batches under the square-root rule (Malladi et al. 2022), linear lr scaling and no "
        "change, compared by validation loss at equal samples seen; a second seed of the base run gives the noise floor."
    )
    headline = [
        ("transfer: rules that hold", "; ".join(findings[-len(config.batch_factors) :])[:200] if findings else "—")
    ]
    data = {"lr": lr_results, "batch": {"|".join(map(str, key)): value for key, value in batch.items()}}
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
        claims=transfer_claims(lr_outcomes, batch_outcomes),
    )


def _verdict(successes: int, total: int) -> str:
    """Confirmed when the rule holds at every point, refuted when it fails at more than half of them."""
    if total == 0:
        return "not resolved at this budget"
    if successes == total:
        return "confirmed"
    return "refuted" if successes < total / 2 else "not resolved at this budget"


def transfer_claims(
    lr_outcomes: Sequence[Mapping[str, Any]], batch_outcomes: Sequence[Mapping[str, Any]]
) -> list[Claim]:
    """The section's claims: (1) the exact-rate lr transfer (β^c, γ^c) keeps the full-batch loss-vs-t curve closer
    than the same betas, at every (problem, η, c) — ``lr_outcomes`` rows with the ``exact`` and ``naive`` loss gaps;
    (2) the square-root batch rule (and, as the alternative, linear lr scaling) keeps the validation loss against
    samples seen within twice the seed-to-seed gap, at every (task, κ) — ``batch_outcomes`` rows with ``holds``
    (the rules that did) and ``best`` (the closest rule). Each verdict: confirmed at every point, refuted at more
    than half of the points failing, otherwise not resolved."""
    claims = []
    if lr_outcomes:
        wins = sum(row["exact"] < row["naive"] for row in lr_outcomes)
        worst = max(row["exact"] for row in lr_outcomes)
        claims.append(
            Claim(
                "Learning-rate transfer η → cη with β → β^c, γ → γ^c keeps the full-batch trajectory (closer than keeping β, γ)",
                _verdict(wins, len(lr_outcomes)),
                f"closer than the same betas at {wins} of {len(lr_outcomes)} (problem, η, c) points; largest gap "
                f"{worst:.2%} of the loss drop",
            )
        )
    if batch_outcomes:
        for rule, text in (
            (
                "sqrt",
                "The square-root batch-size rule (Malladi et al. 2022: η·√κ, 1 − β and 1 − γ "
                "scaled by κ, ε/√κ) keeps the loss against samples seen",
            ),
            ("linear", "Linear learning-rate scaling η·κ (betas kept) keeps the loss against samples seen"),
        ):
            holds = sum(rule in row["holds"] for row in batch_outcomes)
            best = sum(row["best"] == rule for row in batch_outcomes)
            claims.append(
                Claim(
                    text + " (within twice the seed-to-seed gap)",
                    _verdict(holds, len(batch_outcomes)),
                    f"within twice the seed gap at {holds} of {len(batch_outcomes)} (task, κ) points; the closest rule at "
                    f"{best}",
                )
            )
    return claims
