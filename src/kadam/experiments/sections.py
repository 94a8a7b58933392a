"""What each section of ``kadam reproduce`` runs, at which sizes per profile, and how it is reported.

Each section is a :class:`Section`: the cells it runs (phase 1), optionally cells that depend on phase 1's
results (phase 2; section 4's evaluation at the selected learning rates), and ``finish``, which turns the
results into a :class:`~kadam.experiments.report.SectionDocument` and draws its figures. The experiment
functions themselves live in the area modules (``stability``, ``flow``, ``normalization``, ``training``);
this module only chooses their sizes and reads their results.

Sizes per profile: ``STABILITY_PROFILES``, ``FLOW_PROFILES``, ``NORMALIZATION_PROFILES``,
``TRAINING_PROFILES`` below (each area module's recommended sizes, trimmed where the budget needed it).
Measured on the project's 2-core machine while ~6 other jobs shared it (load average 4–11), so wall times
are 2–4× the CPU times; the CPU time divided by the cores is what an idle machine would take:

- smoke (``--jobs 1``): 76 cells, 29 s of CPU; 136 s wall under that load.
- quick (``--jobs 2``, LR grid of 5 rates): 295 cells, 608 s of CPU (≈ 5 min on 2 idle cores); 18 min 46 s wall
  under that load. The grid has 6 rates since (≈ +10% CPU).
- full: not run here (no GPU was available to this task); ≈ 750 cells, estimated ≈ 5 GPU-hours of cells (the
  10k-step transformer runs dominate), so about an hour on one GPU with ``--jobs 4``–``8``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kadam.experiments.cells import Cell
from kadam.experiments.report import Figure, SectionDocument, Table, format_number

__all__ = ["Section", "Settings", "TRAINING_PROFILES", "build_sections"]


@dataclass(frozen=True)
class Settings:
    """The run's configuration (everything that changes a number is in a cell's kwargs, hence its key)."""

    profile: str
    device: str
    seeds: int | None


@dataclass
class Section:
    """A report section: its sizes, phase-1 cells, phase-2 cells (built from phase-1 results) and writer.

    ``finish(results_by_key, figures_directory)`` draws the figures and returns the document;
    ``followup_cost`` estimates phase 2's seconds before phase 1 has run (for the ETA).
    """

    name: str
    title: str
    configuration: dict[str, Any]
    cells: list[Cell]
    finish: Callable[[Mapping[str, Any], Path], SectionDocument]
    followup: Callable[[Mapping[str, Any]], list[Cell]] = lambda results: []
    followup_cost: float = 0.0


def _figure(figures: Path, name: str, draw: Callable[[str], Any], caption: str) -> Figure:
    path = str(figures / name)
    draw(path)
    return Figure(path, caption)


def _p_value(p: float) -> str:
    """A p-value as "= 0.03" or "< 0.001"."""
    return "< 0.001" if p < 1e-3 else f"= {p:.2g}"


def _signed_percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}%"


# ----------------------------------------------------------------------------------------------------------
# Section 1: stability of (β, γ) (THEORY §2, §3, §5)
# ----------------------------------------------------------------------------------------------------------

STABILITY_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"switch_off": {"point_limit": 6, "kadam2_points": [[[0.8, 0.9], [0.3, 0.5]]]},
              "margin": {"steps": 60, "batch_size": 32,
                         "sizes": {"corpus_chars": 20_000, "context": 16, "width": 16, "heads": 2, "layers": 1}}},
    "quick": {"switch_off": {},
              "margin": {"steps": 300, "batch_size": 32,
                         "sizes": {"corpus_chars": 60_000, "context": 16, "width": 16, "heads": 2, "layers": 1}}},
    "full": {"switch_off": {},
             "margin": {"steps": 1500, "batch_size": 32,
                        "sizes": {"corpus_chars": 100_000, "context": 16, "width": 16, "heads": 2, "layers": 1}}},
}
"""Section 1's sizes: the switch-off grid (``kadam.experiments.stability``'s full grid; smoke keeps 6 k = 1
points and one fast-settling k = 2 configuration),
the training protocol at ``stability.TRAINING_SIZES[profile]`` (one cell per learning rate), and the
stability-margin runs (char-transformer, mini-batches, Adam with each (β, γ) of the training grid)."""


def stability_training_protocol(betas: Sequence[float], gammas: Sequence[float], learning_rates: Sequence[float],
                                sizes: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`kadam.experiments.stability.training_experiment` with its sizes given as a plain (JSON) dict."""
    from kadam.experiments import stability

    return stability.training_experiment(betas, gammas, learning_rates, stability.TrainingSizes(**sizes), progress=False)


