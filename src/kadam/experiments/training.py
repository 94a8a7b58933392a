"""Section 4 of the report: k-Adam in training, compared with Adam and AdamW under one protocol.

**Optimizers** (``OPTIMIZERS``; KAdam levels follow THEORY §1, level 1 always (0.9, 0.999) elementwise
unless stated):

- ``adam``: ``torch.optim.Adam`` (no weight decay); ``adamw``: ``torch.optim.AdamW`` (λ = 0.01).
- ``kadam2`` — *default strategy*, k = 2: level 2 is (β, γ) = (0, 0.999) in tensor mode, the level a
  normalization layer applies implicitly (THEORY §4); KAdam's defaults.
- ``kadam2-elementwise`` — *elementwise strategy*: as the default, but level 2 keeps one second moment per
  element.
- ``kadam2-naive`` — *naive strategy*: every level (0.9, 0.999) elementwise (Adam stacked on Adam).
- ``kadam2-momentum-last`` — *momentum only at the last level*: level 1 (0, 0.999) elementwise, level 2
  (0.9, 0.999) tensor mode; the momentum averages the normalized updates instead of the raw gradients.
- ``kadam3`` (default strategy, k = 3) and, in the full profile, ``kadam3-elementwise``, ``kadam3-naive``,
  ``kadam3-momentum-last`` (the same strategies at k = 3; momentum-last has β = 0 on levels 1..2).
All KAdam variants use decoupled weight decay λ = 0.01 (AdamW's default), ε = 1e-8 at every level.

**Protocol** (identical for every optimizer, so none gets a larger tuning budget):

1. *Tuning*: every optimizer trains each task at every learning rate of the same grid, same steps, same
   tuning seeds; the best rate is the one with the lowest mean **validation** loss (a diverged run counts
   as +∞).
2. *Evaluation*: at its best rate, each optimizer is retrained from ``seeds`` fresh seeds (never used in
   tuning); we report the **test** loss and accuracy, mean ± sample std.
3. *Paired comparison*: a seed fixes the initialisation and the batch order, so two optimizers on the same
   seed form a pair. The mean difference of test losses gets a two-sided Student-t confidence interval
   (``confidence``, default 95%) on the n − 1 degrees of freedom of the paired differences; a difference
   is claimed only when the interval excludes zero. Each optimizer is paired with AdamW on every task.
4. *The central pairing* (THEORY §4): Adam on the CNN **with** BatchNorm against 2-Adam (default strategy)
   on the same CNN **without** BatchNorm, paired by seed (same data order; the initialisations differ only
   where the architectures do).
5. *Learning-rate ratio*: each optimizer's best rate divided by AdamW's on the same task, so users know how
   to move their AdamW rate when they switch.

Sizes per profile are chosen by :mod:`kadam.experiments.reproduce`; the recommended ones are there, with
the times measured for them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from kadam.experiments.figures import pyplot, save_figure
from kadam.experiments.tasks import build_task, parameter_count
from kadam.optimizer import KAdam

__all__ = [
    "OPTIMIZERS",
    "CENTRAL_PAIRING",
    "OptimizerSpec",
    "make_optimizer",
    "train_run",
    "select_learning_rates",
    "paired_comparison",
    "summarize_training",
    "plot_training",
    "stability_margin_correlation",
    "plot_stability_margin",
]

WEIGHT_DECAY = 0.01
"""Decoupled weight decay of AdamW and every KAdam variant (AdamW's default)."""


@dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer configuration: ``build(params, lr)`` and a one-line description for the report."""

    description: str
    build: Callable[[Iterable[torch.nn.Parameter], float, tuple[float, float] | None], torch.optim.Optimizer]


def _kadam(k: int, strategy: str) -> OptimizerSpec:
    """KAdam with ``k`` levels under one per-level ``strategy`` (see the module docstring)."""
    first = (0.9, 0.999)
    if strategy == "default":
        description = f"{k}-Adam, levels ≥ 2 (0, 0.999) tensor mode"
        options: dict[str, Any] = {"betas": first, "meta_betas": (0.0, 0.999), "meta_norm": "tensor"}
    elif strategy == "elementwise":
        description = f"{k}-Adam, levels ≥ 2 (0, 0.999) elementwise"
        options = {"betas": first, "meta_betas": (0.0, 0.999), "meta_norm": "elementwise"}
    elif strategy == "naive":
        description = f"{k}-Adam, every level (0.9, 0.999) elementwise"
        options = {"betas": [first] * k, "norm": ["elementwise"] * k}
    elif strategy == "momentum-last":
        description = f"{k}-Adam, β = 0.9 at level {k} only (tensor), others (0, 0.999)"
        options = {"betas": [(0.0, 0.999)] * (k - 1) + [first], "norm": ["elementwise"] + ["tensor"] * (k - 1)}
    else:
        raise ValueError(f"strategy must be one of default, elementwise, naive, momentum-last; got {strategy!r}")

    def build(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] | None) -> torch.optim.Optimizer:
        chosen = dict(options)
        if betas is not None:  # replaces level 1's (β, γ) only
            chosen["betas"] = [tuple(betas), *options["betas"][1:]] if isinstance(options["betas"], list) else tuple(betas)
        return KAdam(params, lr=lr, k=k, weight_decay=WEIGHT_DECAY, **chosen)

    return OptimizerSpec(description, build)


OPTIMIZERS: Mapping[str, OptimizerSpec] = {
    "adam": OptimizerSpec(
        "torch Adam, (0.9, 0.999), no weight decay",
        lambda p, lr, betas: torch.optim.Adam(p, lr=lr, betas=betas or (0.9, 0.999)),
    ),
    "adamw": OptimizerSpec(
        f"torch AdamW, (0.9, 0.999), λ = {WEIGHT_DECAY}",
        lambda p, lr, betas: torch.optim.AdamW(p, lr=lr, betas=betas or (0.9, 0.999), weight_decay=WEIGHT_DECAY),
    ),
    "kadam2": _kadam(2, "default"),
    "kadam2-elementwise": _kadam(2, "elementwise"),
    "kadam2-naive": _kadam(2, "naive"),
    "kadam2-momentum-last": _kadam(2, "momentum-last"),
    "kadam3": _kadam(3, "default"),
    "kadam3-elementwise": _kadam(3, "elementwise"),
    "kadam3-naive": _kadam(3, "naive"),
    "kadam3-momentum-last": _kadam(3, "momentum-last"),
}
"""Optimizer name → :class:`OptimizerSpec`; the module docstring documents each strategy."""

REFERENCE = "adamw"
CENTRAL_PAIRING = (("digits-cnn-bn", "adam"), ("digits-cnn", "kadam2"))
"""(task, optimizer) of the two arms of THEORY §4's pairing: Adam with BatchNorm vs 2-Adam without."""


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, betas: Sequence[float] | None = None
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (a key of ``OPTIMIZERS``) at a finite learning rate ``lr`` > 0.

    ``betas`` = (β, γ) replaces level 1's pair (for a (β, γ) sweep); None keeps the documented one.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    return OPTIMIZERS[name].build(params, lr, None if betas is None else (float(betas[0]), float(betas[1])))


def train_run(
    task: str,
    optimizer: str,
    lr: float,
    steps: int,
    batch_size: int,
    seed: int,
    task_sizes: Mapping[str, Any] | None = None,
    device: str = "cpu",
    curve_points: int = 50,
    betas: Sequence[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train ``task`` with ``optimizer`` at ``lr`` for ``steps`` mini-batches of ``batch_size``.

    ``betas`` = (β, γ) overrides the optimizer's level-1 pair (see :func:`make_optimizer`).
    ``seed`` fixes the initialisation and the batch order. Returns the training-loss curve (the mean of the
    mini-batch losses over each of ``curve_points`` equal windows), validation and test loss/accuracy at the
    end, the wall time, and ``diverged`` (a non-finite training loss stops the run; its losses are then
    ``None``). ``progress(done, total)`` is called every few steps.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be ≥ 1, got steps={steps}, batch_size={batch_size}")
    started = time.perf_counter()
    built = build_task(task, device, **(task_sizes or {}))
    torch.manual_seed(seed)
    model = built.make_model().to(device)
    model.train()
    optimizer_instance = make_optimizer(optimizer, model.parameters(), lr, betas)
    generator = torch.Generator().manual_seed(seed)
    window = max(1, steps // curve_points)
    curve, diverged = built.fit(model, optimizer_instance, steps, batch_size, generator, window, progress)
    result: dict[str, Any] = {
        "task": task, "optimizer": optimizer, "lr": lr, "seed": seed, "steps": steps,
        "betas": None if betas is None else [float(b) for b in betas],
        "parameters": parameter_count(model), "train_loss_curve": curve, "curve_window": window, "diverged": diverged,
    }
    for split in ("validation", "test"):
        metrics = None if diverged else built.evaluate(model, split)
        if metrics is not None and not math.isfinite(metrics["loss"]):
            diverged = result["diverged"] = True
            metrics = None
        result[f"{split}_loss"] = None if metrics is None else metrics["loss"]
        result[f"{split}_accuracy"] = None if metrics is None else metrics["accuracy"]
    result["seconds"] = time.perf_counter() - started
    return result


def _loss_or_infinity(run: Mapping[str, Any], split: str) -> float:
    value = run[f"{split}_loss"]
    return math.inf if value is None else float(value)


def select_learning_rates(tuning_runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Best learning rate per (task, optimizer): the lowest mean validation loss over the tuning seeds.

    Returns ``{task: {optimizer: {"lr", "validation_loss", "grid": {lr: mean validation loss or None}}}}``.
    A diverged run counts as +∞; ties keep the smaller rate. ``at_grid_edge`` flags a best rate on the
    boundary of the grid (the optimum may lie outside it).
    """
    grouped: dict[tuple[str, str], dict[float, list[float]]] = {}
    for run in tuning_runs:
        grouped.setdefault((run["task"], run["optimizer"]), {}).setdefault(run["lr"], []).append(
            _loss_or_infinity(run, "validation")
        )
    selection: dict[str, dict[str, dict[str, Any]]] = {}
    for (task, optimizer), by_rate in sorted(grouped.items()):
        means = {lr: float(np.mean(losses)) for lr, losses in sorted(by_rate.items())}
        best = min(means, key=lambda lr: (means[lr], lr))
        rates = sorted(means)
        selection.setdefault(task, {})[optimizer] = {
            "lr": best,
            "validation_loss": means[best] if math.isfinite(means[best]) else None,
            "at_grid_edge": best in (rates[0], rates[-1]) and len(rates) > 1,
            "grid": {repr(lr): (loss if math.isfinite(loss) else None) for lr, loss in means.items()},
        }
    return selection


def paired_comparison(first: Sequence[float], second: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired Student-t comparison of ``first − second`` (e.g. test losses of two optimizers, seed by seed).

    Differences d_i = first_i − second_i; mean d̄, sample std s, interval d̄ ± t_{(1+c)/2, n−1} · s/√n.
    ``significant`` is True only when the interval excludes zero. Needs n ≥ 2 pairs.
    """
    if len(first) != len(second):
        raise ValueError(f"first and second must pair up, got {len(first)} and {len(second)} values")
    if len(first) < 2:
        raise ValueError(f"a paired comparison needs at least 2 pairs, got {len(first)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    differences = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    n = len(differences)
    if not np.all(np.isfinite(differences)):
        return {"n": n, "mean_difference": None, "ci_low": None, "ci_high": None, "confidence": confidence,
                "significant": False, "note": "a run diverged"}
    mean = float(differences.mean())
    half_width = float(stats.t.ppf((1 + confidence) / 2, n - 1) * differences.std(ddof=1) / math.sqrt(n))
    low, high = mean - half_width, mean + half_width
    return {"n": n, "mean_difference": mean, "ci_low": low, "ci_high": high, "confidence": confidence,
            "significant": bool(low > 0 or high < 0)}


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "n": len(finite),
        "diverged": len(values) - len(finite),
    }


def _test_losses(runs: Sequence[Mapping[str, Any]]) -> list[float]:
    return [_loss_or_infinity(run, "test") for run in sorted(runs, key=lambda run: run["seed"])]


def summarize_training(
    tuning_runs: Sequence[Mapping[str, Any]], evaluation_runs: Sequence[Mapping[str, Any]], confidence: float = 0.95
) -> dict[str, Any]:
    """Everything section 4 reports, from the raw runs (all numbers JSON-serialisable).

    Keys: ``selection`` (see :func:`select_learning_rates`), ``lr_ratio_to_adamw`` ({task: {optimizer:
    ratio}}), ``evaluation`` ({task: {optimizer: {"test_loss", "test_accuracy": mean/std, "lr"}}}),
    ``versus_adamw`` ({task: {optimizer: paired comparison}}), ``central_pairing`` and ``curves`` ({task:
    {optimizer: {"steps", "loss"}}}: mean training loss over the evaluation seeds that did not diverge).
    """
    selection = select_learning_rates(tuning_runs)
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for run in evaluation_runs:
        grouped.setdefault(run["task"], {}).setdefault(run["optimizer"], []).append(run)

    evaluation: dict[str, dict[str, Any]] = {}
    versus: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, dict[str, list[float]]]] = {}
    for task, by_optimizer in sorted(grouped.items()):
        for optimizer, runs in sorted(by_optimizer.items()):
            evaluation.setdefault(task, {})[optimizer] = {
                "lr": selection[task][optimizer]["lr"],
                "test_loss": _mean_std([run["test_loss"] for run in runs]),
                "test_accuracy": _mean_std([run["test_accuracy"] for run in runs]),
                "seeds": sorted(run["seed"] for run in runs),
            }
            finished = [run for run in runs if not run["diverged"]]
            if finished:
                length = min(len(run["train_loss_curve"]) for run in finished)
                window = finished[0]["curve_window"]
                curves.setdefault(task, {})[optimizer] = {
                    "steps": [window * (i + 1) for i in range(length)],
                    "loss": np.mean([run["train_loss_curve"][:length] for run in finished], axis=0).tolist(),
                }
            if REFERENCE in by_optimizer:
                ratios.setdefault(task, {})[optimizer] = selection[task][optimizer]["lr"] / selection[task][REFERENCE]["lr"]
                if optimizer != REFERENCE:
                    versus.setdefault(task, {})[optimizer] = paired_comparison(
                        _test_losses(runs), _test_losses(by_optimizer[REFERENCE]), confidence
                    )
    (task_a, optimizer_a), (task_b, optimizer_b) = CENTRAL_PAIRING
    central = None
    if optimizer_a in grouped.get(task_a, {}) and optimizer_b in grouped.get(task_b, {}):
        central = {
            "first": {"task": task_a, "optimizer": optimizer_a, **evaluation[task_a][optimizer_a]},
            "second": {"task": task_b, "optimizer": optimizer_b, **evaluation[task_b][optimizer_b]},
            "difference": paired_comparison(
                _test_losses(grouped[task_a][optimizer_a]), _test_losses(grouped[task_b][optimizer_b]), confidence
            ),
        }
    return {
        "optimizers": {name: OPTIMIZERS[name].description for name in sorted({r["optimizer"] for r in evaluation_runs})},
        "selection": selection,
        "lr_ratio_to_adamw": ratios,
        "evaluation": evaluation,
        "versus_adamw": versus,
        "central_pairing": central,
        "curves": curves,
        "confidence": confidence,
    }


def stability_margin_correlation(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Does validation loss fall as the margin to the stable boundary grows? (THEORY §5, the paper's claim.)

    ``runs`` are :func:`train_run` results with ``betas`` = (β, γ) set. The margin is −ρ = ½ ln γ − ln β, the
    per-step decay rate of a past gradient's influence on the update (THEORY §2; positive inside the region
    γ > β², negative outside). Per learning rate: Spearman's rank correlation between margin and final
    validation loss (a diverged run ranks worst), its two-sided p-value, and the points. The paper's claim
    predicts a negative correlation; it is claimed only at p < 0.05.
    """
    by_rate: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        beta, gamma = run["betas"]
        margin = 0.5 * math.log(gamma) - math.log(beta)
        by_rate.setdefault(run["lr"], []).append(
            {"beta": beta, "gamma": gamma, "margin": margin, "validation_loss": run["validation_loss"],
             "diverged": run["diverged"]}
        )
    per_rate = []
    for lr, points in sorted(by_rate.items()):
        losses = [math.inf if p["validation_loss"] is None else p["validation_loss"] for p in points]
        correlation = stats.spearmanr([p["margin"] for p in points], losses) if len(points) > 2 else None
        rho = None if correlation is None or not math.isfinite(correlation.statistic) else float(correlation.statistic)
        p_value = None if rho is None else float(correlation.pvalue)
        per_rate.append({
            "lr": lr, "points": points, "spearman_rho": rho, "p_value": p_value,
            "claimed": bool(p_value is not None and p_value < 0.05),
        })
    return {"per_learning_rate": per_rate}


def plot_stability_margin(correlation: Mapping[str, Any], path: str) -> str:
    """Final validation loss against the margin ½ ln γ − ln β, one panel per learning rate (the boundary at 0)."""
    plt = pyplot()
    panels = correlation["per_learning_rate"]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.3), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        points = [p for p in panel["points"] if p["validation_loss"] is not None]
        scatter = axis.scatter([p["margin"] for p in points], [p["validation_loss"] for p in points],
                               c=[p["beta"] for p in points], cmap="viridis", s=22)
        axis.axvline(0.0, color="red", lw=1, label="boundary γ = β²")
        rho = "—" if panel["spearman_rho"] is None else f"{panel['spearman_rho']:+.2f} (p = {panel['p_value']:.1e})"
        axis.set(title=f"lr = {panel['lr']:g}: Spearman ρ {rho}", xlabel="margin ½ ln γ − ln β (per step)",
                 ylabel="final validation loss")
        figure.colorbar(scatter, ax=axis, label="β")
    axes[0][0].legend(fontsize=7)
    save_figure(figure, path, dpi=110)
    return path


def _task_panels(tasks: Sequence[str], draw: Callable[[Any, str], None], path: str, legend: bool = True) -> str:
    """One panel per task, side by side, each drawn by ``draw(axis, task)``; saved to ``path``."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        draw(axis, task)
    if legend:
        axes[0][0].legend(fontsize=7)
    save_figure(figure, path, dpi=110)
    return path


def plot_training(summary: Mapping[str, Any], directory: str) -> list[str]:
    """Draw section 4's figures into ``directory``; returns the PNG paths.

    ``training_curves.png``: mean training loss against step per task (evaluation seeds, best rates).
    ``training_lr_grid.png``: validation loss against learning rate per task (tuning grid).
    ``training_vs_adamw.png``: paired test-loss difference to AdamW with its confidence interval.
    """
    tasks = sorted(summary["evaluation"])

    def curves(axis: Any, task: str) -> None:
        for optimizer, curve in sorted(summary["curves"].get(task, {}).items()):
            axis.plot(curve["steps"], curve["loss"], label=optimizer, lw=1.2)
        axis.set(title=task, xlabel="step", ylabel="training loss (window mean)", yscale="log")

    def grid(axis: Any, task: str) -> None:
        for optimizer, chosen in sorted(summary["selection"][task].items()):
            losses = [np.nan if v is None else v for v in chosen["grid"].values()]
            axis.plot([float(lr) for lr in chosen["grid"]], losses, marker="o", ms=3, label=optimizer, lw=1)
        axis.set(title=task, xscale="log", xlabel="learning rate", ylabel="validation loss (tuning seeds)")

    def versus(axis: Any, task: str) -> None:
        comparisons = summary["versus_adamw"].get(task, {})
        names = [name for name in sorted(comparisons) if comparisons[name]["mean_difference"] is not None]
        means = [comparisons[name]["mean_difference"] for name in names]
        errors = [[m - comparisons[n]["ci_low"] for n, m in zip(names, means)],
                  [comparisons[n]["ci_high"] - m for n, m in zip(names, means)]]
        colors = ["tab:red" if comparisons[n]["significant"] else "tab:gray" for n in names]
        axis.barh(names, means, xerr=errors, color=colors, capsize=3)
        axis.axvline(0, color="black", lw=0.8)
        axis.set(title=task, xlabel="test loss − AdamW's (paired; red: CI excludes 0)")
        axis.tick_params(axis="y", labelsize=7)

    return [
        _task_panels(tasks, curves, os.path.join(directory, "training_curves.png")),
        _task_panels(tasks, grid, os.path.join(directory, "training_lr_grid.png")),
        _task_panels(tasks, versus, os.path.join(directory, "training_vs_adamw.png"), legend=False),
    ]
