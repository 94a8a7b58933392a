r"""Measuring the stable region of (β, γ) through the real :class:`~kadam.KAdam` code (THEORY §2, §5).

**Switch-off protocol** (:func:`switch_off_experiment`; the optimizer alone). A scalar float64 parameter
is driven by the gradient ``x = 1`` for ``N`` steps, ``N`` chosen so that every βᴺ, γᴺ ≤ 1e-6 (the bias
corrections have settled: their drift biases the slope by at most 1e-6·|ln γ|), then by ``x = 0``. With
lr = 1, weight decay 0 and θ reset to 0 before each step, the update is read exactly as ``u_n = -θ_n``.
The fitted quantity is the least-squares slope of ln|u_t| over the second half of the *usable window*: the
zero-input steps before any level's moment leaves [1e-280, 1e280] (underflow/overflow takes over) or, for
ε > 0, before √v falls below 10⁶·ε (ε takes over), at most ``window_steps`` long. The prediction is
:func:`kadam.stability.switch_off_rates`: ln β − ½ ln γ for k = 1; for k = 2 with an unstable
level 1 and a stable level 2, slope 0 for the final update (level 2 renormalises its growing input) while
level 2's second moment grows at level 1's rate (measured as the slope of ½ ln v₂).

**Training protocol** (:func:`training_protocol`; the paper's, THEORY §5). A small pre-LayerNorm
character-level transformer trained full-batch on the first characters of CPython's ``pydoc_data.topics``
text by Adam (``KAdam(k=1)``, ε = 1e-8, no weight decay) at every (β, γ) of :func:`protocol_grid` (points
outside both boundaries, between γ = β² and γ = β/(2−β), and inside both), one learning rate and one
initialisation seed per cell. Every step records ‖u_n‖_∞ = max|θ_n − θ_{n−1}|/η over all parameters and
the training loss. Each run is classified by :data:`CRITERION` (:func:`classify_run`), which reads only
the run's own loss and update norms, never β, γ or a boundary.

**Margin runs** (:func:`margin_runs`): the mini-batch character transformer trained by Adam at every point
of the grid for one learning rate and seed, with the references the margin analysis needs (the untrained
model's validation loss and the constant predictor's loss).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from scipy import stats

from kadam import stability
from kadam.experiments.training.protocol import train_run
from kadam.experiments.workloads import CharTransformer, build_task, encode_characters, seeded_initialisation
from kadam.optimizer import KAdam
from kadam.optimizer.kadam import state_keys

__all__ = [
    "CRITERION",
    "DIVERGENCE_FACTOR",
    "GROWTH_BLOCKS",
    "GROWTH_CONFIDENCE",
    "GROWTH_FACTOR",
    "MarginCell",
    "ProtocolCell",
    "ProtocolRow",
    "SwitchOffResult",
    "TrainingSizes",
    "classify_run",
    "full_batch_characters",
    "growth_test",
    "loss_diverged",
    "margin_runs",
    "optimizer_updates",
    "protocol_grid",
    "region_of",
    "switch_off_experiment",
    "switch_off_grid",
    "switch_off_measurement",
    "train_recording_updates",
    "training_protocol",
]


class SwitchOffResult(TypedDict):
    """What :func:`switch_off_experiment` returns: one row per configuration (:func:`switch_off_measurement`
    plus ``abs_error``, ``within_tolerance``, ``stable``) and the counts the section reports."""

    protocol: str
    relative_tolerance: float
    absolute_tolerance: float
    rows: list[dict[str, Any]]
    points_k1: int
    points_k1_stable: int
    points_k1_unstable: int
    all_within_tolerance: bool
    max_abs_error: float


class ProtocolRow(TypedDict):
    """One (β, γ, η, seed) run of the training protocol: predictions, :func:`classify_run`'s verdict, curves."""

    cpu_seconds: float
    beta: float
    gamma: float
    learning_rate: float
    seed: int
    region: str
    predicted_rate: float
    predicted_rate_paper: float
    stable_exact: bool
    stable_paper: bool
    unstable: bool
    late_unstable: bool
    diverged: bool
    grows: bool
    late_grows: bool
    slope: float
    slope_interval: list[float]
    late_phase_slope: float
    late_slope_interval: list[float]
    max_update_inf_norm: float
    initial_loss: float
    final_loss: float
    update_inf_norms: list[float]
    curve_every: int
    losses_every_10: list[float]


class ProtocolCell(TypedDict):
    """What :func:`training_protocol` returns: the rows of one learning rate and seed, and the criterion."""

    criterion: str
    rows: list[ProtocolRow]