def _stability_section(settings: Settings) -> Section:
    from kadam.experiments import stability, training

    profile = STABILITY_PROFILES[settings.profile]
    grid = dict(stability.TRAINING_SIZES[settings.profile])
    learning_rates = list(grid.pop("learning_rates"))
    grid["sizes"] = dataclasses.asdict(grid["sizes"])
    grid["betas"], grid["gammas"] = list(grid["betas"]), list(grid["gammas"])
    points = len(grid["betas"]) * len(grid["gammas"])
    switch_off = Cell("stability", "switch-off protocol", "kadam.experiments.stability:switch_off_experiment",
                       {**profile["switch_off"], "progress": False}, cost=20.0 if not profile["switch_off"] else 5.0)
    protocol = [
        Cell("stability", f"training protocol lr={lr:g}", "kadam.experiments.sections:stability_training_protocol",
              {**grid, "learning_rates": [lr]}, cost=points * grid["sizes"]["steps"] * 2e-3)
        for lr in learning_rates
    ]
    margin = profile["margin"]
    margin_cells = [
        Cell("stability", f"margin lr={lr:g} β={beta} γ={gamma}", "kadam.experiments.training:train_run",
              {"task": "char-transformer", "optimizer": "adam", "lr": lr, "steps": margin["steps"],
               "batch_size": margin["batch_size"], "seed": 0, "task_sizes": margin["sizes"], "betas": [beta, gamma],
               "device": settings.device},
              cost=margin["steps"] * _training_step_seconds("char-transformer", margin["sizes"], margin["batch_size"],
                                                            settings.device))
        for lr in learning_rates for beta in grid["betas"] for gamma in grid["gammas"]
    ]

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        switch = results[switch_off.key]
        parts = [results[cell.key] for cell in protocol]
        merged = {**parts[0], "learning_rates": [lr for part in parts for lr in part["learning_rates"]],
                  "per_learning_rate": [row for part in parts for row in part["per_learning_rate"]],
                  "rows": [row for part in parts for row in part["rows"]]}
        correlation = training.stability_margin_correlation([results[cell.key] for cell in margin_cells])
        figure_list = [
            _figure(figures, "stability_region.png", stability.plot_region_map,
                    "The (β, γ) plane: log10 of the exact update bound B∞ (THEORY §2), the exact boundary γ = β² and "
                    "the paper-rate boundary γ = β/(2−β) (THEORY §3), common presets marked."),
            _figure(figures, "stability_training_heatmaps.png", lambda path: stability.plot_training_heatmaps(merged, path),
                    "Training protocol, one panel per learning rate: log10 max‖u_n‖∞ / C_n(β) per (β, γ) with both "
                    "boundaries; runs above the ceiling C_n are measured unstable."),
            _figure(figures, "stability_slopes.png", lambda path: stability.plot_slope_scatter(switch, merged, path),
                    "Measured against predicted growth rate ln β − ½ ln γ: switch-off protocol (optimizer alone) and "
                    "the late-phase slope of log‖u_n‖∞ in training."),
            _figure(figures, "stability_margin.png", lambda path: training.plot_stability_margin(correlation, path),
                    "Final validation loss of the character transformer (Adam, mini-batches) against the margin "
                    "½ ln γ − ln β to the boundary γ = β² (right of the red line: inside the stable region)."),
        ]
        k1_rows = [row for row in switch["rows"] if len(row["betas"]) == 1]
        findings = [
            f"Switch-off protocol: {len(k1_rows)} k = 1 points ({switch['points_k1_stable']} stable, "
            f"{switch['points_k1_unstable']} unstable) and {len(switch['rows']) - len(k1_rows)} k = 2 configurations; "
            f"largest |measured − predicted| slope {format_number(switch['max_abs_error'])} per step; every point within "
            f"tolerance: {'yes' if switch['all_within_tolerance'] else 'NO'}.",
        ]
        rows = []
        for entry in merged["per_learning_rate"]:
            rows.append([format_number(entry["learning_rate"], 2), f"{entry['measured_unstable']}/{entry['points']}",
                         str(entry["predicted_unstable_exact"]), str(entry["predicted_unstable_paper"]),
                         f"{entry['agreement_exact']:.0%}", f"{entry['agreement_paper']:.0%}"])
        counts = sorted(((e["learning_rate"], e["measured_unstable"]) for e in merged["per_learning_rate"]), reverse=True)
        as_eta_shrinks = [n for _, n in counts]  # largest η first
        if len(set(as_eta_shrinks)) == 1:
            trend = "the same count at every η of this grid: no dependence on η is visible at this resolution."
        elif all(a >= b for a, b in zip(as_eta_shrinks, as_eta_shrinks[1:])):
            trend = "fewer unstable points as η shrinks: the measured stable region widens, as the paper's reviewers observed."
        elif all(a <= b for a, b in zip(as_eta_shrinks, as_eta_shrinks[1:])):
            trend = "more unstable points as η shrinks: the measured stable region narrows, against the reviewers' observation."
        else:
            trend = "not monotone in η."
        findings.append("Training protocol: points measured unstable per learning rate "
                        + ", ".join(f"η = {lr:g}: {n}/{points}" for lr, n in counts) + f" — {trend}")
        for entry in correlation["per_learning_rate"]:
            rho = entry["spearman_rho"]
            verdict = ("no rank correlation can be computed" if rho is None else
                       (f"significant (p {_p_value(entry['p_value'])}): " + ("larger margin, lower validation loss, as the paper claims"
                                                      if rho < 0 else "larger margin, HIGHER validation loss, against the paper's claim"))
                       if entry["claimed"] else f"not significant (p {_p_value(entry['p_value'])})")
            findings.append(f"Margin vs validation loss at η = {entry['lr']:g}: Spearman ρ = "
                            f"{'—' if rho is None else format_number(rho, 3)} over {len(entry['points'])} runs; {verdict}.")
        headline = [
            ("switch-off: max |slope error|", f"{format_number(switch['max_abs_error'])} "
                                              f"({'all' if switch['all_within_tolerance'] else 'NOT all'} within tolerance)"),
            ("training protocol: agreement with γ=β² / paper, per η",
             "; ".join(f"{e['learning_rate']:g}: {e['agreement_exact']:.0%} / {e['agreement_paper']:.0%}"
                       for e in merged["per_learning_rate"])),
            ("margin vs validation loss: Spearman ρ (p), per η",
             "; ".join(f"{e['lr']:g}: " + ("—" if e["spearman_rho"] is None else f"{e['spearman_rho']:+.2f} (p {_p_value(e['p_value'])})")
                       for e in correlation["per_learning_rate"])),
        ]
        tables = [Table(
            "Training protocol per learning rate: points measured unstable, predicted unstable by each boundary, and "
            "agreement of the measured class with each boundary",
            ["η", "measured unstable", "predicted (γ = β²)", "predicted (paper)", "agreement γ = β²", "agreement paper"],
            rows,
        )]
        method = (
            "Switch-off protocol (the optimizer alone, THEORY §2): gradient 1 until the bias corrections settle, then 0; "
            "the fitted slope of ln|u_n| against the predicted ln β − ½ ln γ, through the real KAdam code "
            "(kadam.experiments.stability.switch_off_experiment). Training protocol (THEORY §5, the paper's): a small "
            "full-batch character transformer trained by Adam over a (β, γ) grid across both boundaries, per learning "
            f"rate ({', '.join(f'{lr:g}' for lr in learning_rates)}), {grid['sizes']['steps']} steps; runs classified by the "
            "certificate of kadam.experiments.stability.classify_run. Generalization against stability: the "
            f"mini-batch character transformer trained {margin['steps']} steps by Adam at every (β, γ) of the same grid "
            "and learning rate; Spearman rank correlation of final validation loss with the margin ½ ln γ − ln β."
        )
        data = {"switch_off": switch, "training_protocol": merged, "margin_correlation": correlation}
        return SectionDocument("stability", "Stability of (β, γ)", method, findings, tables, figure_list, headline, data)

    configuration = {"switch_off": profile["switch_off"], "training_protocol": {**grid, "learning_rates": learning_rates},
                     "margin": margin}
    return Section("stability", "Stability of (β, γ)", configuration, [switch_off, *protocol, *margin_cells], finish)


