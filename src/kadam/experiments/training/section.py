"""Section 4 of the report: k-Adam in training, compared with Adam and AdamW under one protocol.

Protocol (identical for every optimizer, so none gets a larger tuning budget):

1. *Tuning*: every optimizer trains each task at every learning rate of the same grid, same steps, same
   tuning seeds; the best rate is the one with the lowest mean **validation** loss (a diverged run counts
   as +∞).
2. *Evaluation*: at its best rate, each optimizer is retrained from fresh seeds (never used in tuning,
   ``1000 + i``); the section reports the **test** loss and accuracy, mean ± sample std.
3. *Paired comparison*: a seed fixes the initialisation and the batch order, so two optimizers on the same
   seed form a pair; the mean difference of test losses gets a two-sided Student-t interval and a
   difference is claimed only when the interval excludes zero (:func:`versus_reference_verdict`).
4. *The central pairing* (THEORY §4): Adam on the CNN **with** BatchNorm against 2-Adam (default strategy)
   on the same CNN **without** BatchNorm, paired by seed (:func:`central_pairing_verdict`).
5. *Learning-rate ratio*: each optimizer's best rate divided by AdamW's on the same task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kadam.experiments.cells import Cell
from kadam.experiments.profiles import Settings, TrainingConfig, plain, profile_sizes
from kadam.experiments.report import Claim, Figure, SectionDocument, Table, format_number
from kadam.experiments.sections import Section
from kadam.experiments.training import plots
from kadam.experiments.training.analysis import CENTRAL_PAIRING, REFERENCE, select_learning_rates, summarize_training
from kadam.experiments.training.protocol import train_run

__all__ = ["build_section", "central_pairing_verdict", "training_step_seconds", "versus_reference_verdict"]

_EVALUATION_SEED_OFFSET = 1000
_RUN_FIELDS = ("task", "optimizer", "lr", "seed", "steps", "diverged", "validation_loss", "validation_accuracy",
               "test_loss", "test_accuracy", "seconds")
"""The per-run numbers kept in results.json (the loss curves stay in the cache)."""



def training_step_seconds(task: str, sizes: Mapping[str, Any], batch_size: int, device: str) -> float:
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



def versus_reference_verdict(comparisons: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(significantly better, significantly worse) than the reference, sorted: a claim needs ``significant``
    (the interval excludes zero) and a negative (better) or positive (worse) mean test-loss difference."""
    better = sorted(n for n, c in comparisons.items() if c["significant"] and c["mean_difference"] < 0)
    worse = sorted(n for n, c in comparisons.items() if c["significant"] and c["mean_difference"] > 0)
    return better, worse


def central_pairing_verdict(difference: Mapping[str, Any], optimizer_a: str, optimizer_b: str) -> str:
    """The central pairing's verdict from the paired difference (first arm − second arm) of test losses."""
    if not difference["significant"]:
        return "no significant difference"
    if difference["mean_difference"] > 0:
        return f"{optimizer_b} without BatchNorm is significantly better"
    return f"{optimizer_a} with BatchNorm is significantly better"


def _training_cell(config: TrainingConfig, task: str, optimizer: str, lr: float, seed: int, device: str,
                   phase: str) -> Cell:
    spec = config.tasks[task]
    steps, batch_size = spec["steps"], config.batch_size
    return Cell(
        section="training",
        label=f"{phase} {task} {optimizer} lr={lr:.2g} seed={seed}",
        function=train_run,
        kwargs={"task": task, "optimizer": optimizer, "lr": lr, "steps": steps, "batch_size": batch_size,
                "seed": seed, "task_sizes": plain(spec["sizes"]), "device": device},
        cost=steps * training_step_seconds(task, spec["sizes"], batch_size, device),
    )


def build_section(settings: Settings) -> Section:
    config = profile_sizes(settings.profile).training
    seeds = settings.seeds or config.seeds
    tasks, optimizers = list(config.tasks), list(config.optimizers)
    tuning = [
        _training_cell(config, task, optimizer, lr, seed, settings.device, "tune")
        for task in tasks for optimizer in optimizers for lr in config.lr_grid for seed in config.tuning_seeds
    ]
    evaluation_seeds = [_EVALUATION_SEED_OFFSET + i for i in range(seeds)]

    def evaluation_cells(results: Mapping[str, Any]) -> list[Cell]:
        selection = select_learning_rates([results[cell.key] for cell in tuning])
        return [
            _training_cell(config, task, optimizer, selection[task][optimizer]["lr"], seed, settings.device, "eval")
            for task in tasks for optimizer in optimizers for seed in evaluation_seeds
        ]

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        summary = summarize_training(
            [results[cell.key] for cell in tuning], [results[cell.key] for cell in evaluation_cells(results)]
        )
        paths = plots.plot_training(summary, str(figures))
        runs = [{"phase": phase, **{key: run[key] for key in _RUN_FIELDS}}
                for phase, cells in (("tune", tuning), ("eval", evaluation_cells(results)))
                for run in (results[cell.key] for cell in cells)]
        return _training_document({**summary, "runs": runs}, config, evaluation_seeds, paths)

    followup_cost = sum(
        seeds * len(optimizers) * config.tasks[task]["steps"]
        * training_step_seconds(task, config.tasks[task]["sizes"], config.batch_size, settings.device)
        for task in tasks
    )
    configuration = {**plain(config.__dict__), "seeds": seeds, "evaluation_seeds": evaluation_seeds}
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