class MarginCell(TypedDict):
    """What :func:`margin_runs` returns: one :func:`~kadam.experiments.training.protocol.train_run` per point,
    the untrained model's validation loss (this seed's initialisation) and the constant predictor's loss."""

    lr: float
    seed: int
    untrained_validation_loss: float
    constant_predictor_loss: float
    runs: list[dict[str, Any]]


_STATE_FLOOR = 1e-280  # moments below this are near float64's subnormal range (2.2e-308)
_STATE_CEILING = 1e280
_EPS_MARGIN = 1e6  # the window ends once sqrt(v) < _EPS_MARGIN * eps
_SETTLED = 1e-6  # on-phase length: every beta**N, gamma**N <= _SETTLED (slope bias <= 1e-6 |ln gamma|)
_MAX_SETTLE_STEPS = 200_000


@contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Flush float64 subnormals (below 2.2e-308) to zero inside, as the CPU allows, and restore the caller's
    setting after (read by whether 1e-300 × 1e-10 rounds to 0). Moments of coordinates whose gradient has
    died decay into that range, where each operation costs many times a normal one; flushing changes a
    value only below 2.2e-308."""

    def flushing() -> bool:
        return float(torch.tensor(1e-300, dtype=torch.float64) * 1e-10) == 0.0

    before = flushing()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


@contextmanager
def _unstable_levels_allowed() -> Iterator[None]:
    """Silence KAdam's warning about levels outside the stable region: these protocols put them there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=stability.StabilityWarning)
        yield


def _float64_kadam(
    betas: Sequence[float], gammas: Sequence[float], eps: float, size: int = 1
) -> tuple[torch.Tensor, KAdam]:
    """A float64 parameter of ``size`` zeros and a k-level KAdam on it: lr = 1, no weight decay."""
    parameter = torch.zeros(size, dtype=torch.float64, requires_grad=True)
    levels = [(float(beta), float(gamma)) for beta, gamma in zip(betas, gammas, strict=True)]
    with _unstable_levels_allowed():
        optimizer = KAdam(
            [parameter],
            lr=1.0,
            k=len(levels),
            betas=levels,
            eps=eps,
            weight_decay=0.0,
            norm=["elementwise"] * len(levels),
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
    progress: Callable[[int, int], None] | None = None,
) -> SwitchOffResult:
    """The switch-off protocol over a grid of k = 1 points and k = 2 configurations (module docstring).

    A point passes when |measured − predicted| ≤ ``relative_tolerance``·|predicted| + ``absolute_tolerance``.
    ``point_limit`` keeps every i-th point of the k = 1 grid (spread across it) for a smoke run.
    ``progress(done, total)`` is called after each configuration.
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
    for done, (betas, gammas) in enumerate(configurations, start=1):
        row = switch_off_measurement(betas, gammas, window_steps=window_steps, eps=eps)
        error = abs(row["measured_slope"] - row["predicted_slope"])
        row["abs_error"] = error
        row["within_tolerance"] = bool(error <= relative_tolerance * abs(row["predicted_slope"]) + absolute_tolerance)
        row["stable"] = bool(stability.kadam_is_stable(betas, gammas))
        rows.append(row)
        if progress is not None:
            progress(done, len(configurations))
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


# training protocol (THEORY §5)


@dataclass(frozen=True)
class TrainingSizes:
    """Sizes of one training run: steps, full-batch corpus length, the char transformer's shape, the seed."""

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


REGIONS = ("outside both", "between", "inside both")
"""Where a point lies: γ ≤ β² (outside both regions), β² < γ ≤ β/(2−β) (inside THEORY §2's region, outside
the paper's, THEORY §3), γ > β/(2−β) (inside both)."""


def region_of(beta: float, gamma: float) -> str:
    """The entry of :data:`REGIONS` that (β, γ) lies in."""
    if not stability.is_stable(beta, gamma):
        return REGIONS[0]
    return REGIONS[2] if stability.is_stable(beta, gamma, rates="paper") else REGIONS[1]


