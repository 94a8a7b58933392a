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
text by Adam (``KAdam(k=1)``, ε = 1e-8, no weight decay) for a grid of (β, γ) across both boundaries at one
learning rate. Every step records ‖u_n‖_∞ = max|θ_n − θ_{n−1}|/η over all parameters; the classification
criterion is stated and justified in :func:`classify_run`. :mod:`kadam.experiments.stability.analysis`
summarizes the runs of every learning rate together.
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

from kadam.experiments.workloads import CharTransformer, encode_characters, seeded_initialisation
from kadam.optimizer import KAdam
from kadam.optimizer.kadam import state_keys
from kadam import stability

__all__ = [
    "CRITERION",
    "ProtocolCell",
    "ProtocolRow",
    "SwitchOffResult",
    "TrainingSizes",
    "classify_run",
    "full_batch_characters",
    "late_phase_slope",
    "optimizer_updates",
    "peak_window_slope",
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
    """One (β, γ, η) run of the training protocol: predictions, :func:`classify_run`'s verdict, slopes, curves."""

    cpu_seconds: float
    beta: float
    gamma: float
    learning_rate: float
    predicted_rate: float
    predicted_rate_paper: float
    stable_exact: bool
    stable_paper: bool
    unstable: bool
    late_unstable: bool
    excess: float
    late_excess: float
    first_exceeding_step: int | None
    diverged: bool
    late_phase_slope: float
    peak_window_slope: float
    max_update_inf_norm: float
    final_loss: float
    update_inf_norms: list[float]
    losses_every_10: list[float]


class ProtocolCell(TypedDict):
    """What :func:`training_protocol` returns: the rows of one learning rate."""

    rows: list[ProtocolRow]


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
        warnings.filterwarnings("ignore", category=stability.StabilityWarning)
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
    and the training loss (before the step). A non-finite loss ends the run early (``diverged``).
    """
    inputs, targets, vocabulary_size = full_batch_characters(sizes.corpus_chars, sizes.context)
    with seeded_initialisation(sizes.seed):
        model = CharTransformer(vocabulary_size, sizes.context, sizes.width, sizes.heads, sizes.layers).double()
    parameters = list(model.parameters())
    with _unstable_levels_allowed():
        optimizer = KAdam(parameters, lr=learning_rate, k=1, betas=(beta, gamma), eps=1e-8, weight_decay=0.0, foreach=True)
    update_norms, losses = [], []
    diverged = False
    # not workloads.train: one full batch, the loss checked before the step, the parameters copied around it
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

    (:func:`kadam.stability.stable_update_ceiling`): the run made an update larger than any
    second-moment decay γ' inside the stable region could make at that step with the same β, for any
    gradients and any ε ≥ 0.

    **Why this criterion.** (1) It is a certificate: by THEORY §2 no run with γ above either boundary
    can trigger it, so a flagged run is unstable beyond doubt, while a run whose updates stay below the
    ceiling behaved as some stable γ' could have. (2) It does not look at the run's own γ, and the same
    ceiling is the supremum over the paper's region γ > β/(2−β) (the supremum is the γ → 1 limit,
    common to both regions), so it favours neither boundary. (3) It needs no tuned threshold and no
    assumption that growth is sustained: training gradients never switch off, and in a training run
    ‖u_n‖_∞ can rise in bursts rather than along one exponential. Its cost: it is one-sided. A run just
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


def _training_point(spec: tuple[float, float, float, TrainingSizes]) -> ProtocolRow:
    """One (β, γ, η) run plus its classification; a top-level function so worker processes can run it."""
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


def training_protocol(
    betas: Sequence[float], gammas: Sequence[float], learning_rate: float, sizes: Mapping[str, int]
) -> ProtocolCell:
    """The training protocol at one learning rate over the grid ``betas × gammas`` (the section's cell).

    ``sizes`` are the fields of :class:`TrainingSizes` (a JSON dict). Returns ``{"rows": [...]}``, one row
    per (β, γ) from :func:`_training_point`; :func:`kadam.experiments.stability.analysis.summarize_training_protocol`
    summarizes the rows of every learning rate together.
    """
    run_sizes = TrainingSizes(**sizes)
    return {"rows": [_training_point((float(b), float(g), float(learning_rate), run_sizes)) for b in betas for g in gammas]}
