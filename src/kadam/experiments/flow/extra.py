"""The continuous model as a tool: warm starts, the O(η²) modified equations, a transformer.

Three measurements beside :mod:`kadam.experiments.flow`'s (each returns a JSON-serialisable dict):

- :func:`warm_start_experiment`: the model started after ``s`` discrete steps
  (``simulate(..., warm_start=s)``, THEORY §3), final and maximum relative error against ``s``.
- :func:`modified_convergence_experiment`: the first-order model and the modified equations
  (:class:`~kadam.flow.modified.ModifiedAdamFlow`) at several ``η`` with ``η·steps`` fixed; the
  log–log slope of the error against ``η`` is the order of convergence (1 and 2 expected).
- :func:`coupled_problem`: a two-parameter quadratic started where no gradient coordinate is near zero
  (``coupled``) or where one is exactly zero (``coupled-from-rest``), and :func:`first_zero_crossing`: how
  soon a gradient coordinate crosses zero, the condition under which the modified equations lose an order.
- :func:`transformer_problem` and :func:`transformer_accuracy_experiment`: a tiny full-batch character
  transformer (:class:`~kadam.experiments.workloads.CharTransformer`, float64), the problem THEORY §5 says
  the paper's model tracks Adam on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from kadam.experiments.flow.protocol import log_log_slope, make_problem
from kadam.experiments.workloads import CharTransformer, encode_characters
from kadam.flow import FlatLoss, compare, discrete, simulate
from kadam.vocabulary import FLOW_PROBLEMS

COUPLED_PROBLEMS = ("coupled", "coupled-from-rest")
CROSSING_STEPS = 10.0
"""The moments' memory at β = 0.9, 1/(1 − β) steps: the modified equations assume no gradient coordinate
crosses zero sooner (:func:`first_zero_crossing`)."""
EXTRA_PROBLEMS = FLOW_PROBLEMS
"""Every problem of the flow section: :data:`~kadam.experiments.flow.protocol.PROBLEMS`, the coupled ones and
the transformer."""
CURVE_POINTS = 60
TRANSFORMER_SIZES = {"windows": 8, "context": 16, "width": 16, "heads": 2, "layers": 1}
"""The tiny transformer: 8 windows of 16 characters (full batch), width 16, 2 heads, one block."""


def transformer_problem(
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    windows: int = 8,
    context: int = 16,
    width: int = 16,
    heads: int = 2,
    layers: int = 1,
) -> FlatLoss:
    """Full-batch next-character cross-entropy of a pre-LN :class:`CharTransformer` on ``windows`` windows.

    The windows are the first ``windows·(context + 1)`` characters of the task corpus
    (:func:`~kadam.experiments.workloads.encode_characters`), cut into consecutive blocks; the initialisation
    is PyTorch's default under ``seed`` (a forked RNG, the global one is left as it was). Attention runs
    on the math kernel, which supports the double backward of the model's Hessian-vector products.
    """
    tokens, vocabulary = encode_characters(windows * (context + 1))
    blocks = tokens[: windows * (context + 1)].view(windows, context + 1)
    inputs, targets = blocks[:, :-1], blocks[:, 1:]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = CharTransformer(vocabulary, context, width, heads, layers).to(dtype)

    def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    flat = FlatLoss.from_module(module, inputs, targets, cross_entropy)
    evaluate = flat.fn

    def loss_with_math_attention(theta: torch.Tensor) -> torch.Tensor:
        # the fused CPU attention kernels have no double backward; the model needs Hessian-vector products
        with sdpa_kernel(SDPBackend.MATH):
            return evaluate(theta)

    flat.fn = loss_with_math_attention
    return flat


def coupled_problem(from_rest: bool = False, dtype: torch.dtype = torch.float64) -> FlatLoss:
    r"""``L(θ) = ½(θ₁ − 1)² + ½(θ₂ − 2θ₁)²``, from ``θ₀ = (−1, 1)`` or, with ``from_rest``, from ``θ₀ = 0``.

    From ``(−1, 1)`` the gradient ``(−8, 3)`` stays far from zero over a unit horizon, the smooth case
    backward error analysis assumes. From ``0`` the second coordinate's gradient ``θ₂ − 2θ₁`` is exactly
    zero at the start and grows by O(η) per step: Adam's update of that coordinate, ``m̂/√v̂``, is then a
    function of the step count rather than of ``η·steps`` for as long as the moments remember the start
    (``docs/flow_second_order.md``). No seed: both are deterministic.
    """

    def coupled(theta: Tensor) -> Tensor:
        return 0.5 * (theta[0] - 1.0) ** 2 + 0.5 * (theta[1] - 2.0 * theta[0]) ** 2

    start = [0.0, 0.0] if from_rest else [-1.0, 1.0]
    return FlatLoss(coupled, torch.tensor(start, dtype=dtype))


def make_flow_problem(name: str, seed: int = 0) -> FlatLoss:
    """One of :data:`EXTRA_PROBLEMS`: the three of :func:`~kadam.experiments.flow.make_problem`, the two
    :func:`coupled_problem` starts or ``transformer``."""
    if name not in EXTRA_PROBLEMS:
        raise ValueError(f"problem must be one of {EXTRA_PROBLEMS}, got {name!r}")
    if name in COUPLED_PROBLEMS:
        return coupled_problem(from_rest=name == "coupled-from-rest")
    return transformer_problem(seed, **TRANSFORMER_SIZES) if name == "transformer" else make_problem(name, seed)


def first_zero_crossing(loss: FlatLoss, lr: float, eps: float = 1e-8) -> dict[str, float | int]:
    r"""How soon, in steps, a gradient coordinate would cross zero from ``θ₀`` (linear extrapolation).

    Along Adam's initial velocity ``θ̇ = −η g/(|g| + ε)`` (the τ = 0 limit of ``m̂/(√v̂ + ε)``) coordinate
    ``i`` of the gradient changes by ``ġᵢ = (∇²L θ̇)ᵢ`` per step and reaches zero after ``|gᵢ/ġᵢ|`` steps
    (coordinates with ``ġᵢ = 0`` never do). The modified equations assume every input changes by a small
    fraction of itself per step over the moments' memory; a crossing within that memory (about
    ``1/(1 − β)`` steps) breaks the assumption, and the error there is first order in η
    (``docs/flow_second_order.md``). Returns the fewest steps, the coordinate, and how many coordinates
    cross within :data:`CROSSING_STEPS` steps.
    """
    theta = loss.theta0
    _, gradient = loss.value_and_grad(theta)
    change = loss.hessian_vector_product(theta, -lr * gradient / (gradient.abs() + eps))
    moving = change != 0
    steps = torch.full_like(gradient, torch.inf)
    steps[moving] = (gradient[moving] / change[moving]).abs()
    fewest = int(steps.argmin())
    return {"steps": float(steps[fewest]), "coordinate": fewest, "within_10_steps": int((steps < CROSSING_STEPS).sum())}


def _curve(values: torch.Tensor, steps: torch.Tensor) -> dict[str, list[float]]:
    stride = max(1, len(values) // CURVE_POINTS)
    return {"steps": steps[::stride].tolist(), "values": values[::stride].tolist()}


def warm_start_experiment(
    problem: str = "mlp",
    lr: float = 1e-3,
    steps: int = 2000,
    warm_starts: Sequence[int] = (0, 1, 2, 5, 10),
    k: int = 1,
    modified: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Final and maximum relative error of the model (exact rates, first order) against the warm start ``s``.

    Every run is compared with one discrete run; the error before step ``s`` is zero by construction
    (those steps are the discrete run's), so ``max_rel_error`` is over the model's own steps.
    """
    loss = make_flow_problem(problem, seed)
    reference = discrete(loss, steps, lr=lr, k=k)
    rows = []
    for s in warm_starts:
        run = simulate(loss, steps, lr=lr, k=k, warm_start=s, modified=modified)
        comparison = compare(run, reference)
        rows.append(
            {
                "warm_start": s,
                **comparison.summary(),
                "gradient_evaluations": run.gradient_evaluations,
                "seconds": run.seconds,
                "error_curve": _curve(comparison.relative_error, comparison.steps),
            }
        )
    return {"problem": problem, "lr": lr, "steps": steps, "k": k, "modified": modified, "seed": seed, "rows": rows}