# ----------------------------------------------------------------------------------------------------------
# Section 2: the continuous-time model (THEORY §3)
# ----------------------------------------------------------------------------------------------------------

FLOW_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"accuracy": {"runs": [["quadratic", 1]], "steps": 300},
              "convergence": {"problems": ["quadratic"], "lrs": [4e-3, 2e-3], "horizon": 0.4}},
    "quick": {"accuracy": {"runs": [[p, k] for p in ("quadratic", "logistic") for k in (1, 2, 3)] + [["mlp", 1]],
                           "steps": 2000},
              "convergence": {"problems": ["quadratic"], "lrs": [4e-3, 2e-3, 1e-3, 4e-4], "horizon": 1.0},
              "first_step": ["mlp"]},
    "full": {"accuracy": {"runs": [[p, k] for p in ("quadratic", "logistic", "mlp") for k in (1, 2, 3)], "steps": 2000},
             "convergence": {"problems": ["quadratic", "logistic", "mlp"], "lrs": [4e-3, 2e-3, 1e-3, 4e-4], "horizon": 2.0},
             "first_step": ["quadratic", "logistic", "mlp"]},
}
"""Section 2's sizes, from those recommended in :mod:`kadam.experiments.flow`, trimmed to fit the budgets: the
accuracy runs as (problem, k) (quick: the MLP at k = 1 only, its ODE solve costs about 2 minutes on one
contended core), the convergence experiment at a fixed horizon η·steps over four rates spanning 10×, and
the first-step diagnostic (``first_step_experiment``) that shows where the model leaves its first-order regime."""

_FLOW_STEP_SECONDS = {"quadratic": 2e-3, "logistic": 5e-3, "mlp": 3e-2}
"""Rough seconds per simulated step of one continuous/discrete pair, per problem (ETA only; measured)."""


def _flow_section(settings: Settings) -> Section:
    from kadam.experiments import flow

    profile = FLOW_PROFILES[settings.profile]
    accuracy = profile["accuracy"]
    accuracy_cells = [
        Cell("flow", f"accuracy {problem} k={k}", "kadam.experiments.flow:accuracy_experiment",
              {"problems": [problem], "ks": [k], "steps": accuracy["steps"]},
              cost=accuracy["steps"] * _FLOW_STEP_SECONDS[problem] * (1 + (k - 1) / 2))
        for problem, k in accuracy["runs"]
    ]
    convergence = profile["convergence"]
    convergence_cells = [
        Cell("flow", f"convergence {problem}", "kadam.experiments.flow:convergence_experiment",
              {"problem": problem, "lrs": convergence["lrs"], "horizon": convergence["horizon"]},
              cost=sum(convergence["horizon"] / lr for lr in convergence["lrs"]) * 8 * _FLOW_STEP_SECONDS[problem])
        for problem in convergence["problems"]
    ]
    first_step_cells = [
        Cell("flow", f"first step {problem}", "kadam.experiments.flow:first_step_experiment", {"problem": problem},
             cost=5.0)
        for problem in profile.get("first_step", [])
    ]

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        parts = [results[cell.key] for cell in accuracy_cells]
        merged = {**parts[0], "rows": [row for part in parts for row in part["rows"]]}
        convergences = [results[cell.key] for cell in convergence_cells]
        figure_list = [_figure(figures, "flow_accuracy.png", lambda path: flow.plot_accuracy(merged, path),
                               f"Relative trajectory error ‖θ_cont − θ_disc‖ / ‖θ_disc − θ₀‖ against step at η = "
                               f"{merged['lr']:g} ({merged['rates']} rates, order {merged['order']}), per problem and k; "
                               "the dashed line is the 1% bar.")]
        figure_list += [
            _figure(figures, f"flow_convergence_{result['problem']}.png",
                    lambda path, result=result: flow.plot_convergence(result, path),
                    f"{result['problem']}: final relative error against η at the fixed horizon η·steps = "
                    f"{result['horizon']:g}, all four model variants (rates × order); the legend gives the log–log slopes.")
            for result in convergences
        ]
        accuracy_rows = [[row["problem"], str(row["k"]), format_number(row["max_rel_error"]),
                          format_number(row["final_rel_error"]), format_number(row["min_cosine"], 8),
                          "yes" if row["passes"] else "NO",
                          format_number(row["simulate_seconds"] / row["discrete_seconds"], 3)] for row in merged["rows"]]
        slope_rows = [[result["problem"], name, format_number(slope["final"], 3), format_number(slope["max"], 3),
                       format_number(result["per_lr"][-1]["variants"][name]["final_rel_error"])]
                      for result in convergences for name, slope in result["slopes"].items()]
        failing = [f"{row['problem']} k={row['k']}" for row in merged["rows"] if not row["passes"]]
        findings = [
            f"At η = {merged['lr']:g}, {merged['steps']} steps, {merged['rates']} rates, order {merged['order']}: largest "
            f"relative trajectory error {format_number(max(row['max_rel_error'] for row in merged['rows']))} "
            f"over {len(merged['rows'])} (problem, k) runs; "
            + (f"every run within the {merged['bar']:.0%} bar." if not failing else
               f"above the {merged['bar']:.0%} bar: {', '.join(failing)}."),
        ]
        for result in convergences:
            best = min(result["slopes"], key=lambda name: result["per_lr"][-1]["variants"][name]["final_rel_error"])
            findings.append(
                f"{result['problem']}: log–log slopes of the final error against η: "
                + ", ".join(f"{name} {slope['final']:.2f}" for name, slope in result["slopes"].items())
                + f"; smallest error at the smallest η: {best}."
            )
        first_steps = [results[cell.key] for cell in first_step_cells]
        for result in first_steps:
            rows = result["rows"]
            findings.append(
                f"{result['problem']}, first step: relative error {format_number(rows[0]['rel_error_step1'])} at "
                f"η = {rows[0]['lr']:g} falling to {format_number(rows[-1]['rel_error_step1'])} at η = {rows[-1]['lr']:g} "
                f"(log–log slopes between neighbouring η: {', '.join(f'{v:.2f}' for v in result['local_slopes'])}; "
                f"1 is first order). Fast coordinates, whose gradient changes by more "
                f"than its own size within the step (Adam's first step is sign-like there), carry "
                f"{rows[0]['fast_share']:.1%} of the step-1 gap at the largest η: where they exist, the model is not yet in "
                "its first-order regime, which is why the MLP misses the 1% bar at η = 1e-3."
            )
        first_order = [slope["final"] for result in convergences for name, slope in result["slopes"].items()
                       if name.endswith("order1")]
        headline = [
            ("max relative trajectory error (all problems, k)", format_number(max(row["max_rel_error"] for row in merged["rows"]))
             + (" (within 1%)" if not failing else " (ABOVE 1%)")),
            ("first-order slopes of error vs η", ", ".join(f"{value:.2f}" for value in first_order)),
        ]
        tables = [
            Table("Continuous model against the real KAdam, per problem and k", ["problem", "k", "max rel. error",
                  "final rel. error", "min cosine", "≤ 1%", "simulate / discrete time"], accuracy_rows),
            Table("Convergence in η at a fixed horizon: log–log slope of the error per variant",
                  ["problem", "variant", "slope (final error)", "slope (max error)", "final error at smallest η"], slope_rows),
            *[Table(f"{result['problem']}: the model's error after one step, and the fast coordinates behind it",
                    ["η", "relative error at step 1", "fast coordinates", "share of the step-1 gap"],
                    [[f"{row['lr']:g}", format_number(row["rel_error_step1"]), str(row["fast_coordinates"]),
                      f"{row['fast_share']:.1%}"] for row in result["rows"]])
              for result in first_steps],
        ]
        method = (
            "THEORY §3: the ODE model of Adam / AdamW / k-Adam integrated with torchdiffeq (kadam.flow) from the same "
            "start as the real KAdam, on three full-batch problems (an ill-conditioned quadratic, logistic regression "
            "and a tanh MLP on digits), with kadam.experiments.flow's accuracy and convergence experiments. The error "
            "is ‖θ_cont(n) − θ_disc(n)‖ / ‖θ_disc(n) − θ₀‖."
        )
        data = {"accuracy": merged, "convergence": convergences, "first_step": first_steps}
        return SectionDocument("flow", "The continuous-time model", method, findings, tables, figure_list, headline, data)

    return Section("flow", "The continuous-time model", dict(profile),
                   [*accuracy_cells, *convergence_cells, *first_step_cells], finish)


