r"""Measuring the stable region of (β, γ) through the real :class:`~kadam.KAdam` code (THEORY §2, §5).

Two protocols, each a plain function taking explicit sizes and returning a JSON-serialisable dict, plus
the functions that draw their figures (PNG, matplotlib's Agg backend).

**Switch-off protocol** (:func:`switch_off_experiment`; the optimizer alone). A scalar float64 parameter
is driven by the gradient ``x = 1`` for ``N`` steps, ``N`` chosen so that every βᴺ, γᴺ ≤ 1e-6 (the bias
corrections have settled: their drift biases the slope by at most 1e-6·|ln γ|, far inside the
tolerance), then by ``x = 0``. With lr = 1, weight decay 0 and θ reset to 0 before each step, the update
is read exactly as ``u_n = -θ_n``. The fitted quantity is the
least-squares slope of ln|u_t| over the second half of the *usable window*: the zero-input steps before
any level's moment leaves [1e-280, 1e280] (underflow/overflow takes over) or, for ε > 0, before
√v falls below 10⁶·ε (ε takes over), at most ``window_steps`` long. The prediction is
:func:`kadam.theory.stability.switch_off_rates`: ln β − ½ ln γ for k = 1; for k = 2 with an unstable
level 1 and a stable level 2, slope 0 for the final update (level 2 renormalises its growing input) while
level 2's second moment grows at level 1's rate (measured as the slope of ½ ln v₂).

**Training protocol** (:func:`training_experiment`; the paper's, THEORY §5). A small pre-LayerNorm
character-level transformer (:class:`kadam.experiments.tasks.CharTransformer`) trained full-batch on the
first characters of CPython's ``pydoc_data.topics`` text by Adam (``KAdam(k=1)``, ε = 1e-8, no weight
decay) for a grid of (β, γ) across both boundaries and several learning rates. Every step records
‖u_n‖_∞ = max|θ_n − θ_{n−1}|/η over all parameters. The classification criterion is stated and justified
in :func:`classify_run`.

Recommended sizes and times. Measured on the project's shared 2-core machine while ~6 other jobs ran
(load average 7–10), so wall-clock times are inflated 2–4×; CPU seconds (summed over worker processes)
are the contention-free cost, and CPU seconds / 2 is the wall time on 2 idle cores.

- switch-off: smoke = 16 of the k = 1 points and the 3 fast k = 2 configurations; quick = full = the
  default grid (72 k = 1 points, 32 inside / 40 outside the region, plus 6 k = 2 configurations):
  12–24 s wall (contended) for quick.
- training: ``run_profile`` / :func:`training_experiment` with ``TRAINING_SIZES[profile]``. quick
  (3 β × 5 γ × 3 η = 45 runs of 1,500 steps, ``workers=2``): 190 CPU-s, i.e. ≈ 95 s on 2 idle cores;
  442–493 s wall under the contention above. smoke (12 runs of 150 steps): 6.5 CPU-s; the whole smoke
  profile (both protocols, four figures) took 20 s wall with ``workers=1`` (35 s with ``workers=2``:
  process start-up dominates there).
  full (240 runs) ≈ 5.3× quick: ≈ 17 CPU-min, ≈ 9 min on 2 idle cores.

``python -m kadam.experiments.stability --profile {smoke,quick,full} --out DIR`` runs both protocols
and writes the JSON results and PNG figures.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from kadam.experiments.figures import pyplot, save_figure
from kadam.optimizer import KAdam
from kadam.optimizer.kadam import state_keys
from kadam.theory import stability

__all__ = [
    "CRITERION",
    "PROFILES",
    "TRAINING_SIZES",
    "TrainingSizes",
    "classify_run",
    "full_batch_characters",
    "late_phase_slope",
    "peak_window_slope",
    "plot_excess_by_learning_rate",
    "plot_region_map",
    "plot_slope_scatter",
    "plot_training_heatmaps",
    "run_profile",
    "train_recording_updates",
    "training_experiment",
    "optimizer_updates",
    "switch_off_grid",
    "switch_off_measurement",
    "switch_off_experiment",
]

_STATE_FLOOR = 1e-280  # moments below this are near float64's subnormal range (2.2e-308)
_STATE_CEILING = 1e280
_EPS_MARGIN = 1e6  # the window ends once sqrt(v) < _EPS_MARGIN * eps
_SETTLED = 1e-6  # on-phase length: every beta**N, gamma**N <= _SETTLED (slope bias <= 1e-6 |ln gamma|)
_MAX_SETTLE_STEPS = 200_000
_CEILING_ROUNDING = 1e-6  # float64 rounding allowance on ||u_n|| / C_n (u_1 = sign(g) sits exactly on C_1 = 1)


@contextmanager
def _unstable_levels_allowed() -> Iterator[None]:
    """Silence KAdam's warning about levels outside the stable region: these protocols put them there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*outside the stable region", category=UserWarning)
        yield