def _ordered(summary: Mapping[str, Any]) -> tuple[list[str], list[str], str]:
    """Tasks, optimizers (Adam and AdamW first) and the confidence level as text."""
    tasks = sorted(summary["evaluation"])
    optimizers = sorted(summary["optimizers"], key=lambda name: (name not in ("adam", "adamw"), name))
    confidence = f"{summary['confidence']:.0%}"
    return tasks, optimizers, confidence


def _tables(summary: Mapping[str, Any], evaluation_seeds: Sequence[int]) -> list[Table]:
    tasks, optimizers, confidence = _ordered(summary)
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

    return [table_rate, table_loss, table_accuracy, table_versus]


def _findings(summary: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, str]], list[Table]]:
    """Findings, headline pairs, and the central pairing's table (if both arms ran)."""
    tasks, optimizers, confidence = _ordered(summary)
    findings: list[str] = []
    headline: list[tuple[str, str]] = []
    for task in tasks:
        better, worse = versus_reference_verdict(summary["versus_adamw"][task])
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
    tables: list[Table] = []
    if central is not None:
        (task_a, optimizer_a), (task_b, optimizer_b) = CENTRAL_PAIRING
        difference = central["difference"]
        verdict = central_pairing_verdict(difference, optimizer_a, optimizer_b)
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
    return findings, headline, tables


def _training_document(summary: Mapping[str, Any], config: TrainingConfig, evaluation_seeds: Sequence[int],
                       figure_paths: Sequence[str]) -> SectionDocument:
    tasks = sorted(summary["evaluation"])
    optimizers = sorted(summary["optimizers"], key=lambda name: (name not in ("adam", "adamw"), name))
    confidence = f"{summary['confidence']:.0%}"
    method = (
        "Tasks (offline): a pre-LayerNorm character-level transformer on CPython's pydoc_data.topics text "
        "(char-transformer), a CNN on scikit-learn's digits with BatchNorm (digits-cnn-bn) and without "
        "(digits-cnn), a ReLU MLP on data generated by mnist1d's make_dataset (mnist1d-mlp). Steps per run: "
        + ", ".join(f"{task} {config.tasks[task]['steps']}" for task in tasks)
        + f"; mini-batches of {config.batch_size}.\n\n"
        "Protocol, identical for every optimizer: each trains every task at every learning rate of the grid "
        + ", ".join(format_number(lr, 2) for lr in config.lr_grid)
        + f" on tuning seed(s) {list(config.tuning_seeds)}; the rate with the lowest validation loss is kept; then "
        f"{len(evaluation_seeds)} fresh seeds ({evaluation_seeds[0]}…{evaluation_seeds[-1]}) are trained at that "
        "rate and scored on the held-out test split. A seed fixes the initialisation and the batch order, so runs "
        f"on the same seed are paired; differences get a {confidence} Student-t interval and are claimed only when "
        "the interval excludes zero (marked *). The intervals are not corrected for multiple comparisons: with "
        f"{len(optimizers) - 1} comparisons to AdamW on each of {len(tasks)} tasks, about "
        f"{(1 - summary['confidence']) * (len(optimizers) - 1) * len(tasks):.1f} claims are expected by chance alone "
        "when no optimizer differs.\n\n"
        "Optimizers: " + "; ".join(f"{name}: {summary['optimizers'][name]}" for name in optimizers) + "."
    )
    findings, headline, central_tables = _findings(summary)
    tables = _tables(summary, evaluation_seeds) + central_tables
    captions = {
        "training_curves.png": "Mean training loss (evaluation seeds, best rate) against training progress, per task.",
        "training_lr_grid.png": "Validation loss against learning rate on the tuning seed(s): the grid every optimizer "
                                "was tuned on, with the same budget.",
        "training_vs_adamw.png": f"Paired test-loss difference to AdamW with its {confidence} interval; coloured bars "
                                 "exclude zero (a claimed difference: blue better, red worse than AdamW), grey ones "
                                 "do not.",
    }
    return SectionDocument(
        "training", "k-Adam in training", method, findings, tables,
        [Figure(path, captions[Path(path).name]) for path in figure_paths], headline, dict(summary),
        claims=training_claims(summary),
    )


def training_claims(summary: Mapping[str, Any]) -> list[Claim]:
    """The k-Adam verdict of the fixed-budget protocol (2-Adam against AdamW, uncorrected intervals)."""
    rows = {task: entry["kadam2"] for task, entry in summary["versus_adamw"].items() if "kadam2" in entry}
    if not rows:
        return []
    better = [task for task, row in rows.items() if row["significant"] and row["mean_difference"] < 0]
    worse = [task for task, row in rows.items() if row["significant"] and row["mean_difference"] > 0]
    verdict = ("confirmed" if len(better) == len(rows) else "refuted" if worse and not better
               else "not resolved at this budget")
    return [Claim("2-Adam reaches a lower test loss than AdamW (fixed budget, shared learning-rate grid, "
                  "uncorrected intervals)", verdict,
                  f"interval excludes zero on {len(better) + len(worse)} of {len(rows)} tasks "
                  f"(better: {', '.join(better) or 'none'}; worse: {', '.join(worse) or 'none'})")]