def protocol_grid(
    betas: Sequence[float], rates: Sequence[float] = (), between: int = 0, gammas: Sequence[float] = ()
) -> list[tuple[float, float]]:
    r"""The (β, γ) points of the training protocol, per β in ``betas``, sorted and without repeats.

    - ``rates``: points at a prescribed growth rate ρ = ln β − ½ ln γ, i.e. γ = β² e^{−2ρ} (ρ > 0: outside
      both regions; THEORY §2);
    - ``between``: that many points strictly between the two boundaries, evenly spaced in ln γ over
      (ln β², ln β/(2−β)), i.e. inside γ > β² and outside the paper's γ > β/(2−β) (THEORY §3);
    - ``gammas``: fixed values of γ.

    γ is rounded to 6 significant digits; points with γ outside (0, 1) are dropped.
    """
    if between < 0:
        raise ValueError(f"between must be an integer >= 0, got {between!r}")
    points = set()
    for beta in betas:
        beta = float(beta)
        chosen = [beta**2 * math.exp(-2.0 * rate) for rate in rates] + [float(g) for g in gammas]
        if between and 0.0 < beta < 1.0:
            low, high = math.log(beta**2), math.log(beta / (2.0 - beta))
            chosen += [math.exp(low + (high - low) * (i + 1) / (between + 1)) for i in range(between)]
        points.update((beta, float(f"{gamma:.6g}")) for gamma in chosen if 0.0 < gamma < 1.0)
    return sorted(points)


def full_batch_characters(corpus_chars: int, context: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first ``corpus_chars + 1`` characters of ``pydoc_data.topics`` as one full batch of windows.

    Returns (inputs, targets, vocabulary size): ``corpus_chars // context`` non-overlapping windows of
    ``context`` characters, targets shifted by one; the vocabulary is the characters that occur.
    """
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
    and the training loss (before the step). A non-finite loss ends the run early (``stopped``). Subnormal
    floats are flushed to zero during the run (:func:`_denormals_flushed`).
    """
    inputs, targets, vocabulary_size = full_batch_characters(sizes.corpus_chars, sizes.context)
    with seeded_initialisation(sizes.seed):
        model = CharTransformer(vocabulary_size, sizes.context, sizes.width, sizes.heads, sizes.layers).double()
    parameters = list(model.parameters())
    with _unstable_levels_allowed():
        optimizer = KAdam(
            parameters, lr=learning_rate, k=1, betas=(beta, gamma), eps=1e-8, weight_decay=0.0, foreach=True
        )
    update_norms, losses = [], []
    stopped = False
    with _denormals_flushed():
        stopped = _record(
            model, optimizer, parameters, inputs, targets, learning_rate, sizes.steps, update_norms, losses
        )
    return {"update_inf_norms": update_norms, "losses": losses, "stopped": stopped}


def _record(
    model: torch.nn.Module,
    optimizer: KAdam,
    parameters: list[torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    learning_rate: float,
    steps: int,
    update_norms: list[float],
    losses: list[float],
) -> bool:
    """The loop of :func:`train_recording_updates`; appends to ``update_norms`` and ``losses``, returns whether a
    non-finite loss stopped it."""
    # not workloads.train: one full batch, the loss checked before the step, the parameters copied around it
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        if not torch.isfinite(loss):
            return True
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            before = [p.detach().clone() for p in parameters]
            optimizer.step()
            changes = torch._foreach_sub(parameters, before)
            largest = float(torch.stack(torch._foreach_norm(changes, float("inf"))).max())
        update_norms.append(largest / learning_rate)
        losses.append(float(loss.detach()))
    return False


GROWTH_BLOCKS = 10
"""Blocks of equal length whose means of ln ‖u_n‖_∞ the growth test fits (:func:`growth_test`)."""
GROWTH_CONFIDENCE = 0.95
"""Two-sided confidence of the growth test's interval for the slope."""
GROWTH_FACTOR = 2.0
"""Sustained growth must multiply ‖u_n‖_∞ by at least this over the window, at the interval's lower end."""
DIVERGENCE_FACTOR = 2.0
"""A loss that ends above this multiple of the untrained model's loss (or is not finite) has diverged."""

CRITERION = (
    "A run is measured unstable in a window iff its loss diverged (non-finite, or the final loss above "
    f"{DIVERGENCE_FACTOR:g}× the untrained model's loss) or its update norm grows there: the least-squares slope s "
    f"of ln ||u_n||_inf against the step n, fitted to the means of {GROWTH_BLOCKS} equal consecutive blocks of the "
    f"window, has a {GROWTH_CONFIDENCE:.0%} confidence interval (Student t, {GROWTH_BLOCKS - 2} degrees of freedom, "
    "from the scatter of the block means about the line: the run's own fluctuation) whose lower end s_low is above 0 "
    f"with s_low × (window length) ≥ ln {GROWTH_FACTOR:g} (the norm at least {'doubles' if GROWTH_FACTOR == 2 else 'grows'}"
    " at the interval's lower end). Windows: the whole run, and the late phase (its second half). The criterion "
    "reads only the run's own loss and update norms: neither β, γ nor either boundary."
)
"""The classification criterion of the training protocol, as the report states it (:func:`classify_run`)."""


def loss_diverged(loss: float | None, untrained_loss: float, factor: float = DIVERGENCE_FACTOR) -> bool:
    """Whether a final loss has diverged: None or non-finite, or above ``factor`` × ``untrained_loss``."""
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    return loss is None or not math.isfinite(loss) or loss > factor * untrained_loss


def growth_test(
    update_inf_norms: Sequence[float],
    start: int = 0,
    stop: int | None = None,
    *,
    blocks: int = GROWTH_BLOCKS,
    confidence: float = GROWTH_CONFIDENCE,
    factor: float = GROWTH_FACTOR,
) -> dict[str, Any]:
    r"""Does ‖u_n‖_∞ grow over steps ``start:stop`` (0-based, ``stop`` exclusive), against its own fluctuation?

    The window is cut into ``blocks`` equal consecutive blocks (a remainder of fewer than ``blocks`` steps
    at its start is dropped); :math:`y_k` is the mean of :math:`\ln\|u_n\|_\infty` over block k, :math:`t_k`
    the block's mean step. The slope s is the least-squares slope of y on t; its standard error comes from
    the residuals, with ``blocks`` − 2 degrees of freedom (batch means: the averaging absorbs the
    autocorrelation of neighbouring steps, and any curvature of the trend widens the interval rather than
    narrowing it). ``grows`` iff the interval's lower end :math:`s_{low} > 0` and
    :math:`s_{low}\,L \ge \ln(\text{factor})`, L the window length in steps.

    Returns ``slope``, ``interval`` ([low, high]), ``steps`` (L) and ``grows``; slope and interval are NaN
    and ``grows`` False when the window has fewer than 2 × ``blocks`` steps or a norm is not positive.
    """
    if blocks < 3:
        raise ValueError(f"blocks must be an integer >= 3, got {blocks!r}")
    if not 0.0 < confidence < 1.0 or not factor >= 1.0:
        raise ValueError(f"need 0 < confidence < 1 and factor >= 1, got confidence={confidence!r}, factor={factor!r}")
    norms = np.asarray(update_inf_norms, dtype=np.float64)[start:stop]
    length = norms.size - norms.size % blocks
    if length < 2 * blocks or not (norms > 0).all() or not np.isfinite(norms).all():
        return {"slope": math.nan, "interval": [math.nan, math.nan], "steps": int(norms.size), "grows": False}
    window = norms[norms.size - length :]
    steps = np.arange(start + norms.size - length, start + norms.size, dtype=np.float64)
    y = np.log(window).reshape(blocks, -1).mean(axis=1)
    t = steps.reshape(blocks, -1).mean(axis=1)
    centred = t - t.mean()
    slope = float(np.sum(centred * (y - y.mean())) / np.sum(centred**2))
    residuals = y - y.mean() - slope * centred
    error = math.sqrt(float(np.sum(residuals**2)) / (blocks - 2) / float(np.sum(centred**2)))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, blocks - 2)) * error
    low = slope - half
    return {
        "slope": slope,
        "interval": [low, slope + half],
        "steps": int(length),
        "grows": bool(low > 0.0 and low * length >= math.log(factor)),
    }