def _float64_kadam(betas: Sequence[float], gammas: Sequence[float], eps: float, size: int = 1) -> tuple[torch.Tensor, KAdam]:
    """A float64 parameter of ``size`` zeros and a k-level KAdam on it: lr = 1, no weight decay."""
    parameter = torch.zeros(size, dtype=torch.float64, requires_grad=True)
    levels = [(float(beta), float(gamma)) for beta, gamma in zip(betas, gammas, strict=True)]
    with _unstable_levels_allowed():
        optimizer = KAdam(
            [parameter], lr=1.0, k=len(levels), betas=levels, eps=eps, weight_decay=0.0, norm=["elementwise"] * len(levels)
        )
    return parameter, optimizer


def _step_with_gradient(parameter: torch.Tensor, optimizer: KAdam, gradient: torch.Tensor) -> torch.Tensor:
    """One optimizer step from θ = 0 with the given gradient; returns the update u = −θ (exact at lr = 1)."""
    with torch.no_grad():
        parameter.zero_()
    parameter.grad = gradient
    optimizer.step()
    return -parameter.detach().clone()


def optimizer_updates(
    inputs: np.ndarray | Sequence[float], betas: Sequence[float], gammas: Sequence[float], eps: float = 0.0
) -> np.ndarray:
    r"""The updates :math:`u_n` that the real :class:`~kadam.KAdam` makes for a given gradient sequence.

    ``inputs`` has shape (steps,) or (steps, d): the gradient fed at each step to a float64 parameter of d
    elements (elementwise levels, one level per entry of ``betas``/``gammas``, lr = 1, no weight decay).
    θ is reset to 0 before every step, so :math:`u_n = -\theta_n` holds exactly. Returns the same shape.
    """
    gradients = torch.as_tensor(np.asarray(inputs, dtype=np.float64))
    if gradients.ndim not in (1, 2) or gradients.shape[0] == 0:
        raise ValueError(f"inputs must have shape (steps,) or (steps, d) with steps >= 1, got {tuple(gradients.shape)}")
    per_step = gradients.reshape(gradients.shape[0], -1)
    parameter, optimizer = _float64_kadam(betas, gammas, eps, per_step.shape[1])
    updates = torch.stack([_step_with_gradient(parameter, optimizer, gradient.clone()) for gradient in per_step])
    return updates.reshape(gradients.shape).numpy()


def _settle_steps(betas: Sequence[float], gammas: Sequence[float]) -> int:
    slowest = max(max(betas), max(gammas))
    if slowest == 0.0:
        return 1
    return min(_MAX_SETTLE_STEPS, max(1, math.ceil(math.log(_SETTLED) / math.log(slowest))))


def _fit_slope(values: np.ndarray) -> float:
    """Least-squares slope of ``values`` against their index."""
    return float(np.polyfit(np.arange(len(values), dtype=np.float64), values, 1)[0])


def _state_usable(optimizer: KAdam, parameter: torch.Tensor, eps: float) -> bool:
    """Whether every level's moments are still in float64's comfortable range and clear of ε."""
    state = optimizer.state[parameter]
    for level in range(1, optimizer.param_groups[0]["k"] + 1):
        first_key, second_key = state_keys(level)
        second = state[second_key].item()
        first = abs(state[first_key].item()) if first_key in state else second  # beta1 = 0: no m is stored
        if not (_STATE_FLOOR < first < _STATE_CEILING and _STATE_FLOOR < second < _STATE_CEILING):
            return False
        if eps > 0.0 and math.sqrt(second) < _EPS_MARGIN * eps:
            return False
    return True


