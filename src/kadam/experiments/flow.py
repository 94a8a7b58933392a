"""How well the continuous model (THEORY §3) tracks discrete Adam/AdamW/k-Adam: three full-batch problems.

Problems (fixed seeds, float64):

- ``quadratic``: ``L(θ) = ½ (θ − θ*)ᵀ A (θ − θ*)``, ``d = 100``, ``A = Q diag(λ) Qᵀ`` with ``Q`` a random
  rotation and ``λ`` log-spaced from 1 to 10⁻³ (condition number 10³), ``θ* ~ N(0, I)``, ``θ₀ = 0``.
- ``logistic``: multinomial logistic regression (650 parameters) on scikit-learn's digits (1,797
  images, each pixel standardized by ``StandardScaler``), mean cross-entropy, PyTorch's default
  initialisation.
- ``mlp``: ``64 → 128 tanh → 10`` (9,610 parameters) on the same data and loss.

Experiments (each returns a JSON-serialisable dict; :func:`plot_accuracy` and :func:`plot_convergence`
draw them):

- :func:`accuracy_experiment`: relative trajectory error at one ``lr`` over ``steps`` steps for k = 1..3
  and one (rates, order) variant.
- :func:`convergence_experiment`: the four variants (rates × order) at several learning rates with
  ``lr · steps`` fixed; the log–log slope of the final error against ``lr`` per variant.

Sizes. Wall times were measured on a shared 2-core CPU at a load average near 10 (other jobs), so
they are pessimistic; the CPU time actually used is about a fifth of them.

- smoke (≤ 60 s): ``accuracy_experiment(("quadratic", "logistic"), ks=(1,), steps=300)`` (18 s) and
  ``convergence_experiment("quadratic", horizon=0.4, variants=(("exact", 1), ("paper", 1)))`` (about
  15 s; 54 s with all four variants).
- quick (≤ 10 min): ``accuracy_experiment(PROBLEMS, ks=(1, 2, 3), steps=2000)`` (about 6 min: 3 × 30 s
  logistic, 3 × 40–120 s mlp, seconds for the quadratic) and
  ``convergence_experiment("quadratic", horizon=2.0)`` (155 s).
- full: quick plus ``convergence_experiment("logistic", horizon=2.0)`` (725 s) and
  ``convergence_experiment("mlp", horizon=0.5)`` (951 s); the second-order variants take 2–6× the
  gradient evaluations of the first-order ones (the ``½θ̈`` mode relaxes in two steps, which bounds an
  explicit solver's step).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track
from torch import Tensor, nn

from kadam.flow import FlatLoss, Trajectory, compare, discrete, simulate
from kadam.flow.ode import ORDERS, RATES

PROBLEMS = ("quadratic", "logistic", "mlp")
VARIANTS = tuple(itertools.product(RATES, ORDERS))
ERROR_BAR = 0.01
CURVE_POINTS = 60


def digits(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits: 1,797 images of 64 pixels, each pixel standardized; labels 0..9."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    images, labels = load_digits(return_X_y=True)
    return torch.tensor(StandardScaler().fit_transform(images), dtype=dtype), torch.tensor(labels)


def make_problem(name: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> FlatLoss:
    """The full-batch loss ``name`` (one of :data:`PROBLEMS`) with its starting point, seeded by ``seed``."""
    if name not in PROBLEMS:
        raise ValueError(f"problem must be one of {PROBLEMS}, got {name!r}")
    generator = torch.Generator().manual_seed(seed)
    if name == "quadratic":
        dimension = 100
        rotation, _ = torch.linalg.qr(torch.randn(dimension, dimension, generator=generator, dtype=dtype))
        curvatures = torch.logspace(0.0, -3.0, dimension, dtype=dtype)
        hessian = rotation @ torch.diag(curvatures) @ rotation.T
        optimum = torch.randn(dimension, generator=generator, dtype=dtype)

        def quadratic(theta: Tensor) -> Tensor:
            offset = theta - optimum
            return 0.5 * offset @ hessian @ offset

        return FlatLoss(quadratic, torch.zeros(dimension, dtype=dtype))
    inputs, targets = digits(dtype)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if name == "logistic":
            module: nn.Module = nn.Linear(64, 10)
        else:
            module = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
    return FlatLoss.from_module(module.to(dtype), inputs, targets)


def _curve(values: Tensor, steps: Tensor) -> dict[str, list[float]]:
    """About :data:`CURVE_POINTS` points of a per-step series, for figures."""
    stride = max(1, len(values) // CURVE_POINTS)
    return {"steps": steps[::stride].tolist(), "values": values[::stride].tolist()}


def variant_errors(
    loss: FlatLoss,
    steps: int,
    variants: Sequence[tuple[str, int]],
    reference: Trajectory | None = None,
    **hyperparameters: Any,
) -> dict[str, dict[str, Any]]:
    """Simulate each (rates, order) variant and compare it with the discrete run (run once, or ``reference``)."""
    reference = reference or discrete(loss, steps, **hyperparameters)
    results = {}
    for rates, order in variants:
        run = simulate(loss, steps, rates=rates, order=order, **hyperparameters)
        comparison = compare(run, reference)
        results[f"{rates}/order{order}"] = {
            **comparison.summary(),
            "gradient_evaluations": run.gradient_evaluations,
            "simulate_seconds": run.seconds,
            "discrete_seconds": reference.seconds,
            "error_curve": _curve(comparison.relative_error, comparison.steps),
        }
    return results


def accuracy_experiment(
    problems: Sequence[str] = PROBLEMS,
    ks: Sequence[int] = (1, 2, 3),
    lr: float = 1e-3,
    steps: int = 2000,
    rates: str = "exact",
    order: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Relative trajectory error of one variant against ``KAdam(k)`` for each problem and ``k``.

    KAdam's defaults otherwise (betas (0.9, 0.999), eps 1e-8, weight decay 1e-2 decoupled, meta levels
    (0, 0.999) in tensor mode). ``passes`` is ``max_rel_error ≤ 1%`` (THEORY §3, issue 4).
    """
    rows = []
    for problem, k in track(list(itertools.product(problems, ks)), description="flow accuracy", transient=True):
        loss = make_problem(problem, seed)
        errors = variant_errors(loss, steps, [(rates, order)], lr=lr, k=k)[f"{rates}/order{order}"]
        rows.append({"problem": problem, "k": k, **errors, "passes": errors["max_rel_error"] <= ERROR_BAR})
    return {"lr": lr, "steps": steps, "rates": rates, "order": order, "seed": seed, "bar": ERROR_BAR, "rows": rows}