# ----------------------------------------------------------------------------------------------------------
# Section 3: normalization (THEORY §4)
# ----------------------------------------------------------------------------------------------------------

NORMALIZATION_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "random_walk": {"d": 256, "lr": 1e-2, "weight_decay": 0.5, "relaxation_times": 6},
        "meta_adaptive_exact": {"steps": 2000},
        "meta_adaptive_drift": {"steps": 2000, "lr": 1e-2, "weight_decay": 0.5},
        "meta_adaptive_network": {"steps": 300},
        "digits_norms": {"steps": 300},
        "digits_norms_runs": [("batch", "adamw", 0.1), ("layer", "adam", 0.0)],
        "census_warmup_steps": 20,
    },
    "quick": {
        "random_walk": {},
        "meta_adaptive_exact": {"steps": 2000},
        "meta_adaptive_drift": {"steps": 20_000},
        "meta_adaptive_network": {"steps": 3000},
        "digits_norms": {"steps": 4000},
        "digits_norms_runs": [(n, o, wd) for n in ("batch", "layer") for o, wd in (("adamw", 0.01), ("adamw", 0.1), ("adam", 0.0))],
        "census_warmup_steps": 100,
    },
    "full": {
        "random_walk": {"relaxation_times": 10},
        "meta_adaptive_exact": {"steps": 2000},
        "meta_adaptive_drift": {"steps": 50_000},
        "meta_adaptive_network": {"steps": 10_000},
        "digits_norms": {"steps": 20_000},
        "digits_norms_runs": [(n, o, wd) for n in ("batch", "layer") for o, wd in (("adamw", 0.01), ("adamw", 0.1), ("adam", 0.0))],
        "census_warmup_steps": 100,
    },
}
"""Section 3's sizes (those recommended in :mod:`kadam.experiments.normalization`), the digits-norms runs as
(normalization, optimizer, weight decay), and the scale-invariance census of section 4's task models."""

_NORMALIZATION_COST = {"random_walk": 25.0, "meta_adaptive_exact": 1.0, "meta_adaptive_drift": 60.0,
                       "meta_adaptive_network": 15.0, "digits_norms": 10.0}  # quick-profile seconds (module docstring)