def switch_off_measurement(
    betas: Sequence[float], gammas: Sequence[float], *, window_steps: int = 200, eps: float = 0.0
) -> dict[str, Any]:
    """Run the switch-off protocol once (module docstring) for one k-level configuration.

    Returns the predicted and measured slope of ln|u_t| for the final update, the slope of ½ ln of the last
    level's second moment (for k ≥ 2 it tracks the level below's output), the usable window length, the
    on-phase length and the largest |u_t| seen after the switch.
    """
    if window_steps < 8:
        raise ValueError(f"window_steps must be an integer >= 8, got {window_steps!r}")
    parameter, optimizer = _float64_kadam(betas, gammas, eps)
    settle = _settle_steps(betas, gammas)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for _ in range(settle):
        _step_with_gradient(parameter, optimizer, one.clone())
    k = len(betas)
    second_moment_key = state_keys(k)[1]
    log_updates, log_second_moment = [], []
    for _ in range(window_steps):
        update = _step_with_gradient(parameter, optimizer, zero.clone()).item()
        if not (_state_usable(optimizer, parameter, eps) and 0.0 < abs(update) < _STATE_CEILING):
            break
        log_updates.append(math.log(abs(update)))
        log_second_moment.append(0.5 * math.log(optimizer.state[parameter][second_moment_key].item()))
    predicted = np.asarray(stability.switch_off_rates(list(betas), list(gammas)))
    usable = len(log_updates)
    fitted = slice(usable // 2, usable)
    measured = _fit_slope(np.asarray(log_updates[fitted])) if usable >= 8 else math.nan
    return {
        "betas": [float(b) for b in betas],
        "gammas": [float(g) for g in gammas],
        "eps": eps,
        "settle_steps": settle,
        "usable_window": usable,
        "predicted_slope": float(predicted[-1]),
        "predicted_level_slopes": [float(p) for p in predicted],
        "measured_slope": measured,
        "measured_half_log_second_moment_slope": (
            _fit_slope(np.asarray(log_second_moment[fitted])) if usable >= 8 else math.nan
        ),
        "max_abs_update_after_switch": float(math.exp(max(log_updates))) if log_updates else math.nan,
        "update_bound": float(stability.kadam_update_bound(list(betas), list(gammas))),
    }


SWITCH_OFF_BETAS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
SWITCH_OFF_RATES = (-0.3, -0.1, -0.03, -0.01, -0.003, 0.003, 0.01, 0.03, 0.1, 0.3)
SWITCH_OFF_KADAM2 = (
    # (level 1, level 2): unstable level 1, stable level 2 (predicted final slope 0) ...
    ((0.9, 0.5), (0.0, 0.999)),
    ((0.9, 0.7), (0.0, 0.999)),
    ((0.95, 0.8), (0.9, 0.999)),
    ((0.8, 0.5), (0.5, 0.99)),
    # ... and two stable levels (the slope composes, see switch_off_rates).
    ((0.9, 0.99), (0.5, 0.9)),
    ((0.8, 0.9), (0.3, 0.5)),
)


def switch_off_grid(
    betas: Sequence[float] = SWITCH_OFF_BETAS, rates: Sequence[float] = SWITCH_OFF_RATES, max_gamma: float = 0.99
) -> list[tuple[float, float]]:
    r"""(β, γ) points at prescribed growth rates ρ on both sides of γ = β²: γ = β² e^{−2ρ}, γ ≤ ``max_gamma``.

    ``max_gamma`` bounds the on-phase (≈ 14/(1−γ) steps). The default grid has 72 points, 40 outside the
    region (ρ > 0) and 32 inside, |ρ| from 0.003 to 0.3.
    """
    points = []
    for beta in betas:
        for rate in rates:
            gamma = beta**2 * math.exp(-2.0 * rate)
            if 0.0 < gamma <= max_gamma:
                points.append((float(beta), gamma))
    return points


def switch_off_experiment(
    points: Sequence[tuple[float, float]] | None = None,
    kadam2_points: Sequence[tuple[tuple[float, float], tuple[float, float]]] = SWITCH_OFF_KADAM2,
    *,
    window_steps: int = 200,
    eps: float = 0.0,
    point_limit: int | None = None,
    relative_tolerance: float = 0.02,
    absolute_tolerance: float = 1e-3,
    progress: bool = True,
) -> dict[str, Any]:
    """The switch-off protocol over a grid of k = 1 points and k = 2 configurations (module docstring).

    A point passes when |measured − predicted| ≤ ``relative_tolerance``·|predicted| + ``absolute_tolerance``.
    ``point_limit`` keeps every i-th point of the k = 1 grid (spread across it) for a smoke run.
    """
    grid = list(switch_off_grid() if points is None else points)
    if point_limit is not None:
        if point_limit < 1:
            raise ValueError(f"point_limit must be an integer >= 1, got {point_limit!r}")
        grid = [grid[int(i)] for i in np.linspace(0, len(grid) - 1, min(point_limit, len(grid)))]
    configurations = [([b], [g]) for b, g in grid] + [
        ([level1[0], level2[0]], [level1[1], level2[1]]) for level1, level2 in kadam2_points
    ]
    rows = []
    for betas, gammas in _progress(configurations, "switch-off protocol", progress):
        row = switch_off_measurement(betas, gammas, window_steps=window_steps, eps=eps)
        error = abs(row["measured_slope"] - row["predicted_slope"])
        row["abs_error"] = error
        row["within_tolerance"] = bool(error <= relative_tolerance * abs(row["predicted_slope"]) + absolute_tolerance)
        row["stable"] = bool(stability.kadam_is_stable(betas, gammas))
        rows.append(row)
    single = [row for row in rows if len(row["betas"]) == 1]
    return {
        "protocol": "switch-off",
        "relative_tolerance": relative_tolerance,
        "absolute_tolerance": absolute_tolerance,
        "rows": rows,
        "points_k1": len(single),
        "points_k1_stable": sum(row["stable"] for row in single),
        "points_k1_unstable": sum(not row["stable"] for row in single),
        "all_within_tolerance": all(row["within_tolerance"] for row in rows),
        "max_abs_error": max(row["abs_error"] for row in rows),
    }


def _progress(items: Sequence[Any], description: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, transient=True)


# ----------------------------------------------------------------------------------------------------
# training protocol (THEORY §5)

@dataclass(frozen=True)
class TrainingSizes:
    """Sizes of one training run: steps, full-batch corpus length, and the char transformer's shape."""

    steps: int = 1500
    corpus_chars: int = 512
    context: int = 16
    width: int = 16
    heads: int = 2
    layers: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'seed' else 1}, got {value!r}")