def classify_run(update_inf_norms: Sequence[float], losses: Sequence[float], stopped: bool = False) -> dict[str, Any]:
    r"""Classify a training run by :data:`CRITERION` over the whole run and over its late phase.

    ``diverged``: the run stopped on a non-finite loss, or its final loss is above
    :data:`DIVERGENCE_FACTOR` × its loss at step 1 (the untrained model's; :func:`loss_diverged`).
    ``grows`` / ``late_grows``: :func:`growth_test` over every recorded step / over the second half.
    ``unstable`` = diverged or grows; ``late_unstable`` = diverged or late_grows.

    **Why this criterion.** The paper's claim (THEORY §5) is that outside the stable region the updates
    grow exponentially; a loss that blows up is the practical meaning of instability. Either can be
    observed on both sides of both boundaries, so the agreement of γ = β² or γ = β/(2−β) with the
    measured class is not decided by the definition. The growth test is against the run's own
    fluctuation (the scatter of its block means), and asks for material growth (``GROWTH_FACTOR``) at the
    lower end of the interval, so that a drift the stable bound B_∞ allows (THEORY §2) is not enough when
    it is small. The late phase is the primary window: the first steps of every run are a transient in
    which ‖u_n‖_∞ rises from u_1 = sign(g).

    Returns ``diverged``, ``grows``, ``late_grows``, ``unstable``, ``late_unstable``, ``slope`` and
    ``slope_interval`` (whole run), ``late_phase_slope`` and ``late_slope_interval``.
    """
    norms = list(update_inf_norms)
    initial = losses[0] if losses else math.nan
    final = losses[-1] if losses else math.nan
    diverged = bool(stopped or not losses or loss_diverged(final, initial))
    whole = growth_test(norms)
    late = growth_test(norms, len(norms) // 2)
    return {
        "diverged": diverged,
        "grows": whole["grows"],
        "late_grows": late["grows"],
        "unstable": bool(diverged or whole["grows"]),
        "late_unstable": bool(diverged or late["grows"]),
        "slope": whole["slope"],
        "slope_interval": whole["interval"],
        "late_phase_slope": late["slope"],
        "late_slope_interval": late["interval"],
    }


def _thinned(values: Sequence[float], every: int) -> list[float]:
    return [float(f"{value:.6g}") for value in values[::every]]


def _training_point(spec: tuple[float, float, float, TrainingSizes]) -> ProtocolRow:
    """One (β, γ, η, seed) run plus its classification."""
    beta, gamma, learning_rate, sizes = spec
    start = time.process_time()
    run = train_recording_updates(beta, gamma, learning_rate, sizes)
    every = max(1, sizes.steps // 300)
    return {
        "cpu_seconds": time.process_time() - start,
        "beta": beta,
        "gamma": gamma,
        "learning_rate": learning_rate,
        "seed": sizes.seed,
        "region": region_of(beta, gamma),
        "predicted_rate": float(stability.growth_rate(beta, gamma)),
        "predicted_rate_paper": float(stability.growth_rate(beta, gamma, rates="paper")),
        "stable_exact": bool(stability.is_stable(beta, gamma)),
        "stable_paper": bool(stability.is_stable(beta, gamma, rates="paper")),
        **classify_run(run["update_inf_norms"], run["losses"], run["stopped"]),
        "max_update_inf_norm": max(run["update_inf_norms"], default=math.nan),
        "initial_loss": run["losses"][0] if run["losses"] else math.nan,
        "final_loss": run["losses"][-1] if run["losses"] else math.nan,
        "update_inf_norms": _thinned(run["update_inf_norms"], every),
        "curve_every": every,
        "losses_every_10": _thinned(run["losses"], 10),
    }


def training_protocol(
    betas: Sequence[float],
    gammas: Sequence[float],
    learning_rate: float,
    sizes: Mapping[str, int],
    points: Sequence[Sequence[float]] = (),
) -> ProtocolCell:
    """The training protocol at one learning rate and seed (the section's cell).

    Runs every (β, γ) of ``betas × gammas`` and of ``points`` (pairs, e.g. :func:`protocol_grid`), each
    once; ``sizes`` are the fields of :class:`TrainingSizes` (a JSON dict; ``seed`` is the initialisation).
    Returns the criterion and one row per point (:func:`_training_point`; the update-norm curve every
    ``curve_every`` steps); :func:`kadam.experiments.stability.analysis.summarize_training_protocol`
    summarizes the rows of every cell together.
    """
    run_sizes = TrainingSizes(**sizes)
    grid = sorted({(float(b), float(g)) for b in betas for g in gammas} | {(float(b), float(g)) for b, g in points})
    return {
        "criterion": CRITERION,
        "rows": [_training_point((beta, gamma, float(learning_rate), run_sizes)) for beta, gamma in grid],
    }


def margin_runs(
    points: Sequence[Sequence[float]],
    lr: float,
    seed: int,
    steps: int,
    batch_size: int,
    task_sizes: Mapping[str, Any],
    device: str = "cpu",
) -> MarginCell:
    """The margin runs of one learning rate and seed: :func:`~kadam.experiments.training.protocol.train_run` of
    the mini-batch char transformer by Adam at every (β, γ) of ``points``, plus the untrained model's
    validation loss (this seed's initialisation, before any step) and the constant predictor's loss
    (:meth:`~kadam.experiments.workloads.tasks.Task.constant_predictor_loss`)."""
    task = build_task("char-transformer", device, **task_sizes)
    with seeded_initialisation(seed):
        model = task.make_model().to(device)
    untrained = task.evaluate(model, "validation")["loss"]
    runs = []
    with _unstable_levels_allowed():
        for beta, gamma in points:
            run = dict(
                train_run(
                    "char-transformer",
                    "adam",
                    lr,
                    steps,
                    batch_size,
                    seed,
                    task_sizes,
                    device,
                    betas=[float(beta), float(gamma)],
                )
            )
            run.pop("train_loss_curve")
            runs.append(run)
    return {
        "lr": float(lr),
        "seed": int(seed),
        "untrained_validation_loss": float(untrained),
        "constant_predictor_loss": task.constant_predictor_loss(),
        "runs": runs,
    }