def _explained_invariant(census: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a census measured invariant *and* explained by a normalization layer (THEORY §4), with sizes."""
    return [{**row, "tensor_size": int(np.prod(row["shape"]))} for row in census["report"]["rows"]
            if row["invariant"] and row["explanation"] is not None]


def _normalization_section(settings: Settings) -> Section:
    from kadam.experiments import normalization

    profile = NORMALIZATION_PROFILES[settings.profile]
    scale = {"smoke": 0.1, "quick": 1.0, "full": 4.0}[settings.profile]
    module = "kadam.experiments.normalization"
    single = {name: Cell("normalization", name.replace("_", " "), f"{module}:{name}", profile[name],
                          _NORMALIZATION_COST[name] * scale)
              for name in ("random_walk", "meta_adaptive_exact", "meta_adaptive_drift", "meta_adaptive_network")}
    norms = [
        Cell("normalization", f"digits norms {norm}Norm {optimizer} λ={wd:g}", f"{module}:digits_norms",
              {**profile["digits_norms"], "norm": norm, "optimizer": optimizer, "weight_decay": wd},
              _NORMALIZATION_COST["digits_norms"] * scale)
        for norm, optimizer, wd in profile["digits_norms_runs"]
    ]
    training_tasks = TRAINING_PROFILES[settings.profile]["tasks"]
    census = [
        Cell("normalization", f"scale-invariance census {task}", "kadam.experiments.tasks:scale_invariant_census",
              {"task": task, "task_sizes": spec["sizes"], "warmup_steps": profile["census_warmup_steps"]}, cost=2.0 * scale)
        for task, spec in training_tasks.items()
    ]

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        walk, exact, drift, network = (results[single[name].key] for name in
                                       ("random_walk", "meta_adaptive_exact", "meta_adaptive_drift", "meta_adaptive_network"))
        norm_runs = [results[cell.key] for cell in norms]
        census_runs = [results[cell.key] for cell in census]
        figure_list = [
            _figure(figures, "normalization_random_walk.png", lambda path: normalization.plot_random_walk(walk, path),
                    "Random walk of a scale-invariant tensor under AdamW: measured norm and angular update against the "
                    "corrected (momentum-correlation) and the orthogonal (paper's) predictions, per β."),
            _figure(figures, "normalization_meta_adaptive.png",
                    lambda path: normalization.plot_meta_adaptive(drift, network, path),
                    "Cosine between AdamW's direction and explicit 2-Adam's on the unit sphere (THEORY §4), noisy "
                    "quadratic and LayerNorm MLP on digits."),
        ]
        for run in norm_runs:
            name = f"normalization_norms_{run['task']}_{run['optimizer']}_wd{run['weight_decay']:g}.png"
            figure_list.append(_figure(
                figures, name, lambda path, run=run: normalization.plot_digits_norms(run, path),
                f"{run['task']} trained with {run['optimizer']} (λ = {run['weight_decay']:g}): per-layer norm and "
                "angular update, measured against both predictions."))
        walk_rows = [[format_number(b["beta"], 2), format_number(b["measured_norm"]), _signed_percent(b["corrected_norm_error"]),
                      _signed_percent(b["orthogonal_norm_error"]), format_number(b["measured_angular_update"]),
                      _signed_percent(b["corrected_angular_error"]), _signed_percent(b["orthogonal_angular_error"])]
                     for b in walk["by_beta"]]
        norm_rows = [[run["task"], run["optimizer"], format_number(run["weight_decay"], 2), layer["name"],
                      _signed_percent(layer.get("corrected_norm_error")), _signed_percent(layer.get("orthogonal_norm_error")),
                      _signed_percent(layer.get("corrected_angular_error")), _signed_percent(layer.get("orthogonal_angular_error"))]
                     for run in norm_runs for layer in run["layers"]]
        drift_rows = [[format_number(c["beta"], 2), format_number(c["gamma"], 3), c["norm"], format_number(c["final_cosine"], 6),
                       format_number(c["angular_update_ratio"]), format_number(c["predicted_ratio"])] for c in drift["configs"]]
        census_rows = [[run["task"], str(run["parameters"]),
                        ", ".join(f"{row['name']} ({row['explanation'] or 'no normalization follows: measured only'})"
                                  for row in run["report"]["rows"] if row["invariant"]) or "none",
                        f"{run['invariant_share']:.1%}"] for run in census_runs]
        worst_corrected = max(abs(b["corrected_norm_error"]) for b in walk["by_beta"])
        worst_corrected_angle = max(abs(b["corrected_angular_error"]) for b in walk["by_beta"])
        worst_orthogonal = max(abs(b["orthogonal_norm_error"]) for b in walk["by_beta"])
        findings = [
            f"Random walk (d = {walk['d']}, η = {walk['lr']:g}, λ = {walk['weight_decay']:g}): the corrected prediction is "
            f"off by at most {worst_corrected:.1%} in norm and {worst_corrected_angle:.1%} in angular update over β ∈ "
            f"{{{', '.join(format_number(b['beta'], 2) for b in walk['by_beta'])}}}; the orthogonal (paper's) one by up to "
            f"{worst_orthogonal:.1%} in norm.",
            f"Meta-adaptive link, exact case: AdamW with a normalized-gradient level 1 and explicit 2-Adam on the sphere "
            f"differ by at most {format_number(exact['max_direction_error'])} in direction over {exact['steps']} steps "
            f"(angle travelled {format_number(exact['angle_travelled'], 3)} rad).",
            "Meta-adaptive link with memory: final cosines "
            + ", ".join(f"β={c['beta']:g} {c['norm']}: {c['final_cosine']:.6f}" for c in drift["configs"])
            + "; AdamW/2-Adam angular-update ratios "
            + ", ".join(f"{c['angular_update_ratio']:.3f} (predicted {c['predicted_ratio']:.3f})" for c in drift["configs"]) + ".",
            "LayerNorm MLP on digits, AdamW vs 2-Adam on the sphere: "
            + "; ".join(f"β={c['beta']:g}: min cosine over layers {min(layer['final_cosine'] for layer in c['layers']):.4f}, "
                        f"test accuracy {c['adamw_test_accuracy']:.3f} vs {c['sphere_test_accuracy']:.3f}"
                        for c in network["configs"]) + ".",
            "Scale-invariant tensors in section 4's models: "
            + "; ".join(f"{run['task']}: {run['invariant_share']:.1%} of the parameters ({len(run['invariant_tensors'])} tensors, "
                        f"{sum(row['invariant'] and row['explanation'] is not None for row in run['report']['rows'])} "
                        "explained by a normalization layer that follows)" for run in census_runs) + ".",
        ]
        explained = {run["task"]: sum(row["tensor_size"] for row in _explained_invariant(run)) / run["parameters"]
                     for run in census_runs}
        if "char-transformer" in explained and explained["char-transformer"] < 0.05:
            findings.append(
                f"Only {explained['char-transformer']:.1%} of the pre-LN transformer's parameters sit in tensors that a "
                "normalization layer makes scale-invariant (pre-LN normalizes each block's input, not a weight's output), "
                "so THEORY §4's reading 'Adam + normalization ≈ 2-Adam' concerns the BatchNorm CNN far more than the "
                "transformer; section 4's transformer results test 2-Adam as an optimizer, not that equivalence.")

        headline = [
            ("random walk: worst corrected norm / angle error", f"{worst_corrected:.1%} / {worst_corrected_angle:.1%}"),
            ("random walk: worst orthogonal (paper) norm error", f"{worst_orthogonal:.1%}"),
            ("AdamW ≡ 2-Adam on sphere (exact case): max direction error", format_number(exact["max_direction_error"])),
            ("invariant share: " + ", ".join(run["task"] for run in census_runs),
             ", ".join(f"{run['invariant_share']:.0%}" for run in census_runs)),
        ]
        tables = [
            Table("Random walk: measured equilibrium norm and angular update, and each prediction's relative error",
                  ["β", "|W| measured", "corrected err", "orthogonal err", "angle measured", "corrected err", "orthogonal err"],
                  walk_rows),
            Table("AdamW vs explicit 2-Adam on the sphere with memory in level 1 (noisy quadratic)",
                  ["β", "γ", "level-1 mode", "final cosine", "angular ratio AdamW/2-Adam", "predicted ratio"], drift_rows),
            Table("Real training on digits: relative error of each prediction per scale-invariant layer, after the transient",
                  ["model", "optimizer", "λ", "layer", "norm (corrected)", "norm (orthogonal)", "angle (corrected)",
                   "angle (orthogonal)"], norm_rows),
            Table(f"Scale-invariant tensors found by measurement in section 4's models (after "
                  f"{profile['census_warmup_steps']} AdamW steps)",
                  ["task", "parameters", "invariant tensors (why)", "share of parameters"], census_rows),
        ]
        method = (
            "THEORY §4, with kadam.experiments.normalization's experiments at the sizes it recommends for this profile: "
            "a scale-invariant tensor driven by orthogonal noise under AdamW (random walk), the meta-adaptive link between "
            "AdamW and explicit 2-Adam on the unit sphere (exact case, with memory, and on a LayerNorm MLP), and MLPs "
            "with BatchNorm / LayerNorm trained on digits with per-layer norms tracked. Plus a census: "
            "kadam.normalization.find_scale_invariant on every model of section 4."
        )
        data = {"random_walk": walk, "meta_adaptive_exact": exact, "meta_adaptive_drift": drift,
                "meta_adaptive_network": network, "digits_norms": norm_runs, "census": census_runs}
        return SectionDocument("normalization", "Normalization and the meta-adaptive effect", method, findings, tables,
                               figure_list, headline, data)

    return Section("normalization", "Normalization and the meta-adaptive effect", dict(profile),
                   [*single.values(), *norms, *census], finish)


# ----------------------------------------------------------------------------------------------------------
# Section 4: k-Adam in training
# ----------------------------------------------------------------------------------------------------------

_HALF_DECADES = [round(10.0 ** (exponent / 2), 12) for exponent in range(-9, -1)]

TRAINING_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "optimizers": ["adam", "adamw", "kadam2"],
        "lr_grid": [1e-3, 1e-2],
        "tuning_seeds": [0],
        "seeds": 2,
        "batch_size": 32,
        "tasks": {
            "char-transformer": {"steps": 30, "sizes": {"corpus_chars": 20_000, "context": 16, "width": 16, "heads": 2,
                                                       "layers": 1, "evaluation_windows": 64}},
            "digits-cnn-bn": {"steps": 40, "sizes": {"channels": 4}},
            "digits-cnn": {"steps": 40, "sizes": {"channels": 4}},
            "mnist1d-mlp": {"steps": 40, "sizes": {"hidden": 32, "depth": 2}},
        },
    },
    "quick": {
        "optimizers": ["adam", "adamw", "kadam2", "kadam2-elementwise", "kadam2-naive", "kadam2-momentum-last", "kadam3"],
        "lr_grid": _HALF_DECADES[2:8],  # 3.2e-4 … 1e-1
        "tuning_seeds": [0],
        "seeds": 3,
        "batch_size": 32,
        "tasks": {
            "char-transformer": {"steps": 300, "sizes": {"corpus_chars": 60_000, "context": 32, "width": 32, "heads": 2,
                                                        "layers": 2, "evaluation_windows": 128}},
            "digits-cnn-bn": {"steps": 300, "sizes": {"channels": 8}},
            "digits-cnn": {"steps": 300, "sizes": {"channels": 8}},
            "mnist1d-mlp": {"steps": 500, "sizes": {"hidden": 64, "depth": 2}},
        },
    },
    "full": {
        "optimizers": ["adam", "adamw", "kadam2", "kadam2-elementwise", "kadam2-naive", "kadam2-momentum-last",
                       "kadam3", "kadam3-elementwise", "kadam3-naive", "kadam3-momentum-last"],
        "lr_grid": _HALF_DECADES[1:8],  # 1e-4 … 1e-1
        "tuning_seeds": [0],
        "seeds": 5,
        "batch_size": 64,
        "tasks": {
            "char-transformer": {"steps": 10_000, "sizes": {"corpus_chars": 465_000, "context": 128, "width": 128,
                                                           "heads": 4, "layers": 4, "evaluation_windows": 512}},
            "digits-cnn-bn": {"steps": 5_000, "sizes": {"channels": 32}},
            "digits-cnn": {"steps": 5_000, "sizes": {"channels": 32}},
            "mnist1d-mlp": {"steps": 10_000, "sizes": {"hidden": 256, "depth": 3}},
        },
    },
}
"""Section 4's sizes per profile. ``seeds`` is the default number of fresh evaluation seeds (``--seeds``
overrides it); tuning uses ``tuning_seeds``, never reused for evaluation (evaluation seeds are 1000 + i)."""

_EVALUATION_SEED_OFFSET = 1000
_RUN_FIELDS = ("task", "optimizer", "lr", "seed", "steps", "diverged", "validation_loss", "validation_accuracy",
               "test_loss", "test_accuracy", "seconds")
"""The per-run numbers kept in results.json (the loss curves stay in the cache)."""


def _training_step_seconds(task: str, sizes: Mapping[str, Any], batch_size: int, device: str) -> float:
    """Rough seconds per training step (for the ETA only): per-step overhead + FLOPs / throughput.

    Calibrated on one CPU core (≈ 1 ms overhead, 15 GFLOP/s) and guessed for one GPU (≈ 3 ms of kernel
    launches, 20 TFLOP/s); rich's ETA corrects the rate as cells finish.
    """
    if task == "char-transformer":
        width, context, layers = sizes["width"], sizes["context"], sizes["layers"]
        flops = 6 * batch_size * context * layers * (12 * width * width + 2 * context * width)
    elif task.startswith("digits"):
        channels = sizes["channels"]
        flops = 6 * batch_size * 64 * 9 * (channels + 2 * channels * channels)
    else:
        flops = 6 * batch_size * (40 * sizes["hidden"] + (sizes["depth"] - 1) * sizes["hidden"] ** 2)
    return 3e-3 + flops / 2e13 if device == "cuda" else 1e-3 + flops / 1.5e10


def _training_cell(profile: Mapping[str, Any], task: str, optimizer: str, lr: float, seed: int, device: str, phase: str) -> Cell:
    spec = profile["tasks"][task]
    steps, batch_size = spec["steps"], profile["batch_size"]
    return Cell(
        section="training",
        label=f"{phase} {task} {optimizer} lr={lr:.2g} seed={seed}",
        function="kadam.experiments.training:train_run",
        kwargs={"task": task, "optimizer": optimizer, "lr": lr, "steps": steps, "batch_size": batch_size,
                "seed": seed, "task_sizes": spec["sizes"], "device": device},
        cost=steps * _training_step_seconds(task, spec["sizes"], batch_size, device),
    )


def _training_section(settings: Settings) -> Section:
    from kadam.experiments import training

    profile = TRAINING_PROFILES[settings.profile]
    seeds = settings.seeds or profile["seeds"]
    tasks, optimizers = list(profile["tasks"]), profile["optimizers"]
    tuning = [
        _training_cell(profile, task, optimizer, lr, seed, settings.device, "tune")
        for task in tasks for optimizer in optimizers for lr in profile["lr_grid"] for seed in profile["tuning_seeds"]
    ]
    evaluation_seeds = [_EVALUATION_SEED_OFFSET + i for i in range(seeds)]

    def evaluation_cells(results: Mapping[str, Any]) -> list[Cell]:
        selection = training.select_learning_rates([results[cell.key] for cell in tuning])
        return [
            _training_cell(profile, task, optimizer, selection[task][optimizer]["lr"], seed, settings.device, "eval")
            for task in tasks for optimizer in optimizers for seed in evaluation_seeds
        ]

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        summary = training.summarize_training(
            [results[cell.key] for cell in tuning], [results[cell.key] for cell in evaluation_cells(results)]
        )
        paths = training.plot_training(summary, str(figures))
        runs = [{"phase": phase, **{key: run[key] for key in _RUN_FIELDS}}
                for phase, cells in (("tune", tuning), ("eval", evaluation_cells(results)))
                for run in (results[cell.key] for cell in cells)]
        return _training_document({**summary, "runs": runs}, profile, evaluation_seeds, paths)

    followup_cost = sum(
        seeds * len(optimizers) * profile["tasks"][task]["steps"]
        * _training_step_seconds(task, profile["tasks"][task]["sizes"], profile["batch_size"], settings.device)
        for task in tasks
    )
    configuration = {**profile, "seeds": seeds, "evaluation_seeds": evaluation_seeds}
    return Section("training", "k-Adam in training", configuration, tuning, finish, evaluation_cells, followup_cost)


def _plus_minus(stat: Mapping[str, Any]) -> str:
    if stat["mean"] is None:
        return f"diverged ×{stat['diverged']}"
    text = format_number(stat["mean"]) + ("" if stat["std"] is None else f" ± {format_number(stat['std'], 2)}")
    return text + (f" ({stat['diverged']} diverged)" if stat["diverged"] else "")


def _interval(comparison: Mapping[str, Any]) -> str:
    if comparison["mean_difference"] is None:
        return "— (a run diverged)"
    mark = " *" if comparison["significant"] else ""
    return (f"{comparison['mean_difference']:+.4f} [{comparison['ci_low']:+.4f}, {comparison['ci_high']:+.4f}]{mark}")


def _training_document(summary: Mapping[str, Any], profile: Mapping[str, Any], evaluation_seeds: Sequence[int],
                       figure_paths: Sequence[str]) -> SectionDocument:
    from kadam.experiments.training import CENTRAL_PAIRING, REFERENCE

    tasks = sorted(summary["evaluation"])
    optimizers = sorted(summary["optimizers"], key=lambda name: (name not in ("adam", "adamw"), name))
    confidence = f"{summary['confidence']:.0%}"
    method = (
        "Tasks (offline): a pre-LayerNorm character-level transformer on CPython's pydoc_data.topics text "
        "(char-transformer), a CNN on scikit-learn's digits with BatchNorm (digits-cnn-bn) and without "
        "(digits-cnn), a ReLU MLP on data generated by mnist1d's make_dataset (mnist1d-mlp). Steps per run: "
        + ", ".join(f"{task} {profile['tasks'][task]['steps']}" for task in tasks)
        + f"; mini-batches of {profile['batch_size']}.\n\n"
        "Protocol, identical for every optimizer: each trains every task at every learning rate of the grid "
        + ", ".join(format_number(lr, 2) for lr in profile["lr_grid"])
        + f" on tuning seed(s) {profile['tuning_seeds']}; the rate with the lowest validation loss is kept; then "
        f"{len(evaluation_seeds)} fresh seeds ({evaluation_seeds[0]}…{evaluation_seeds[-1]}) are trained at that "
        "rate and scored on the held-out test split. A seed fixes the initialisation and the batch order, so runs "
        f"on the same seed are paired; differences get a {confidence} Student-t interval and are claimed only when "
        "the interval excludes zero (marked *). The intervals are not corrected for multiple comparisons: with "
        f"{len(optimizers) - 1} comparisons to AdamW on each of {len(tasks)} tasks, about "
        f"{(1 - summary['confidence']) * (len(optimizers) - 1) * len(tasks):.1f} claims are expected by chance alone "
        "when no optimizer differs.\n\n"
        "Optimizers: " + "; ".join(f"{name}: {summary['optimizers'][name]}" for name in optimizers) + "."
    )
    table_rate = Table(
        "Best learning rate (validation) and its ratio to AdamW's on the same task (! = at the edge of the grid)",
        ["optimizer", *tasks],
        [[name] + [
            f"{format_number(summary['selection'][task][name]['lr'], 2)} (×{format_number(summary['lr_ratio_to_adamw'][task][name], 2)})"
            + (" !" if summary["selection"][task][name]["at_grid_edge"] else "")
            for task in tasks] for name in optimizers],
    )
    table_loss = Table(
        f"Test loss, mean ± std over {len(evaluation_seeds)} fresh seeds, at each optimizer's best rate",
        ["optimizer", *tasks],
        [[name] + [_plus_minus(summary["evaluation"][task][name]["test_loss"]) for task in tasks] for name in optimizers],
    )
    table_accuracy = Table(
        "Test accuracy (next-character accuracy for char-transformer), mean ± std",
        ["optimizer", *tasks],
        [[name] + [_plus_minus(summary["evaluation"][task][name]["test_accuracy"]) for task in tasks] for name in optimizers],
    )
    table_versus = Table(
        f"Paired test-loss difference to AdamW (negative: better than AdamW), mean [{confidence} CI]",
        ["optimizer", *tasks],
        [[name] + [_interval(summary["versus_adamw"][task][name]) for task in tasks] for name in optimizers if name != REFERENCE],
    )

    findings: list[str] = []
    headline: list[tuple[str, str]] = []
    for task in tasks:
        better = [n for n, c in summary["versus_adamw"][task].items() if c["significant"] and c["mean_difference"] < 0]
        worse = [n for n, c in summary["versus_adamw"][task].items() if c["significant"] and c["mean_difference"] > 0]
        findings.append(
            f"{task}: significantly better than AdamW: {', '.join(sorted(better)) or 'none'}; significantly worse: "
            f"{', '.join(sorted(worse)) or 'none'}; every other difference is within the {confidence} interval."
        )
        if "kadam2" in summary["versus_adamw"][task]:
            headline.append((f"{task}: 2-Adam − AdamW test loss", _interval(summary["versus_adamw"][task]["kadam2"])))
    ratios = {name: [summary["lr_ratio_to_adamw"][task][name] for task in tasks] for name in optimizers}
    findings.append(
        "Best learning rate relative to AdamW's (geometric mean over tasks): "
        + ", ".join(f"{name} ×{format_number(float(np.exp(np.mean(np.log(r)))), 2)}" for name, r in ratios.items())
        + "."
    )
    edges = sorted({f"{name} on {task}" for task in tasks for name in optimizers if summary["selection"][task][name]["at_grid_edge"]})
    if edges:
        findings.append("Best rate at the edge of the grid (the optimum may lie outside it): " + "; ".join(edges) + ".")
    central = summary["central_pairing"]
    tables = [table_rate, table_loss, table_accuracy, table_versus]
    if central is not None:
        (task_a, optimizer_a), (task_b, optimizer_b) = CENTRAL_PAIRING
        difference = central["difference"]
        verdict = ("no significant difference" if not difference["significant"] else
                   (f"{optimizer_b} without BatchNorm is significantly better" if difference["mean_difference"] > 0
                    else f"{optimizer_a} with BatchNorm is significantly better"))
        findings.append(
            f"Central pairing (THEORY §4): {optimizer_a} on {task_a} reaches test loss "
            f"{_plus_minus(central['first']['test_loss'])}, {optimizer_b} on {task_b} {_plus_minus(central['second']['test_loss'])}; "
            f"paired difference {_interval(difference)}: {verdict}."
        )
        headline.append(("Adam+BN − 2-Adam (no BN) test loss", _interval(difference) + f" → {verdict}"))
        tables.append(Table(
            "Central pairing: Adam on the CNN with BatchNorm vs 2-Adam on the same CNN without",
            ["arm", "task", "optimizer", "lr", "test loss", "test accuracy"],
            [[arm, central[arm]["task"], central[arm]["optimizer"], format_number(central[arm]["lr"], 2),
              _plus_minus(central[arm]["test_loss"]), _plus_minus(central[arm]["test_accuracy"])] for arm in ("first", "second")],
        ))
    captions = {
        "training_curves.png": "Mean training loss (evaluation seeds, best rate) against training progress, per task.",
        "training_lr_grid.png": "Validation loss against learning rate on the tuning seed(s): the grid every optimizer "
                                "was tuned on, with the same budget.",
        "training_vs_adamw.png": f"Paired test-loss difference to AdamW with its {confidence} interval; red bars "
                                 "exclude zero (a claimed difference), grey ones do not.",
    }
    return SectionDocument(
        "training", "k-Adam in training", method, findings, tables,
        [Figure(path, captions[Path(path).name]) for path in figure_paths], headline, dict(summary),
    )


def build_sections(settings: Settings) -> list[Section]:
    """The report's sections for ``settings``, in report order."""
    return [_stability_section(settings), _flow_section(settings), _normalization_section(settings),
            _training_section(settings)]