TRAINING_SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"betas": (0.5, 0.9), "gammas": (0.3, 0.95), "learning_rates": (1e-2, 1e-3, 1e-4),
              "sizes": TrainingSizes(steps=150)},
    "quick": {"betas": (0.5, 0.7, 0.9), "gammas": (0.3, 0.5, 0.7, 0.8, 0.95), "learning_rates": (1e-2, 1e-3, 1e-4),
              "sizes": TrainingSizes()},
    "full": {
        "betas": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
        "gammas": (0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99),
        "learning_rates": (1e-2, 3e-3, 1e-3, 1e-4),
        "sizes": TrainingSizes(),
    },
}
"""Grids of :func:`training_experiment` per profile (other sizes at their defaults)."""


def full_batch_characters(corpus_chars: int, context: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first ``corpus_chars + 1`` characters of ``pydoc_data.topics`` as one full batch of windows.

    Returns (inputs, targets, vocabulary size): ``corpus_chars // context`` non-overlapping windows of
    ``context`` characters, targets shifted by one; the vocabulary is the characters that occur.
    """
    from kadam.experiments.tasks import encode_characters

    if context < 1 or corpus_chars < context:
        raise ValueError(f"need 1 <= context <= corpus_chars, got context={context}, corpus_chars={corpus_chars}")
    tokens, vocabulary_size = encode_characters(corpus_chars + 1)
    windows = corpus_chars // context
    span = windows * context
    return tokens[:span].view(windows, context), tokens[1 : span + 1].view(windows, context), vocabulary_size


def train_recording_updates(
    beta: float, gamma: float, learning_rate: float, sizes: TrainingSizes = TrainingSizes()
) -> dict[str, Any]:
    r"""Train the char transformer full-batch with Adam (``KAdam(k=1)``, ε = 1e-8, no weight decay), float64.

    Records, per step n, :math:`\|u_n\|_\infty = \max|\theta_n - \theta_{n-1}|/\eta` over every parameter
    and the training loss (before the step). A non-finite loss ends the run early (``diverged``).
    """
    from kadam.experiments.tasks import CharTransformer

    inputs, targets, vocabulary_size = full_batch_characters(sizes.corpus_chars, sizes.context)
    torch.manual_seed(sizes.seed)
    model = CharTransformer(vocabulary_size, sizes.context, sizes.width, sizes.heads, sizes.layers).double()
    parameters = list(model.parameters())
    with _unstable_levels_allowed():
        optimizer = KAdam(parameters, lr=learning_rate, k=1, betas=(beta, gamma), eps=1e-8, weight_decay=0.0, foreach=True)
    update_norms, losses = [], []
    diverged = False
    for _ in range(sizes.steps):
        loss = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        if not torch.isfinite(loss):
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        before = [p.detach().clone() for p in parameters]
        optimizer.step()
        with torch.no_grad():
            largest = max(float((p - old).abs().max()) for p, old in zip(parameters, before))
        update_norms.append(largest / learning_rate)
        losses.append(float(loss.detach()))
    return {"update_inf_norms": update_norms, "losses": losses, "diverged": diverged}


CRITERION = (
    "unstable iff the loss became non-finite or, at some step n, ||u_n||_inf > C_n(beta) = sup over gamma' > beta^2 "
    "of B_n(beta, gamma') = B_n(beta, beta^2): an update that no gamma' inside either stable region (exact or "
    "paper, they share this supremum) can produce with the same beta, for any gradients and eps >= 0 (THEORY §2). "
    "No stable run can be flagged; the run's own gamma is not used; no tuned threshold. 'late': the same test on "
    "the second half of the run."
)


def classify_run(beta: float, update_inf_norms: Sequence[float], diverged: bool = False) -> dict[str, Any]:
    r"""Classify a training run as unstable or not; the criterion and why.

    **Criterion.** Unstable iff the loss became non-finite, or at some step n

    .. math::
        \|u_n\|_\infty > C_n(\beta) = \sup_{\gamma' > \beta^2} B_n(\beta, \gamma')
        = B_n(\beta, \beta^2)

    (:func:`kadam.theory.stability.stable_update_ceiling`): the run made an update larger than any
    second-moment decay γ' inside the stable region could make at that step with the same β, for any
    gradients and any ε ≥ 0.

    **Why this criterion.** (1) It is a certificate: by THEORY §2 no run with γ above either boundary
    can trigger it, so a flagged run is unstable beyond doubt, while a run whose updates stay below the
    ceiling behaved as some stable γ' could have. (2) It does not look at the run's own γ, and the same
    ceiling is the supremum over the paper's region γ > β/(2−β) (the supremum is the γ → 1 limit,
    common to both regions), so it favours neither boundary. (3) It needs no tuned threshold and no
    assumption that growth is sustained: training gradients never switch off, and in our runs
    ‖u_n‖_∞ rises in bursts rather than along one exponential. Its cost: it is one-sided. A run just
    outside the region whose updates never leave the envelope of stable behaviour is counted stable;
    that is exactly the reviewers' point (the *measured* region can be wider than the theoretical one),
    which this protocol measures rather than assumes away.

    The same test restricted to the second half of the run gives ``late_unstable`` (a secondary view:
    does the run still leave the stable envelope once training has settled?).

    Returns ``unstable``, ``late_unstable``, ``excess`` = max_n ‖u_n‖_∞ / C_n(β) (> 1 iff flagged by the
    ceiling), ``late_excess`` (the same over the second half), ``first_exceeding_step`` (1-based, or
    None) and ``diverged``.
    """
    norms = np.asarray(update_inf_norms, dtype=np.float64)
    if norms.size == 0:
        return {"unstable": bool(diverged), "late_unstable": bool(diverged), "excess": math.nan, "late_excess": math.nan,
                "first_exceeding_step": None, "diverged": diverged}
    ceilings = np.asarray(stability.stable_update_ceiling(beta, np.arange(1, norms.size + 1)))
    ratios = norms / ceilings
    exceeding = np.flatnonzero(ratios > 1.0 + _CEILING_ROUNDING)
    late = ratios[norms.size // 2 :]
    return {
        "unstable": bool(diverged or exceeding.size > 0),
        "late_unstable": bool(diverged or (late > 1.0 + _CEILING_ROUNDING).any()),
        "excess": float(ratios.max()),
        "late_excess": float(late.max()),
        "first_exceeding_step": int(exceeding[0]) + 1 if exceeding.size else None,
        "diverged": diverged,
    }


def late_phase_slope(update_inf_norms: Sequence[float], fraction: float = 1.0 / 3.0) -> float:
    """Least-squares slope of ln ‖u_n‖_∞ over the last ``fraction`` of the run (per step)."""
    norms = np.asarray(update_inf_norms, dtype=np.float64)
    late = norms[int(len(norms) * (1.0 - fraction)) :]
    late = late[late > 0.0]
    return _fit_slope(np.log(late)) if late.size >= 8 else math.nan


def peak_window_slope(update_inf_norms: Sequence[float], window: int = 20) -> float:
    """Steepest least-squares slope of ln ‖u_n‖_∞ over any ``window`` consecutive steps (a growth episode)."""
    norms = np.asarray(update_inf_norms, dtype=np.float64)
    if norms.size < window or (norms <= 0.0).any():
        return math.nan
    offsets = np.arange(window) - (window - 1) / 2.0
    weights = offsets / np.sum(offsets**2)  # slope = sum(weights * y) over each window
    return float(np.convolve(np.log(norms), weights[::-1], mode="valid").max())


def _training_point(spec: tuple[float, float, float, TrainingSizes]) -> dict[str, Any]:
    """One (β, γ, η) run plus its classification; a top-level function so worker processes can run it."""
    torch.set_num_threads(1)
    beta, gamma, learning_rate, sizes = spec
    start = time.process_time()
    run = train_recording_updates(beta, gamma, learning_rate, sizes)
    return {
        "cpu_seconds": time.process_time() - start,
        "beta": beta,
        "gamma": gamma,
        "learning_rate": learning_rate,
        "predicted_rate": float(stability.growth_rate(beta, gamma)),
        "predicted_rate_paper": float(stability.growth_rate(beta, gamma, rates="paper")),
        "stable_exact": bool(stability.is_stable(beta, gamma)),
        "stable_paper": bool(stability.is_stable(beta, gamma, rates="paper")),
        **classify_run(beta, run["update_inf_norms"], run["diverged"]),
        "late_phase_slope": late_phase_slope(run["update_inf_norms"]),
        "peak_window_slope": peak_window_slope(run["update_inf_norms"]),
        "max_update_inf_norm": max(run["update_inf_norms"], default=math.nan),
        "final_loss": run["losses"][-1] if run["losses"] else math.nan,
        "update_inf_norms": [float(f"{value:.6g}") for value in run["update_inf_norms"]],
        "losses_every_10": [float(f"{value:.6g}") for value in run["losses"][::10]],
    }


def _agreement(rows: list[dict[str, Any]], measured: str, predicted_stable: str) -> float:
    return float(np.mean([row[measured] == (not row[predicted_stable]) for row in rows]))


def training_experiment(
    betas: Sequence[float] = TRAINING_SIZES["quick"]["betas"],
    gammas: Sequence[float] = TRAINING_SIZES["quick"]["gammas"],
    learning_rates: Sequence[float] = TRAINING_SIZES["quick"]["learning_rates"],
    sizes: TrainingSizes = TrainingSizes(),
    *,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """The training protocol over the grid betas × gammas × learning_rates (module docstring).

    Every run starts from the same initialisation (``seed``). Per learning rate the result lists how many
    points were measured unstable, the agreement of the measured class with γ = β² and with
    γ = β/(2−β), and per β the measured boundary: the largest γ of the grid classified unstable.
    ``workers`` > 1 runs points in that many processes (one torch thread each).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    specs = [(float(b), float(g), float(lr), sizes) for lr in learning_rates for b in betas for g in gammas]
    rows = _run_points(specs, workers, progress)
    per_learning_rate = []
    for lr in learning_rates:
        subset = [row for row in rows if row["learning_rate"] == float(lr)]
        measured_boundary = {}
        for beta in betas:
            unstable_gammas = [row["gamma"] for row in subset if row["beta"] == float(beta) and row["unstable"]]
            measured_boundary[str(float(beta))] = max(unstable_gammas) if unstable_gammas else None
        per_learning_rate.append({
            "learning_rate": float(lr),
            "points": len(subset),
            "measured_unstable": sum(row["unstable"] for row in subset),
            "predicted_unstable_exact": sum(not row["stable_exact"] for row in subset),
            "predicted_unstable_paper": sum(not row["stable_paper"] for row in subset),
            "measured_late_unstable": sum(row["late_unstable"] for row in subset),
            "agreement_exact": _agreement(subset, "unstable", "stable_exact"),
            "agreement_paper": _agreement(subset, "unstable", "stable_paper"),
            "late_agreement_exact": _agreement(subset, "late_unstable", "stable_exact"),
            "late_agreement_paper": _agreement(subset, "late_unstable", "stable_paper"),
            "median_excess_of_unstable_exact": float(np.median([row["excess"] for row in subset if not row["stable_exact"]]))
            if any(not row["stable_exact"] for row in subset) else None,
            "largest_unstable_gamma_per_beta": measured_boundary,
        })
    return {"protocol": "training", "criterion": CRITERION, "sizes": asdict(sizes), "betas": [float(b) for b in betas],
            "gammas": [float(g) for g in gammas], "learning_rates": [float(lr) for lr in learning_rates],
            "cpu_seconds": sum(row["cpu_seconds"] for row in rows), "per_learning_rate": per_learning_rate,
            "widening": _widening(rows, per_learning_rate), "rows": rows}