def log_log_slope(lrs: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of ``log(error)`` against ``log(lr)``."""
    slope, _ = np.polyfit(np.log(lrs), np.log(errors), 1)
    return float(slope)


def convergence_experiment(
    problem: str = "quadratic",
    lrs: Sequence[float] = (4e-3, 2e-3, 1e-3, 4e-4),
    horizon: float = 2.0,
    k: int = 1,
    variants: Sequence[tuple[str, int]] = VARIANTS,
    seed: int = 0,
) -> dict[str, Any]:
    """Error against ``lr`` at the fixed horizon ``lr · steps = horizon``, for each variant.

    For each ``lr``, ``steps = round(horizon / lr)``; every variant is compared with one discrete run.
    The slope of ``log(final_rel_error)`` against ``log(lr)`` is the order of convergence (1 expected
    for a first-order model, THEORY §3); the slope of the maximum error over the run is given too.
    """
    if len(lrs) < 2:
        raise ValueError(f"lrs must hold at least two learning rates, got {list(lrs)}")
    loss = make_problem(problem, seed)
    per_lr = []
    for lr in track(list(lrs), description=f"flow convergence ({problem})", transient=True):
        steps = max(1, round(horizon / lr))
        per_lr.append({"lr": lr, "steps": steps, "variants": variant_errors(loss, steps, variants, lr=lr, k=k)})
    slopes = {}
    for name in per_lr[0]["variants"]:
        finals = [entry["variants"][name]["final_rel_error"] for entry in per_lr]
        maxima = [entry["variants"][name]["max_rel_error"] for entry in per_lr]
        slopes[name] = {"final": log_log_slope(lrs, finals), "max": log_log_slope(lrs, maxima)}
    return {"problem": problem, "horizon": horizon, "k": k, "seed": seed, "lrs": list(lrs), "per_lr": per_lr, "slopes": slopes}


def _figure(columns: int) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(5 * columns, 4), squeeze=False)


def plot_accuracy(result: dict[str, Any], path: str | Path) -> Path:
    """Relative error against step, one panel per problem, one line per k; the 1% bar dashed."""
    problems = list(dict.fromkeys(row["problem"] for row in result["rows"]))
    figure, axes = _figure(len(problems))
    for axis, problem in zip(axes[0], problems, strict=True):
        for row in (r for r in result["rows"] if r["problem"] == problem):
            axis.semilogy(row["error_curve"]["steps"], row["error_curve"]["values"], label=f"k = {row['k']}")
        axis.axhline(result["bar"], color="k", linestyle="--", linewidth=0.8)
        axis.set(title=problem, xlabel="step n", ylabel="‖θ_cont − θ_disc‖ / ‖θ_disc − θ₀‖")
        axis.legend()
    figure.suptitle(f"continuous vs discrete, lr = {result['lr']}, {result['rates']} rates, order {result['order']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return Path(path)


def plot_convergence(result: dict[str, Any], path: str | Path) -> Path:
    """Final relative error against lr (log–log) per variant, slopes in the legend."""
    figure, axes = _figure(1)
    axis = axes[0][0]
    for name, slope in result["slopes"].items():
        finals = [entry["variants"][name]["final_rel_error"] for entry in result["per_lr"]]
        axis.loglog(result["lrs"], finals, marker="o", label=f"{name}: slope {slope['final']:.2f}")
    axis.set(title=f"{result['problem']}, lr · steps = {result['horizon']}", xlabel="lr η", ylabel="final relative error")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return Path(path)

