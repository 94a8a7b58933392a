"""How well the continuous model (THEORY §3) tracks discrete Adam/AdamW/k-Adam: three full-batch problems.

Problems (fixed seeds, float64):

- ``quadratic``: ``L(θ) = ½ (θ − θ*)ᵀ A (θ − θ*)``, ``d = 100``, ``A = Q diag(λ) Qᵀ`` with ``Q`` a random
  rotation and ``λ`` log-spaced from 1 to 10⁻³ (condition number 10³), ``θ* ~ N(0, I)``, ``θ₀ = 0``.
- ``logistic``: multinomial logistic regression (650 parameters) on scikit-learn's digits (each pixel
  standardized), mean cross-entropy, PyTorch's default initialisation.
- ``mlp``: ``64 → 128 tanh → 10`` (9,610 parameters) on the same data and loss.

Experiments (each returns a JSON-serialisable dict; :mod:`kadam.experiments.flow.plots` draws them):

- :func:`accuracy_experiment`: relative trajectory error at one ``lr`` over ``steps`` steps for k = 1..3
  and one (rates, order) variant.
- :func:`convergence_experiment`: the four variants (rates × order) at several learning rates with
  ``lr · steps`` fixed; the log–log slope of the final error against ``lr`` per variant.
- :func:`first_step_experiment` and :func:`restart_experiment`: where the model's error comes from.
  Adam's first steps are sign-like (``v̂ ≈ x²``, so ``u ≈ sign(x)``); a coordinate whose gradient
  changes by more than its own size within one step is updated by ``±η`` in the discrete run but
  follows the sign change inside the step in the model, an ``O(η)`` rather than ``O(η²)`` local error.
  The first function counts those coordinates and measures the error at step 1 against ``lr``; the
  second restarts the model from the discrete run's state at step ``s`` (same ``θ``, ``m̂``, ``v̂``) to
  show how much of the final error the steps before ``s`` inject.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from rich.progress import track
from torch import Tensor, nn
from torchdiffeq import odeint

from kadam.experiments.workloads import MLP, seeded_initialisation, standardized_digits
from kadam.flow import FlatLoss, Trajectory, compare, discrete, simulate
from kadam.flow.ode import ORDERS, RATES, AdamFlow, optimizer_levels

PROBLEMS = ("quadratic", "logistic", "mlp")
VARIANTS = tuple(itertools.product(RATES, ORDERS))
ERROR_BAR = 0.01
CURVE_POINTS = 60


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
    inputs, targets = standardized_digits(dtype)
    with seeded_initialisation(seed):
        module: nn.Module = nn.Linear(64, 10) if name == "logistic" else MLP(64, 128, 1, 10, activation=nn.Tanh)
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
    (0, 0.999) in tensor mode). ``passes`` is ``max_rel_error ≤ 1%`` (THEORY §3).
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
    return {
        "problem": problem,
        "horizon": horizon,
        "k": k,
        "seed": seed,
        "lrs": list(lrs),
        "per_lr": per_lr,
        "slopes": slopes,
    }


def first_step_experiment(
    problem: str = "mlp",
    lrs: Sequence[float] = (4e-3, 1e-3, 2.5e-4, 6.25e-5, 1.5625e-5),
    k: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """The model's relative error after one step against ``lr``, and the coordinates that cause it.

    A coordinate is *fast* when its gradient changes by more than its own magnitude during the
    discrete first step, ``|x_i(θ₁) − x_i(θ₀)| > |x_i(θ₀)|`` (``x = ∇L``): the discrete step moves it by
    ``−η x_i/(|x_i| + ε) ≈ ∓η`` while the model's ``u_i = m̂_i/√v̂_i`` (running means over ``[0, τ]``)
    follows the change within the step, an ``O(η)`` discrepancy (THEORY §3's first-order error is
    ``O(η²)`` per step only where ``x`` changes little in one step). With a density of gradient
    entries near zero the fast count grows like ``lr``, so the relative error at step 1 falls like
    ``lr^{1/2}`` until no coordinate is fast. Each row: ``rel_error_step1``, ``fast_coordinates``,
    ``fast_share`` (the fraction of ``‖θ_cont(1) − θ_disc(1)‖²`` carried by the fast coordinates);
    ``slope`` is the log–log slope over all ``lrs``, ``local_slopes`` the slope between neighbours.
    """
    if len(lrs) < 2:
        raise ValueError(f"lrs must hold at least two learning rates, got {list(lrs)}")
    loss = make_problem(problem, seed)
    _, grad0 = loss.value_and_grad(loss.theta0)
    rows = []
    for lr in track(list(lrs), description=f"flow first step ({problem})", transient=True):
        reference = discrete(loss, 1, lr=lr, k=k)
        gap = simulate(loss, 1, lr=lr, k=k).theta[1] - reference.theta[1]
        _, grad1 = loss.value_and_grad(reference.theta[1])
        fast = (grad1 - grad0).abs() > grad0.abs()
        gap_squared = float((gap**2).sum())
        rows.append(
            {
                "lr": lr,
                "rel_error_step1": float(gap.norm() / (reference.theta[1] - reference.theta[0]).norm()),
                "fast_coordinates": int(fast.sum()),
                "fast_share": float((gap[fast] ** 2).sum()) / gap_squared if gap_squared > 0 else 0.0,
            }
        )
    errors = [row["rel_error_step1"] for row in rows]
    local_slopes = [log_log_slope(lrs[i : i + 2], errors[i : i + 2]) for i in range(len(rows) - 1)]
    return {
        "problem": problem,
        "k": k,
        "seed": seed,
        "parameters": loss.theta0.numel(),
        "rows": rows,
        "slope": log_log_slope(lrs, errors),
        "local_slopes": local_slopes,
    }


def restart_from_discrete(
    loss: FlatLoss,
    reference: Trajectory,
    restart_step: int,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    **hyperparameters: Any,
) -> Trajectory:
    """The first-order, exact-rate model run from the discrete run's state at step ``s = restart_step``.

    ``reference`` is ``discrete(loss, steps, record_every=1, return_moments=True, **hyperparameters)``.
    The model starts at ``τ = s`` from ``θ_s`` and every level's bias-corrected moments
    ``m̂ = m_s/(1 − β^s)``, ``v̂ = v_s/(1 − γ^s)`` (THEORY §1, §3: the state ``KAdam`` holds) and is read
    at ``s, s + 1, …``; the returned trajectory is the discrete one up to step ``s − 1``, the model's
    from step ``s`` on (so :func:`~kadam.flow.compare` gives error 0 up to ``s``).
    """
    steps = int(reference.steps[-1])
    if not torch.equal(reference.steps, torch.arange(steps + 1)) or not reference.moments:
        raise ValueError("reference must be a discrete run recorded every step with return_moments=True")
    if isinstance(restart_step, bool) or not isinstance(restart_step, int) or not 1 <= restart_step < steps:
        raise ValueError(f"restart_step must be an integer in [1, steps - 1 = {steps - 1}], got {restart_step!r}")
    field_ = AdamFlow.for_optimizer(loss, **hyperparameters)
    levels, _ = optimizer_levels(**hyperparameters)
    s = restart_step
    moments = [
        (reference.moments[f"m{i}"][s] / (1.0 - level.beta**s), reference.moments[f"v{i}"][s] / (1.0 - level.gamma**s))
        for i, level in enumerate(levels, start=1)
    ]
    times = reference.steps[s:].to(dtype=loss.theta0.dtype, device=loss.theta0.device)
    solution = odeint(field_, field_.join_state(reference.theta[s], None, moments), times, rtol=rtol, atol=atol)
    with torch.no_grad():
        losses = torch.stack([loss.fn(row) for row in solution[0]])
    return Trajectory(
        reference.steps,
        torch.cat([reference.theta[:s], solution[0]]),
        torch.cat([reference.loss[:s], losses]),
        gradient_evaluations=field_.evaluations,
    )


def restart_experiment(
    problem: str = "mlp",
    lr: float = 1e-3,
    steps: int = 2000,
    restart_steps: Sequence[int] = (1, 5, 50, 200),
    k: int = 1,
    seed: int = 0,
    from_start: bool = True,
) -> dict[str, Any]:
    """Error of the first-order, exact-rate model restarted from the discrete run's state at step ``s``.

    Row ``restart_step = 0`` (only with ``from_start``) is the model from the τ = 0 limits; row ``s`` is
    :func:`restart_from_discrete` at ``s``. The drop from row 0 to row ``s`` is the part of the error
    that the first ``s`` steps inject.
    """
    loss = make_problem(problem, seed)
    reference = discrete(loss, steps, lr=lr, k=k, return_moments=True)
    rows = []
    if from_start:
        start = compare(simulate(loss, steps, lr=lr, k=k), reference)
        rows.append({"restart_step": 0, **start.summary(), "error_curve": _curve(start.relative_error, start.steps)})
    for s in track(list(restart_steps), description=f"flow restarts ({problem})", transient=True):
        comparison = compare(restart_from_discrete(loss, reference, s, lr=lr, k=k), reference)
        rows.append(
            {
                "restart_step": s,
                **comparison.summary(),
                "error_curve": _curve(comparison.relative_error, comparison.steps),
            }
        )
    return {"problem": problem, "lr": lr, "steps": steps, "k": k, "seed": seed, "rows": rows}