def _widening(rows: list[dict[str, Any]], per_learning_rate: list[dict[str, Any]]) -> dict[str, Any]:
    """Does the measured unstable set shrink from the largest to the smallest learning rate?

    ``widens``/``widens_late``: fewer points flagged (whole run / second half) at the smallest η than at
    the largest; ``excess_shrinks``: every point outside γ = β² has a smaller excess at the smallest η.
    """
    largest = max(per_learning_rate, key=lambda summary: summary["learning_rate"])
    smallest = min(per_learning_rate, key=lambda summary: summary["learning_rate"])
    unstable_points = {(row["beta"], row["gamma"]) for row in rows if not row["stable_exact"]}
    excess = {(row["beta"], row["gamma"], row["learning_rate"]): row["excess"] for row in rows}
    return {
        "largest_learning_rate": largest["learning_rate"],
        "smallest_learning_rate": smallest["learning_rate"],
        "widens": smallest["measured_unstable"] < largest["measured_unstable"],
        "widens_late": smallest["measured_late_unstable"] < largest["measured_late_unstable"],
        "excess_shrinks": all(
            excess[(b, g, smallest["learning_rate"])] < excess[(b, g, largest["learning_rate"])] for b, g in unstable_points
        ) if unstable_points and largest is not smallest else None,
    }