def modified_convergence_experiment(
    problem: str = "quadratic",
    lrs: Sequence[float] = (4e-3, 2e-3, 1e-3),
    horizon: float = 1.0,
    k: int = 1,
    warm_start: int = 0,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    seed: int = 0,
) -> dict[str, Any]:
    """Error against ``η`` at ``η·steps = horizon`` for the first-order model and the modified equations.

    Both use exact rates; tolerances are tighter than :func:`~kadam.flow.simulate`'s defaults so that
    the solver's error stays below the modified equations' O(η²). ``slopes`` are log–log slopes of the
    final and maximum relative error against ``η`` (1 and 2 expected). Each ``η`` also records
    :func:`first_zero_crossing`, the condition under which the modified equations fall back to first order.
    """
    if len(lrs) < 2:
        raise ValueError(f"lrs must hold at least two learning rates, got {list(lrs)}")
    loss = make_flow_problem(problem, seed)
    per_lr = []
    for lr in lrs:
        steps = max(1, round(horizon / lr))
        reference = discrete(loss, steps, lr=lr, k=k)
        variants = {}
        for name, modified in (("first_order", False), ("modified", True)):
            run = simulate(loss, steps, lr=lr, k=k, modified=modified, warm_start=warm_start, rtol=rtol, atol=atol)
            comparison = compare(run, reference)
            variants[name] = {
                **comparison.summary(),
                "gradient_evaluations": run.gradient_evaluations,
                "seconds": run.seconds,
            }
        per_lr.append(
            {"lr": lr, "steps": steps, "variants": variants, "first_zero_crossing": first_zero_crossing(loss, lr)}
        )
    slopes = {
        name: {
            statistic: log_log_slope(lrs, [entry["variants"][name][f"{statistic}_rel_error"] for entry in per_lr])
            for statistic in ("final", "max")
        }
        for name in ("first_order", "modified")
    }
    return {
        "problem": problem,
        "horizon": horizon,
        "k": k,
        "warm_start": warm_start,
        "seed": seed,
        "lrs": list(lrs),
        "per_lr": per_lr,
        "slopes": slopes,
    }


def transformer_accuracy_experiment(
    lr: float = 1e-3,
    steps: int = 2000,
    k: int = 1,
    warm_starts: Sequence[int] = (0, 5),
    modified: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`warm_start_experiment` on the tiny transformer, plus its size."""
    result = warm_start_experiment("transformer", lr, steps, warm_starts, k, modified, seed)
    return {
        **result,
        "parameters": make_flow_problem("transformer", seed).theta0.numel(),
        "sizes": dict(TRANSFORMER_SIZES),
    }