def _run_points(specs: list[tuple[float, float, float, TrainingSizes]], workers: int, progress: bool) -> list[dict[str, Any]]:
    if workers == 1:
        return [_training_point(spec) for spec in _progress(specs, "training protocol", progress)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(_progress_map(pool.map(_training_point, specs), len(specs), progress))


def _progress_map(results: Iterator[Any], total: int, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from results
        return
    from rich.progress import track

    yield from track(results, total=total, description="training protocol", transient=True)


# ----------------------------------------------------------------------------------------------------
# figures (PNG, matplotlib's Agg backend)


def _draw_boundaries(axes: Any, betas: np.ndarray, *, log_one_minus: bool = False) -> None:
    """γ = β² and γ = β/(2−β) on (β, γ) axes, or on (1−β, 1−γ) axes when ``log_one_minus``."""
    curves = (("discrete", "r-", "gamma = beta^2 (exact)"), ("paper", "m--", "gamma = beta/(2-beta) (paper)"))
    for rates, style, label in curves:
        gammas = np.asarray(stability.boundary_gamma(betas, rates))
        if log_one_minus:
            axes.plot(1.0 - betas, 1.0 - gammas, style, lw=2, label=label)
        else:
            axes.plot(betas, gammas, style, lw=2, label=label)


def plot_region_map(path: str, presets: Sequence[tuple[float, float]] = stability.PRESETS) -> None:
    """The (β, γ) map on log axes of 1 − β and 1 − γ: log10 B_∞ contours, both boundaries, ``presets`` marked."""
    plt = pyplot()
    one_minus_beta = np.logspace(-3, 0, 400)[:-1]
    one_minus_gamma = np.logspace(-5, 0, 400)[:-1]
    beta_grid, gamma_grid = np.meshgrid(1.0 - one_minus_beta, 1.0 - one_minus_gamma)
    log_bound = np.asarray(stability.update_bound(beta_grid, gamma_grid, log=True)) / math.log(10.0)
    figure, axes = plt.subplots(figsize=(7.5, 6.0))
    filled = axes.contourf(one_minus_beta, one_minus_gamma, np.where(np.isfinite(log_bound), log_bound, np.nan),
                           levels=np.arange(0.0, 4.01, 0.25), cmap="viridis", extend="max")
    axes.contour(one_minus_beta, one_minus_gamma, log_bound, levels=[0.5, 1.0, 1.5, 2.0, 3.0], colors="white",
                 linewidths=0.6)
    figure.colorbar(filled, ax=axes, label="log10 B_inf (exact sup of |u|, THEORY §2)")
    axes.contourf(one_minus_beta, one_minus_gamma, np.isfinite(log_bound).astype(float), levels=[-0.5, 0.5],
                  colors="0.85")
    _draw_boundaries(axes, 1.0 - one_minus_beta, log_one_minus=True)
    for beta, gamma in presets:
        axes.plot(1.0 - beta, 1.0 - gamma, "k*", ms=11)
        axes.annotate(f"({beta}, {gamma})", (1.0 - beta, 1.0 - gamma), textcoords="offset points", xytext=(6, 4),
                      fontsize=8)
    axes.set(xscale="log", yscale="log", xlabel="1 - beta", ylabel="1 - gamma", ylim=(one_minus_gamma[0], 1.0))
    axes.set_title("Stable region of Adam's (beta, gamma); grey: unstable", fontsize=10)
    axes.legend(loc="lower right", fontsize=8)
    save_figure(figure, path, dpi=130)


def _cell_edges(values: Sequence[float]) -> np.ndarray:
    """Edges of heatmap cells centred on sorted ``values`` (midpoints, half-cells at the ends, clipped to [0, 1])."""
    centres = np.asarray(sorted(values), dtype=np.float64)
    if centres.size == 1:
        return np.clip(centres[0] + np.array([-0.05, 0.05]), 0.0, 1.0)
    middles = (centres[1:] + centres[:-1]) / 2.0
    return np.clip(np.concatenate([[2 * centres[0] - middles[0]], middles, [2 * centres[-1] - middles[-1]]]), 0.0, 1.0)


def plot_training_heatmaps(result: dict[str, Any], path: str) -> None:
    """One heatmap per learning rate: log10 of max_n ‖u_n‖_∞ / C_n(β) per (β, γ), measured class, both boundaries."""
    plt = pyplot()
    betas, gammas, learning_rates = sorted(result["betas"]), sorted(result["gammas"]), result["learning_rates"]
    figure, axes_row = plt.subplots(1, len(learning_rates), figsize=(4.6 * len(learning_rates), 4.4), squeeze=False)
    image = None
    for axes, lr in zip(axes_row[0], learning_rates):
        excess = np.full((len(gammas), len(betas)), np.nan)
        for row in result["rows"]:
            if row["learning_rate"] == lr:
                excess[gammas.index(row["gamma"]), betas.index(row["beta"])] = math.log10(max(row["excess"], 1e-3))
                axes.text(row["beta"], row["gamma"], "U" if row["unstable"] else "s", ha="center", va="center",
                          color="white" if row["unstable"] else "black", fontsize=9, fontweight="bold")
        image = axes.pcolormesh(_cell_edges(betas), _cell_edges(gammas), excess, cmap="coolwarm", vmin=-1.0, vmax=1.0,
                                shading="flat")
        curve = np.linspace(_cell_edges(betas)[0], min(_cell_edges(betas)[-1], 0.9999), 200)
        _draw_boundaries(axes, curve)
        axes.set(xlabel="beta", ylabel="gamma", title=f"lr = {lr:g}", ylim=(_cell_edges(gammas)[0], _cell_edges(gammas)[-1]))
    axes_row[0][0].legend(loc="lower right", fontsize=7)
    figure.colorbar(image, ax=axes_row[0].tolist(), label="log10 max_n ||u_n||_inf / C_n(beta)  (> 0: unstable)")
    figure.suptitle("Training protocol: U = measured unstable (update above every stable gamma's bound), s = not")
    save_figure(figure, path, dpi=120, bbox_tight=True)


def plot_excess_by_learning_rate(result: dict[str, Any], path: str) -> None:
    """max_n ‖u_n‖_∞ / C_n(β) against η, one line per (β, γ): does measured instability fade as η shrinks?"""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 5.0))
    points = sorted({(row["beta"], row["gamma"]) for row in result["rows"]})
    colours = plt.cm.plasma(np.linspace(0.0, 0.85, len(points)))
    for (beta, gamma), colour in zip(points, colours):
        rows = sorted((row for row in result["rows"] if (row["beta"], row["gamma"]) == (beta, gamma)),
                      key=lambda row: row["learning_rate"])
        stable = stability.is_stable(beta, gamma)
        axes.plot([row["learning_rate"] for row in rows], [row["excess"] for row in rows], "-" if not stable else ":",
                  marker="o" if not stable else ".", color=colour,
                  label=f"({beta:g}, {gamma:g}) rho = {float(stability.growth_rate(beta, gamma)):+.3f}")
    axes.axhline(1.0, color="k", lw=1.0)
    axes.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="max_n ||u_n||_inf / C_n(beta)",
             title="Above 1: an update no stable gamma allows")
    axes.legend(fontsize=6, ncol=2)
    save_figure(figure, path, dpi=130)


def plot_slope_scatter(switch_off: dict[str, Any] | None, training: dict[str, Any] | None, path: str) -> None:
    """Measured against predicted slope of ln|u|: switch-off points (k = 1, k = 2) and training late-phase slopes."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 5.6))
    predicted_all: list[float] = []
    if switch_off is not None:
        for k, marker, label in ((1, "o", "switch-off, k = 1"), (2, "^", "switch-off, k = 2 (final update)")):
            rows = [row for row in switch_off["rows"] if len(row["betas"]) == k]
            predicted = [row["predicted_slope"] for row in rows]
            axes.plot(predicted, [row["measured_slope"] for row in rows], marker, ls="none", mfc="none", label=label)
            predicted_all += predicted
    if training is not None:
        colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(training["learning_rates"])))
        for lr, colour in zip(training["learning_rates"], colours):
            rows = [row for row in training["rows"] if row["learning_rate"] == lr]
            predicted = [row["predicted_rate"] for row in rows]
            axes.plot(predicted, [row["late_phase_slope"] for row in rows], "s", ls="none", color=colour, ms=5,
                      label=f"training, late-phase slope, lr = {lr:g}")
            axes.plot(predicted, [row["peak_window_slope"] for row in rows], "D", ls="none", color=colour, ms=5,
                      mfc="none", label=f"training, steepest 20-step slope, lr = {lr:g}")
            predicted_all += predicted
    if predicted_all:
        span = np.array([min(predicted_all), max(predicted_all)])
        axes.plot(span, span, "k-", lw=0.8, label="measured = predicted")
    axes.axhline(0.0, color="0.6", lw=0.6)
    axes.axvline(0.0, color="0.6", lw=0.6)
    axes.set(xlabel="predicted rate ln(beta) - ln(gamma)/2 (per step)", ylabel="measured slope of ln ||u_n||_inf (per step)",
             title="Growth rate of the update: measured vs predicted")
    axes.legend(fontsize=7)
    save_figure(figure, path, dpi=130)


# ----------------------------------------------------------------------------------------------------
# one entry point per profile: ``python -m kadam.experiments.stability --profile full --out DIR``

PROFILES = ("smoke", "quick", "full")


def run_profile(profile: str, out_dir: str, *, workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Both protocols at ``profile``'s sizes; writes JSON results and the three PNG figures into ``out_dir``.

    Returns a summary (file names, wall-clock seconds per protocol, headline numbers).
    """
    import json
    from pathlib import Path

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if profile == "smoke":  # 16 k = 1 points; k = 2 without the 14k-step on-phases of gamma_2 = 0.999
        switch_off = switch_off_experiment(kadam2_points=SWITCH_OFF_KADAM2[3:], point_limit=16, progress=progress)
    else:
        switch_off = switch_off_experiment(progress=progress)
    switch_off["seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    training = training_experiment(**TRAINING_SIZES[profile], workers=workers, progress=progress)
    training["seconds"] = time.perf_counter() - start
    training["workers"] = workers
    for name, result in (("switch_off", switch_off), ("training", training)):
        (out / f"stability_{name}.json").write_text(json.dumps(result))
    plot_training_heatmaps(training, str(out / "stability_training_heatmaps.png"))
    plot_slope_scatter(switch_off, training, str(out / "stability_slopes.png"))
    plot_excess_by_learning_rate(training, str(out / "stability_excess_by_lr.png"))
    plot_region_map(str(out / "stability_region.png"))
    return {
        "profile": profile,
        "switch_off_seconds": switch_off["seconds"],
        "training_seconds": training["seconds"],
        "switch_off_all_within_tolerance": switch_off["all_within_tolerance"],
        "switch_off_max_abs_error": switch_off["max_abs_error"],
        "training_per_learning_rate": training["per_learning_rate"],
        "files": sorted(str(path.name) for path in out.glob("stability_*")),
    }


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Stability of (beta, gamma): switch-off and training protocols.")
    parser.add_argument("--profile", choices=PROFILES, default="quick", help="grid sizes (default quick)")
    parser.add_argument("--out", default="stability-report", help="output folder for JSON and PNG files")
    parser.add_argument("--workers", type=int, default=2, help="processes for the training grid (default 2)")
    args = parser.parse_args(argv)
    print(json.dumps(run_profile(args.profile, args.out, workers=args.workers), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
