r"""A stability monitor for a live Adam, AdamW or k-Adam run: THEORY §7's quantities, with events.

:class:`StabilityMonitor` attaches to an optimizer's step hooks (``register_step_pre_hook`` and
``register_step_post_hook``) and, every ``every``-th optimizer step, measures per parameter tensor:

- ``update_rms_L{i}``, ``update_max_L{i}``: RMS and largest magnitude of level i's output
  :math:`u^{(i)}_n = \hat m_n / (\sqrt{\hat v_n} + \epsilon)` (THEORY §1), *recomputed from the optimizer
  state after the step* with the hyperparameters the step used (level 1 of ``Adam``/``AdamW`` is the
  whole update per unit learning rate; for k-Adam level k's output is). Nothing is copied: the
  parameters before the step are not needed, because the update is a function of the state.
- ``bound_L{i}`` and ``bound_ratio_L{i}``: the exact bound :math:`B_n(\beta_i, \gamma_i)` of THEORY §2 at
  the level's own step count, and :math:`r_n = \max|u^{(i)}_n| / B_n` (``RMS / B_n`` for a level in
  tensor mode, which is what §2 bounds there). :math:`r_n \le 1` for every input sequence and ε ≥ 0.
- ``spike_factor``: THEORY §7's :math:`s_n = \max_j x_{n,j}^2 / (\sqrt{\hat v_{n-1,j}} + \epsilon)^2`
  over the tensor's entries, x the level-1 input (the gradient, plus λθ for coupled L2 decay), with
  :math:`v_{n-1}` recovered from the state after the step (:meth:`StabilityMonitor._spike_factor`), so
  the gradient is read where it is final also when ``step(closure)`` computes it (Lightning). ε sits
  in the denominator as in the update, so an entry whose gradient stays below ε is not a spike; NaN at
  a tensor's first step (no :math:`\hat v_0`) and for γ = 0. On the fused path the gradient is read
  after the step, which torch's and KAdam's fused kernels leave unscaled.
- ``cosine``: :math:`\cos(u_n, g_n)` of the final update and the loss gradient (``model_cosine``: over
  all recorded tensors together).
- ``update_param_ratio``: :math:`|\theta_n - \theta_{n-1}| / |\theta_{n-1}|`, the ratio Composer's
  ``OptimizerMonitor`` logs, with :math:`\theta_{n-1}` reconstructed exactly from
  :math:`\theta_n = (1-\eta\lambda)\theta_{n-1} - \eta u_n` (decoupled decay) or
  :math:`\theta_n = \theta_{n-1} - \eta u_n` (coupled or none); ``param_norm``: :math:`|\theta_n|`; ``lr``.
- for scale-invariant tensors (THEORY §4): ``effective_lr`` :math:`\eta / |W_{n-1}|`, ``angular_update``
  (the angle between :math:`W_{n-1}` and :math:`W_n`), and, with decoupled weight decay λ > 0, the
  noise-dominated equilibria ``predicted_norm`` and ``predicted_angular_update`` of
  :mod:`kadam.normalization.predictions` (corrected for momentum, with the final level's β).
- optionally, every ``sharpness_every`` steps, the preconditioned sharpness :math:`\lambda_{\max}(P^{-1}H)`,
  :math:`P = \mathrm{diag}(\sqrt{\hat v} + \epsilon)/\eta` of level 1 (per group η), by Lanczos steps on
  Hessian-vector products (:func:`preconditioned_sharpness`), over the coordinates that have had a gradient
  (:math:`\hat v > 0`; the others' :math:`P^{-1} = \eta/\epsilon` was never applied), against the adaptive edge of stability
  :math:`(2 + 2\beta)/(1-\beta)` (Cohen et al. 2022; with η inside P this is THEORY §7's
  :math:`(2+2\beta)/((1-\beta)\eta)` times η). Stored per step as ``sharpness`` and ``sharpness_threshold``.

**Events** (:class:`StabilityEvent`) compare these with thresholds (:class:`Thresholds`). From the theory:
a level outside the stable region γ > β² (checked when attached and whenever a group's hyperparameters
change; the message gives the growth rate of THEORY §2 and the nearest stable γ), a bound ratio above
1 (impossible for the recorded hyperparameters: the optimizer is not doing what its param groups say,
e.g. β changed mid-run), and the preconditioned sharpness above the adaptive edge of stability. Set by
argument (defaults set from exploratory runs of the validation protocol in
``kadam.experiments.monitor``, seed 0, whose reported scores use other seeds): the spike factor and the
steps before it and the sharpness are compared; the update–gradient cosine and the near-worst-case
bound ratio are off by default.

**Cost.** Between recorded steps the hooks only count calls. On a recorded step the pre-hook reads each
tensor's step count and the post-hook reads the gradient, the state and the parameters: a handful of
elementwise passes per tensor and level in float64 temporaries of one tensor's size at a time, no copy
kept between the hooks. The
per-tensor results of a step are gathered into one small tensor and moved to the host once, to decide
events (one synchronisation per recorded step on an accelerator).

**Steps.** ``history.steps`` and ``StabilityEvent.step`` are the optimizer's own step count (its state's
``step``) after the step. A step that does not advance it (GradScaler found inf/NaN on the fused path;
on the other paths GradScaler does not call ``step`` at all) is not recorded, and the next step that
does advance is recorded in its place.

**Distributed.** Every rank records its own history and events; warnings, log records, ``on_event``
calls and TensorBoard scalars are issued on rank 0 only (``torch.distributed``'s rank when initialised).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from kadam.normalization import predictions
from kadam.normalization.tracker import step_statistics, uses_decoupled_weight_decay
from kadam.theory import stability

__all__ = [
    "LevelHyperparameters",
    "MonitorHistory",
    "StabilityEvent",
    "StabilityMonitor",
    "StabilityWarning",
    "Thresholds",
    "nearest_stable_gamma",
    "optimizer_levels",
    "preconditioned_sharpness",
    "read_log",
    "region_event_text",
]

logger = logging.getLogger("kadam.monitor")


class StabilityWarning(UserWarning):
    """The warning category of :class:`StabilityMonitor`'s events (filter it with ``warnings``)."""


# ----------------------------------------------------------------------------------------------------
# the one place that knows how each optimizer stores its levels


class LevelHyperparameters(NamedTuple):
    """(β, γ, ε, tensor mode) of one adaptive normalization level (THEORY §1)."""

    beta: float
    gamma: float
    eps: float
    tensor_mode: bool


def optimizer_levels(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> list[LevelHyperparameters]:
    """The levels that ``group`` of ``optimizer`` steps with, level 1 first (one level for Adam/AdamW).

    KAdam's groups are read with :func:`kadam.optimizer.levels.group_levels`; ``torch.optim.Adam`` and
    ``AdamW`` (and subclasses) from ``betas``/``eps``. Tensor-valued β, γ, ε are read as floats.
    """
    from kadam.optimizer.kadam import KAdam
    from kadam.optimizer.levels import group_levels

    if isinstance(optimizer, KAdam):
        return [LevelHyperparameters(float(lv.beta1), float(lv.beta2), float(lv.eps), lv.tensor_mode)
                for lv in group_levels(group)]
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta, gamma = group["betas"]
        return [LevelHyperparameters(float(beta), float(gamma), float(group["eps"]), False)]
    raise ValueError(
        f"optimizer must be torch.optim.Adam, torch.optim.AdamW or kadam.KAdam, got {type(optimizer).__name__}"
    )


def _level_state(optimizer: torch.optim.Optimizer, group: Mapping[str, Any], state: Mapping[str, Any],
                 level: int) -> tuple[Tensor | None, Tensor, float]:
    """(m, v, step count) of level ``level`` (1-based) in a parameter's ``state``, after the step.

    Level 1 is ``exp_avg``/``exp_avg_sq`` (``max_exp_avg_sq`` for AMSGrad, whose denominator uses it);
    KAdam's level i ≥ 2 is ``exp_avg_{i}``/``exp_avg_sq_{i}``, counting steps from ``step_offset_{i}``; a
    level with β = 0 keeps no ``exp_avg_{i}`` (m_n = x_n, its input), and m is returned as None.
    """
    from kadam.optimizer.kadam import state_keys

    first, second = state_keys(level)
    if level == 1 and group.get("amsgrad", False):
        second = "max_exp_avg_sq"
    count = _step_of(state) - float(state.get(f"step_offset_{level}", 0.0))
    return state.get(first), state[second], count


def _step_of(state: Mapping[str, Any]) -> float:
    step = state.get("step", 0.0)
    return float(step.item() if isinstance(step, Tensor) else step)


# ----------------------------------------------------------------------------------------------------
# theory-derived messages


def nearest_stable_gamma(beta: float, digits: int = 3) -> float:
    """The smallest γ with ``digits`` decimals (more if needed) strictly inside the region γ > β² (THEORY §2)."""
    boundary = float(stability.boundary_gamma(beta))
    for places in range(digits, 16):
        scale = 10.0**places
        candidate = math.ceil(boundary * scale) / scale
        if candidate <= boundary:
            candidate += 1.0 / scale
        candidate = round(candidate, places)
        if boundary < candidate < 1.0:
            return candidate
    raise ValueError(f"beta = {beta!r} leaves no stable gamma below 1 in float64")


def _percent(value: float) -> str:
    return f"{100 * value:.2g}%" if value < 0.1 else f"{100 * value:.0f}%"


def region_event_text(beta: float, gamma: float) -> tuple[str, str]:
    """Explanation and suggestion for a level with γ ≤ β² (THEORY §2), numbers from :mod:`kadam.theory.stability`."""
    rate = max(float(stability.growth_rate(beta, gamma)), 0.0)
    if rate > 0:
        growth = f"updates can grow {_percent(math.expm1(rate))} per step (rate ln β − ½ ln γ = {rate:.3g})"
    else:
        growth = "the bound on the update grows like sqrt(n)"
    explanation = f"γ = {gamma:g} is outside γ > β² for β = {beta:g}: {growth}"
    suggestion = (f"nearest stable γ ≥ {nearest_stable_gamma(beta):g} at this β, or β < √γ = "
                  f"{math.sqrt(gamma):.4g} at this γ")
    return explanation, suggestion


# ----------------------------------------------------------------------------------------------------
# events and thresholds


@dataclass(frozen=True)
class StabilityEvent:
    """One threshold crossing: which tensor, at which optimizer step, what was measured against what.

    ``source`` is ``"theory"`` when the threshold is a theorem (the region, the bound, the edge of
    stability) and ``"argument"`` when it is a :class:`Thresholds` setting. ``level`` is the
    normalization level (1-based; 0 for quantities of the whole tensor or model).
    """

    tensor: str
    step: int
    quantity: str
    value: float
    threshold: float
    explanation: str
    suggestion: str
    level: int = 0
    source: str = "argument"

    def message(self) -> str:
        return f"step {self.step}, {self.tensor}: {self.explanation}; {self.suggestion}"


@dataclass(frozen=True)
class Thresholds:
    """When a recorded value becomes an event (None switches a check off).

    From the theory (do not tune): ``bound_ratio`` (1: :math:`\\max|u_n| \\le B_n` always holds, up to
    ``bound_tolerance`` of float rounding) and ``sharpness_ratio`` (1: the adaptive edge of stability).
    By argument (defaults from the validation protocol in ``kadam.experiments.monitor``):

    Attributes:
        near_bound: bound ratio at or above which a tensor's update is close to the worst case of
            THEORY §2 (a geometrically growing gradient).
        spike_factor: :math:`\\max g^2/\\hat v_{n-1}` above which a coordinate's gradient jumped far above
            its history (THEORY §7). Off (None) by default: in the validation protocol's runs it fired on most
            healthy character-model runs (embedding rows of rare characters, whose :math:`\\hat v` has decayed
            to almost nothing when they return; the update stays within the bound all the same) and came before
            no failure that another check missed. The factor is still recorded in ``history``.
        sharpness_after: compare the sharpness with the edge of stability only from this optimizer step on:
            the preconditioner :math:`\\sqrt{\\hat v}` of the first steps averages too few squared gradients.
        spike_after: compare the spike factor only from this optimizer step on: early on :math:`\\hat v`
            averages a few squared gradients and the ratio of squared samples is heavy-tailed.
        cosine: update–gradient cosine below which the update opposes the gradient.
    """

    bound_ratio: float | None = 1.0
    bound_tolerance: float = 1e-3
    sharpness_ratio: float | None = 1.0
    sharpness_after: int = 10
    near_bound: float | None = None
    spike_factor: float | None = None
    spike_after: int = 100
    cosine: float | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"Thresholds.{field.name} must be a finite number or None, got {value!r}")
        for name in ("bound_ratio", "sharpness_ratio", "near_bound", "spike_factor"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Thresholds.{name} must be > 0, got {value!r}")
        if self.cosine is not None and not -1.0 <= self.cosine <= 1.0:
            raise ValueError(f"Thresholds.cosine must lie in [-1, 1], got {self.cosine!r}")


# ----------------------------------------------------------------------------------------------------
# history


@dataclass
class MonitorHistory:
    """Recorded values: ``values[r, t, q]`` is quantity ``quantities[q]`` of tensor ``names[t]`` at step
    ``steps[r]`` (NaN where not measured: a frozen tensor, a level a group does not have, a quantity of
    scale-invariant tensors only); ``model[name]`` holds per-step values of the whole model
    (``model_cosine``, ``sharpness``, ``sharpness_threshold``, ``loss``). ``events`` as recorded."""

    steps: np.ndarray
    names: list[str]
    quantities: list[str]
    values: np.ndarray
    model: dict[str, np.ndarray]
    events: list[StabilityEvent]

    def __getitem__(self, quantity: str) -> dict[str, np.ndarray]:
        """``{tensor name: array over recorded steps}`` of one quantity."""
        if quantity in self.model:
            return {"*": self.model[quantity]}
        if quantity not in self.quantities:
            raise KeyError(f"unknown quantity {quantity!r}; recorded: {self.quantities + sorted(self.model)}")
        index = self.quantities.index(quantity)
        return {name: self.values[:, t, index].copy() for t, name in enumerate(self.names)}

    def series(self, quantity: str, tensor: str) -> np.ndarray:
        return self[quantity][tensor]

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write a long-format CSV: ``kind,step,tensor,quantity,level,value,threshold,explanation,suggestion``.

        ``kind`` is ``value`` (one finite recorded number; tensor ``*`` for model-wide values) or
        ``event`` (one :class:`StabilityEvent`). :func:`read_log` reads it back.
        """
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_CSV_COLUMNS)
            for r, step in enumerate(self.steps):
                for t, name in enumerate(self.names):
                    for q, quantity in enumerate(self.quantities):
                        value = self.values[r, t, q]
                        if np.isfinite(value):
                            writer.writerow(["value", int(step), name, quantity, "", repr(float(value)), "", "", ""])
                for quantity, values in self.model.items():
                    if np.isfinite(values[r]):
                        writer.writerow(["value", int(step), "*", quantity, "", repr(float(values[r])), "", "", ""])
            for event in self.events:
                writer.writerow(["event", event.step, event.tensor, event.quantity, event.level, repr(event.value),
                                 repr(event.threshold), event.explanation, f"{event.source}|{event.suggestion}"])


_CSV_COLUMNS = ("kind", "step", "tensor", "quantity", "level", "value", "threshold", "explanation", "suggestion")


def read_log(path: str | os.PathLike[str]) -> MonitorHistory:
    """Read a CSV written by :meth:`MonitorHistory.to_csv` (values absent from the file come back NaN)."""
    rows: list[tuple[int, str, str, float]] = []
    events: list[StabilityEvent] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(header) != _CSV_COLUMNS:
            raise ValueError(f"{path}: not a kadam monitor log (expected the header {','.join(_CSV_COLUMNS)})")
        for line in reader:
            kind, step, tensor, quantity, level, value, threshold, explanation, suggestion = line
            if kind == "value":
                rows.append((int(step), tensor, quantity, float(value)))
            elif kind == "event":
                source, _, suggestion = suggestion.partition("|")
                events.append(StabilityEvent(tensor, int(step), quantity, float(value), float(threshold),
                                             explanation, suggestion, int(level), source))
            else:
                raise ValueError(f"{path}: unknown row kind {kind!r}")
    steps = sorted({row[0] for row in rows})
    names = list(dict.fromkeys(row[1] for row in rows if row[1] != "*"))
    quantities = list(dict.fromkeys(row[2] for row in rows if row[1] != "*"))
    model_quantities = list(dict.fromkeys(row[2] for row in rows if row[1] == "*"))
    step_index = {step: i for i, step in enumerate(steps)}
    values = np.full((len(steps), len(names), len(quantities)), np.nan)
    model = {quantity: np.full(len(steps), np.nan) for quantity in model_quantities}
    name_index = {name: i for i, name in enumerate(names)}
    quantity_index = {quantity: i for i, quantity in enumerate(quantities)}
    for step, tensor, quantity, value in rows:
        if tensor == "*":
            model[quantity][step_index[step]] = value
        else:
            values[step_index[step], name_index[tensor], quantity_index[quantity]] = value
    return MonitorHistory(np.asarray(steps, dtype=np.int64), names, quantities, values, model, events)


# ----------------------------------------------------------------------------------------------------
# preconditioned sharpness


def preconditioned_sharpness(
    loss: Callable[[], Tensor],
    params: Sequence[Tensor],
    inverse_preconditioner: Sequence[Tensor],
    *,
    iterations: int = 20,
    generator: torch.Generator | None = None,
) -> float:
    r"""Largest eigenvalue of :math:`P^{-1}H` by ``iterations`` Lanczos steps on Hessian-vector products (THEORY §7).

    ``loss()`` returns the loss as a tensor with its graph (it must not call ``backward``); ``params``
    the tensors of H; ``inverse_preconditioner`` the diagonal of :math:`P^{-1}` shaped like them. The
    iteration runs on the symmetric :math:`D^{1/2} H D^{1/2}`, :math:`D = P^{-1}` (same eigenvalues) from a
    random start and returns the largest eigenvalue of the Lanczos tridiagonal matrix
    (``scipy.linalg.eigh_tridiagonal``): the largest *algebraic* eigenvalue's estimate, which rises towards
    it with every step and never falls below the smallest eigenvalue. (Power iteration would instead find
    the eigenvalue of largest magnitude, which on an indefinite Hessian can be a negative one.) The cost is
    fixed: ``iterations`` Hessian-vector products, no reorthogonalization (its loss of orthogonality
    duplicates converged Ritz values but does not move the largest). ``.grad`` is left untouched
    (``torch.autograd.grad``). ``loss()`` runs with scaled-dot-product attention on its math backend, the
    one with a double backward.
    """
    from scipy.linalg import eigh_tridiagonal
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    params = list(params)
    roots = [d.sqrt() for d in inverse_preconditioner]
    with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels lack double backward
        value = loss()
        grads = torch.autograd.grad(value, params, create_graph=True)

    def dot(a: list[Tensor], b: list[Tensor]) -> float:
        return float(sum(torch.sum(x * y) for x, y in zip(a, b)))

    vector = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    norm = math.sqrt(dot(vector, vector))
    vector = [v / norm for v in vector]
    previous: list[Tensor] | None = None
    alphas: list[float] = []
    offdiagonal: list[float] = []
    for _ in range(iterations):
        scaled = [v * r for v, r in zip(vector, roots)]
        hvp = torch.autograd.grad(grads, params, grad_outputs=scaled, retain_graph=True)
        product = [h * r for h, r in zip(hvp, roots)]
        alpha = dot(vector, product)
        if not math.isfinite(alpha):
            return math.nan
        alphas.append(alpha)
        residual = [w - alpha * v for w, v in zip(product, vector)]
        if previous is not None:
            residual = [w - offdiagonal[-1] * u for w, u in zip(residual, previous)]
        beta = math.sqrt(max(dot(residual, residual), 0.0))
        if len(alphas) == iterations or not math.isfinite(beta) or beta <= 1e-12 * max(abs(alpha), 1e-300):
            break  # done, or the Krylov space is invariant: its Ritz values are exact eigenvalues
        offdiagonal.append(beta)
        previous, vector = vector, [w / beta for w in residual]
    ritz = eigh_tridiagonal(np.asarray(alphas), np.asarray(offdiagonal[: len(alphas) - 1]), eigvals_only=True)
    return float(ritz[-1])


# ----------------------------------------------------------------------------------------------------
# the monitor


_TENSOR_QUANTITIES = ("lr", "spike_factor", "cosine", "update_param_ratio", "param_norm")
_LEVEL_QUANTITIES = ("update_rms", "update_max", "bound", "bound_ratio")
_INVARIANT_QUANTITIES = ("effective_lr", "angular_update", "predicted_norm", "predicted_angular_update")
_MODEL_QUANTITIES = ("model_cosine", "sharpness", "sharpness_threshold", "loss")


class _Layout(NamedTuple):
    """What :meth:`StabilityMonitor._fill` needs besides the device measurements of one tensor."""

    levels: list[LevelHyperparameters]
    bounds: list[float]
    lr: float
    decay: float  # decoupled λ (0 for coupled or none)
    invariant: bool
    elements: int

    @property
    def size(self) -> int:
        """Number of measurements: two per level, seven for the tensor, one more if scale-invariant."""
        return 2 * len(self.levels) + 7 + int(self.invariant)


class _Tracked(NamedTuple):
    name: str
    param: Tensor
    group_index: int
    invariant: bool


def _user_location() -> tuple[str, int, dict[str, Any]]:
    """File, line and globals of the innermost frame outside torch, kadam and the standard library's
    ``warnings``/``contextlib``: where the user's ``optimizer.step()`` (or trainer) was called."""
    skip = tuple(os.path.dirname(module.__file__) for module in (torch, sys.modules["kadam"]))
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(skip) and "contextlib" not in filename:
            return filename, frame.f_lineno, frame.f_globals
        frame = frame.f_back
    return "<unknown>", 0, {}


def _reporting_rank() -> bool:
    distributed = torch.distributed
    return not (distributed.is_available() and distributed.is_initialized()) or distributed.get_rank() == 0


class StabilityMonitor:
    r"""THEORY §7's quantities and events for an ``Adam``, ``AdamW`` or ``KAdam`` optimizer (module docstring).

    Args:
        optimizer: ``torch.optim.Adam``/``AdamW`` or ``kadam.KAdam`` (e.g. unwrapped from accelerate's
            ``AcceleratedOptimizer``, which :class:`StabilityMonitor` does itself via ``.optimizer``).
        every: record every ``every``-th call of ``optimizer.step`` (counted from attachment).
        names: ``model`` or ``model.named_parameters()``: names used in history and events (others are
            called ``param_groups[g][j]``).
        scale_invariant: names (or tensors) of scale-invariant tensors, e.g.
            ``find_scale_invariant(...).invariant`` (THEORY §4), or the report itself.
        sharpness_every: estimate the preconditioned sharpness every this many *recorded* steps; needs
            ``sharpness_closure`` (a callable returning the loss with its graph, without ``backward``).
        sharpness_iterations: Lanczos steps (Hessian-vector products) per estimate.
        on_event: called with each :class:`StabilityEvent` (rank 0).
        thresholds: :class:`Thresholds`.
        quiet_steps: after warning about a (tensor, quantity, level), further events for it within this
            many optimizer steps go to ``events`` and ``on_event`` but not to ``warnings``/``logging``.
        warn: issue events through ``warnings`` (category :class:`StabilityWarning`, located at the
            caller's line) and the ``kadam.monitor`` logger.
        writer: an object with ``add_scalar(tag, value, step)`` (e.g. a TensorBoard ``SummaryWriter``, see
            :meth:`tensorboard`), written at every recorded step (rank 0).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        every: int = 10,
        names: nn.Module | Iterable[tuple[str, Tensor]] | None = None,
        scale_invariant: Iterable[str | Tensor] | Any | None = None,
        sharpness_every: int | None = None,
        sharpness_closure: Callable[[], Tensor] | None = None,
        sharpness_iterations: int = 20,
        on_event: Callable[[StabilityEvent], None] | None = None,
        thresholds: Thresholds | None = None,
        quiet_steps: int = 100,
        warn: bool = True,
        writer: Any | None = None,
    ) -> None:
        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer and similar wrappers
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        for name, value, least in (("every", every, 1), ("sharpness_iterations", sharpness_iterations, 1),
                                   ("quiet_steps", quiet_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if sharpness_every is not None and (isinstance(sharpness_every, bool) or not isinstance(sharpness_every, int)
                                            or sharpness_every < 1):
            raise ValueError(f"sharpness_every must be an integer >= 1 or None, got {sharpness_every!r}")
        if sharpness_every is not None and sharpness_closure is None:
            raise ValueError("sharpness_every needs sharpness_closure (a callable returning the loss, no backward)")
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise ValueError(f"thresholds must be a kadam.monitor.Thresholds, got {type(thresholds).__name__}")
        self.optimizer = optimizer
        self.every = every
        self.thresholds = thresholds or Thresholds()
        self.sharpness_every = sharpness_every
        self.sharpness_closure = sharpness_closure
        self.sharpness_iterations = sharpness_iterations
        self.on_event = on_event
        self.quiet_steps = quiet_steps
        self.warn = warn
        self.writer = writer
        self.events: list[StabilityEvent] = []

        self._levels = [optimizer_levels(optimizer, group) for group in optimizer.param_groups]
        self._tracked = self._resolve_tensors(optimizer, names, scale_invariant)
        depth = max(len(levels) for levels in self._levels)
        self.quantities: list[str] = [*_TENSOR_QUANTITIES,
                                      *(f"{q}_L{i}" for i in range(1, depth + 1) for q in _LEVEL_QUANTITIES)]
        if any(t.invariant for t in self._tracked):
            self.quantities += _INVARIANT_QUANTITIES
        self._column = {q: i for i, q in enumerate(self.quantities)}
        self._calls = 0
        self._pending = False  # a recorded step that did not advance the optimizer: record the next one
        self._pre: dict[int, tuple[float, float]] | None = None  # tensor index -> (step before, spike factor)
        self._steps: list[int] = []
        self._rows: list[np.ndarray] = []
        self._model_rows: list[dict[str, float]] = []
        self._losses: dict[int, Tensor] = {}
        self._last_warned: dict[tuple[str, str, int], int] = {}
        self._seen_levels: list[list[LevelHyperparameters] | None] = [None] * len(optimizer.param_groups)
        self._bounds: dict[tuple[float, float, float], float] = {}
        self._recorded = 0
        self._check_region(step=self._optimizer_step())
        self._handles = [optimizer.register_step_pre_hook(self._pre_step),
                         optimizer.register_step_post_hook(self._post_step)]

    # -- setup ---------------------------------------------------------------------------------------

    @staticmethod
    def _resolve_tensors(optimizer: torch.optim.Optimizer, names: Any, scale_invariant: Any) -> list[_Tracked]:
        if isinstance(names, nn.Module):
            names = names.named_parameters()
        name_of: dict[int, str] = {}
        for entry in names or ():
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
                raise ValueError("names must be a module or an iterable of (name, tensor) pairs")
            name_of.setdefault(id(entry[1]), entry[0])
        if scale_invariant is not None and hasattr(scale_invariant, "invariant"):
            scale_invariant = scale_invariant.invariant  # a ScaleInvarianceReport
        invariant_ids: set[int] = set()
        invariant_names: set[str] = set()
        for entry in scale_invariant or ():
            if isinstance(entry, str):
                invariant_names.add(entry)
            elif isinstance(entry, Tensor):
                invariant_ids.add(id(entry))
            else:
                raise ValueError(f"scale_invariant must hold names or tensors, got {type(entry).__name__}")
        tracked = []
        for g, group in enumerate(optimizer.param_groups):
            for j, param in enumerate(group["params"]):
                name = name_of.get(id(param), f"param_groups[{g}][{j}]")
                invariant = id(param) in invariant_ids or name in invariant_names
                tracked.append(_Tracked(name, param, g, invariant))
        unknown = invariant_names - {t.name for t in tracked}
        if unknown:
            raise ValueError(f"scale_invariant names tensors the optimizer does not hold: {sorted(unknown)}")
        return tracked

    def _optimizer_step(self) -> int:
        steps = [_step_of(self.optimizer.state[t.param]) for t in self._tracked if t.param in self.optimizer.state]
        return int(max(steps)) if steps else 0

    # -- hooks ---------------------------------------------------------------------------------------

    def _recording(self) -> bool:
        return self._pending or self._calls % self.every == 0

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._calls += 1
        if not self._recording():
            self._pre = None
            return
        self._pre = {index: _step_of(optimizer.state.get(tracked.param, {}))
                     for index, tracked in enumerate(self._tracked)}

    @torch.no_grad()
    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._pre is None:
            return
        pre, self._pre = self._pre, None
        row = np.full((len(self._tracked), len(self.quantities)), np.nan)
        advanced = [i for i, before in pre.items() if self._tracked[i].param.grad is not None
                    and _step_of(optimizer.state.get(self._tracked[i].param, {})) > before]
        if not advanced:
            self._pending = True  # e.g. GradScaler skipped a fused step: record the next one instead
            return
        self._pending = False
        step = int(max(_step_of(optimizer.state[self._tracked[i].param]) for i in advanced))
        self._check_region(step)
        levels = [optimizer_levels(optimizer, group) for group in optimizer.param_groups]
        measured: list[Tensor] = []  # per tensor, its device measurements; moved to the host once
        layouts: list[tuple[int, _Layout]] = []
        for index in advanced:
            tracked = self._tracked[index]
            values, layout = self._measure(optimizer, tracked, levels[tracked.group_index])
            measured.append(values.double())
            layouts.append((index, layout))
        host = torch.cat(measured).cpu().numpy() if measured else np.zeros(0)
        position = 0
        inner = u_sq = g_sq = 0.0
        # A diverging run's measurements are inf or NaN (inf / inf, say): its quantities are NaN or inf by design,
        # recorded and reported as events, so numpy's warnings about them would only repeat that in the user's log.
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for index, layout in layouts:
                inner_t, u_sq_t, g_sq_t = self._fill(row[index], host[position:position + layout.size], layout)
                inner, u_sq, g_sq = inner + inner_t, u_sq + u_sq_t, g_sq + g_sq_t
                position += layout.size
        model = {q: math.nan for q in _MODEL_QUANTITIES}
        model["model_cosine"] = inner / math.sqrt(u_sq * g_sq) if u_sq > 0 and g_sq > 0 else math.nan
        self._recorded += 1
        if self.sharpness_every is not None and self._recorded % self.sharpness_every == 0:
            model["sharpness"], model["sharpness_threshold"] = self._sharpness(optimizer)
        loss = self._losses.pop(step, None)
        if loss is not None:
            model["loss"] = float(loss)
        self._losses = {}
        self._steps.append(step)
        self._rows.append(row)
        self._model_rows.append(model)
        self._check_events(step, row, model, levels)
        if self.writer is not None and _reporting_rank():
            self._write_scalars(step, row, model)

    def _measure(self, optimizer: torch.optim.Optimizer, tracked: _Tracked,
                 levels: list[LevelHyperparameters]) -> tuple[Tensor, _Layout]:
        """One tensor's device-side reductions (a 1-d tensor) and what the host needs to finish them.

        Per level: |u⁽ⁱ⁾| and max|u⁽ⁱ⁾|; then ⟨u, g⟩, |u|, |g| of the final update, |θ_n − θ_{n−1}|,
        |θ_{n−1}|, |θ_n|, the spike factor, and for a scale-invariant tensor the angular update. A few
        elementwise passes, each in the tensor's own dtype.
        """
        group = optimizer.param_groups[tracked.group_index]
        state = optimizer.state[tracked.param]
        param = tracked.param.detach()
        lr = float(group["lr"])
        decoupled = uses_decoupled_weight_decay(optimizer, group)
        decay = float(group.get("weight_decay", 0.0)) if decoupled else 0.0
        shrink = 1.0 - lr * decay
        reductions: list[Tensor] = []
        bounds: list[float] = []
        update = None
        for i, level in enumerate(levels, start=1):
            first, second, count = _level_state(optimizer, group, state, i)
            if first is None:  # β = 0 (level ≥ 2): m_n is the level's input, the previous level's update
                assert update is not None
                first = update
            if torch.is_complex(first):
                first = torch.view_as_real(first)
                second = torch.view_as_real(second) if torch.is_complex(second) else second
            denom = (second.sqrt() / math.sqrt(1 - level.gamma**count)).add_(level.eps)
            update = torch.div(first, denom).div_(1 - level.beta**count)
            reductions += [torch.linalg.vector_norm(update), torch.linalg.vector_norm(update, ord=math.inf)]
            bounds.append(self._bound(level.beta, level.gamma, count))
        assert update is not None
        grad = tracked.param.grad
        grad = torch.view_as_real(grad) if torch.is_complex(grad) else grad
        if group.get("maximize", False):
            grad = -grad
        after = torch.view_as_real(param) if torch.is_complex(param) else param
        flat_u, flat_g, flat_after = update.reshape(-1), grad.reshape(-1), after.reshape(-1)
        # θ_{n−1} = (θ_n + ηu)/q and θ_n − θ_{n−1} = −η(u + λθ_n)/q (q = 1 − ηλ): the change without cancellation
        before = torch.add(flat_after, flat_u, alpha=lr)
        change = torch.add(flat_u, flat_after, alpha=decay) if decay else flat_u
        if shrink != 1.0:
            before.div_(shrink)
        reductions += [torch.dot(flat_u, flat_g), torch.linalg.vector_norm(flat_u), torch.linalg.vector_norm(flat_g),
                       torch.linalg.vector_norm(change) * (lr / shrink), torch.linalg.vector_norm(before),
                       torch.linalg.vector_norm(flat_after),
                       self._spike_factor(optimizer, group, levels[0], state, flat_g, before)]
        if tracked.invariant:
            reductions.append(step_statistics(before, flat_after, lr, decay)[3])
        layout = _Layout(levels, bounds, lr, decay, tracked.invariant, param.numel())
        dtype = reductions[0].dtype
        return torch.stack([r.reshape(()).to(dtype) for r in reductions]), layout

    def _fill(self, row: np.ndarray, values: np.ndarray, layout: _Layout) -> tuple[float, float, float]:
        """Write one tensor's quantities into ``row`` from its measurements; returns (⟨u,g⟩, |u|², |g|²)."""
        column = self._column
        size = layout.elements
        for i, (level, bound) in enumerate(zip(layout.levels, layout.bounds), start=1):
            norm, largest = values[2 * i - 2], values[2 * i - 1]
            rms = norm / math.sqrt(size)
            row[column[f"update_rms_L{i}"]] = rms
            row[column[f"update_max_L{i}"]] = largest
            row[column[f"bound_L{i}"]] = bound
            row[column[f"bound_ratio_L{i}"]] = (rms if level.tensor_mode else largest) / bound
        inner, u_norm, g_norm, change, before, after, spike, *rest = values[2 * len(layout.levels):]
        lr = layout.lr
        row[column["cosine"]] = inner / (u_norm * g_norm) if u_norm > 0 and g_norm > 0 else math.nan
        row[column["update_param_ratio"]] = change / before if before > 0 else math.nan
        row[column["param_norm"]] = after
        row[column["lr"]] = lr
        row[column["spike_factor"]] = spike
        if layout.invariant:
            row[column["angular_update"]] = rest[0]
            row[column["effective_lr"]] = lr / before if before > 0 else math.nan
            beta, decay = layout.levels[-1].beta, layout.decay
            if decay > 0 and lr > 0 and lr * decay < 1:
                row[column["predicted_norm"]] = predictions.equilibrium_norm(lr, decay, size, beta)
                row[column["predicted_angular_update"]] = predictions.equilibrium_angular_update(lr, decay, beta)
        return float(inner), float(u_norm) ** 2, float(g_norm) ** 2

    @staticmethod
    def _spike_factor(optimizer: torch.optim.Optimizer, group: Mapping[str, Any], level: LevelHyperparameters,
                      state: Mapping[str, Any], grad: Tensor, before: Tensor) -> Tensor:
        """THEORY §7's spike factor of step n, from the state after the step (module docstring).

        ``v_{n−1} = (v_n − (1−γ) x_n²)/γ`` recovers the second moment before the step; in a spike
        ``x_n² ≫ v_{n−1}`` this subtraction keeps about ``(1−γ)^{-1}/s`` of ``v_n``'s relative precision,
        enough for spike factors far beyond any threshold in float32 (e.g. s = 10⁶ at γ = 0.999 to ~1e-4).
        """
        _, _, count = _level_state(optimizer, group, state, 1)
        second = state["exp_avg_sq"]  # the moment itself, also under AMSGrad
        if count < 2 or level.gamma == 0.0:
            return grad.new_tensor(math.nan)
        x = grad
        weight_decay = float(group.get("weight_decay", 0.0))
        if weight_decay and not uses_decoupled_weight_decay(optimizer, group):
            x = x + weight_decay * before
        squares = x.square()
        current = torch.view_as_real(second) if torch.is_complex(second) else second
        fed = squares.mean() if level.tensor_mode else squares
        previous = torch.sub(current.reshape(-1), fed, alpha=1 - level.gamma).clamp_(min=0.0)
        denom = previous.mul_(1.0 / (level.gamma * (1 - level.gamma ** (count - 1)))).sqrt_().add_(level.eps)
        return squares.div_(denom.square_()).max()

    def _bound(self, beta: float, gamma: float, count: float) -> float:
        key = (beta, gamma, count)
        if key not in self._bounds:
            if len(self._bounds) > 4096:
                self._bounds.clear()
            self._bounds[key] = float(stability.update_bound(beta, gamma, int(count)))
        return self._bounds[key]

    def _sharpness(self, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
        params, inverse = [], []
        for tracked in self._tracked:
            state = optimizer.state.get(tracked.param)
            if not state or not tracked.param.requires_grad:
                continue
            group = optimizer.param_groups[tracked.group_index]
            level = optimizer_levels(optimizer, group)[0]
            _, second, count = _level_state(optimizer, group, state, 1)
            denom = (second / (1 - level.gamma**count)).sqrt() + level.eps
            # a coordinate whose second moment is exactly 0 has had no gradient yet (an embedding row of a
            # token not seen in training): its P⁻¹ = η/ε was never applied, and its first step is set by
            # Adam's normalization, not by curvature, so it is left out of the operator
            scale = torch.where(second > 0, float(group["lr"]) / denom, 0.0)
            params.append(tracked.param)
            inverse.append(scale.expand_as(tracked.param).to(tracked.param.dtype))
        if not params:
            return math.nan, math.nan
        generator = torch.Generator().manual_seed(self._recorded)
        value = preconditioned_sharpness(self.sharpness_closure, params, inverse,
                                         iterations=self.sharpness_iterations, generator=generator)
        beta = optimizer_levels(optimizer, optimizer.param_groups[0])[0].beta
        return value, (2 + 2 * beta) / (1 - beta)

    # -- events --------------------------------------------------------------------------------------

    def _check_region(self, step: int) -> None:
        for g, group in enumerate(self.optimizer.param_groups):
            levels = optimizer_levels(self.optimizer, group)
            if g < len(self._seen_levels) and self._seen_levels[g] == levels:
                continue
            if g >= len(self._seen_levels):
                self._seen_levels.append(None)
            self._seen_levels[g] = levels
            for i, level in enumerate(levels, start=1):
                if stability.is_stable(level.beta, level.gamma):
                    continue
                explanation, suggestion = region_event_text(level.beta, level.gamma)
                boundary = float(stability.boundary_gamma(level.beta))
                self._emit(StabilityEvent(f"param_groups[{g}]", step, "gamma", level.gamma, boundary,
                                          f"level {i}: {explanation}" if len(levels) > 1 else explanation,
                                          suggestion, i, "theory"))

    def _check_events(self, step: int, row: np.ndarray, model: Mapping[str, float],
                      group_levels: list[list[LevelHyperparameters]]) -> None:
        limits = self.thresholds
        for t, tracked in enumerate(self._tracked):
            values = row[t]
            if not np.isfinite(values).any():
                continue
            levels = group_levels[tracked.group_index]
            for i, level in enumerate(levels, start=1):
                ratio = values[self._column[f"bound_ratio_L{i}"]]
                bound = values[self._column[f"bound_L{i}"]]
                what = "RMS" if level.tensor_mode else "max |u|"
                if limits.bound_ratio is not None and ratio > limits.bound_ratio * (1 + limits.bound_tolerance):
                    self._emit(StabilityEvent(
                        tracked.name, step, f"bound_ratio_L{i}", float(ratio), limits.bound_ratio,
                        f"level {i}'s update {what} is {ratio:.3g}× the exact bound B_n = {bound:.4g} of "
                        f"(β, γ) = ({level.beta:g}, {level.gamma:g}), which no input can exceed",
                        "the optimizer is not stepping with these param-group hyperparameters (changed β/γ "
                        "mid-run, or a modified update)", i, "theory"))
                elif limits.near_bound is not None and ratio >= limits.near_bound:
                    self._emit(StabilityEvent(
                        tracked.name, step, f"bound_ratio_L{i}", float(ratio), limits.near_bound,
                        f"level {i}'s update {what} is {ratio:.3g} of its exact bound B_n = {bound:.4g}: the "
                        "gradients are close to the worst case, a geometrically growing gradient",
                        "look for a growing gradient in this tensor; lower lr or clip", i, "argument"))
            spike = values[self._column["spike_factor"]]
            if limits.spike_factor is not None and step >= limits.spike_after and spike > limits.spike_factor:
                level = levels[0]
                one_spike = (1 - level.beta) / math.sqrt(1 - level.gamma)
                self._emit(StabilityEvent(
                    tracked.name, step, "spike_factor", float(spike), limits.spike_factor,
                    f"a gradient entry squared is {spike:.3g}× its second-moment history: its update "
                    f"approaches the one-spike size (1 − β)/√(1 − γ) = {one_spike:.3g} per unit lr whatever "
                    "the gradient's scale",
                    "raise ε for rarely-updated rows (embeddings), clip per coordinate, or lower γ's memory",
                    1, "argument"))
            cosine = values[self._column["cosine"]]
            if limits.cosine is not None and cosine < limits.cosine:
                self._emit(StabilityEvent(
                    tracked.name, step, "cosine", float(cosine), limits.cosine,
                    f"the update–gradient cosine is {cosine:.3g}: the update moves against the current gradient "
                    "(momentum overshoot, oscillation across a valley)",
                    "lower lr or β", 0, "argument"))
        sharpness, threshold = model["sharpness"], model["sharpness_threshold"]
        if limits.sharpness_ratio is not None and step >= limits.sharpness_after and \
                sharpness > limits.sharpness_ratio * threshold:
            self._emit(StabilityEvent(
                "*", step, "sharpness", float(sharpness), float(threshold) * limits.sharpness_ratio,
                f"the preconditioned sharpness λ_max(ηP⁻¹H) = {sharpness:.4g} is above the adaptive edge of "
                f"stability (2 + 2β)/(1 − β) = {threshold:.4g}: the step overshoots along that direction (full-batch "
                "Adam hovers at this edge, Cohen et al. 2022, so a large or persistent excess is the signal)",
                "lower lr (the edge in P⁻¹H scales as 1/η)", 0, "theory"))

    def _emit(self, event: StabilityEvent) -> None:
        self.events.append(event)
        if not _reporting_rank():
            return
        if self.on_event is not None:
            self.on_event(event)
        key = (event.tensor, event.quantity, event.level)
        last = self._last_warned.get(key)
        if last is not None and event.step - last < self.quiet_steps:
            return
        self._last_warned[key] = event.step
        if self.warn:
            message = event.message()
            filename, lineno, module_globals = _user_location()
            registry = module_globals.setdefault("__warningregistry__", {}) if module_globals else None
            warnings.warn_explicit(message, StabilityWarning, filename, lineno, registry=registry,
                                   module_globals=module_globals or None)
            logger.warning(message)

    def _write_scalars(self, step: int, row: np.ndarray, model: Mapping[str, float]) -> None:
        for t, tracked in enumerate(self._tracked):
            for q, quantity in enumerate(self.quantities):
                if np.isfinite(row[t, q]):
                    self.writer.add_scalar(f"kadam/{quantity}/{tracked.name}", float(row[t, q]), step)
        for quantity, value in model.items():
            if math.isfinite(value):
                self.writer.add_scalar(f"kadam/{quantity}", value, step)

    # -- public --------------------------------------------------------------------------------------

    def observe_loss(self, loss: Tensor | float) -> None:
        """Give the loss of the step about to be taken (call before ``optimizer.step()``); kept only for
        recorded steps, as the ``loss`` model quantity. A tensor is read when the step is recorded."""
        upcoming = self._optimizer_step() + 1
        if self._pending or (self._calls + 1) % self.every == 0:
            self._losses[upcoming] = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))

    @property
    def history(self) -> MonitorHistory:
        """Everything recorded so far (a copy)."""
        values = np.stack(self._rows) if self._rows else np.zeros((0, len(self._tracked), len(self.quantities)))
        model = {q: np.asarray([row[q] for row in self._model_rows], dtype=np.float64) for q in _MODEL_QUANTITIES}
        return MonitorHistory(np.asarray(self._steps, dtype=np.int64), [t.name for t in self._tracked],
                              list(self.quantities), values, model, list(self.events))

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """:meth:`MonitorHistory.to_csv` of :attr:`history` (on every rank; choose per-rank paths under DDP)."""
        self.history.to_csv(path)

    @staticmethod
    def tensorboard(log_dir: str) -> Any:
        """A ``torch.utils.tensorboard.SummaryWriter`` for ``writer=`` (needs the ``tensorboard`` package)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError("StabilityMonitor.tensorboard needs the tensorboard package "
                              "(pip install tensorboard)") from error
        return SummaryWriter(log_dir)

    def detach(self) -> None:
        """Remove every hook; the history and events stay available."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> StabilityMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


# ----------------------------------------------------------------------------------------------------
# framework callbacks (created on first access, so importing kadam.monitor needs neither framework)


def _huggingface_callback() -> type:
    from transformers import TrainerCallback

    class HuggingFaceMonitorCallback(TrainerCallback):
        """Attach a :class:`StabilityMonitor` to the Trainer's optimizer at ``on_train_begin``; detach at the end.

        Keyword arguments are :class:`StabilityMonitor`'s; ``names`` defaults to the Trainer's model.
        The monitor is ``callback.monitor``. ``on_log`` adds the largest bound ratio and spike factor
        over tensors at the last recorded step to the Trainer's ``log_history`` entry and to ``logs``
        (reporting callbacks listed before this one have already been called with ``logs``).
        """

        def __init__(self, **monitor_kwargs: Any) -> None:
            self.monitor_kwargs = monitor_kwargs
            self.monitor: StabilityMonitor | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                           **kwargs: Any) -> None:
            if optimizer is None:
                raise ValueError("HuggingFaceMonitorCallback: the Trainer passed no optimizer to on_train_begin")
            self.monitor = StabilityMonitor(optimizer, **{"names": model, **self.monitor_kwargs})

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if self.monitor is None or logs is None:
                return
            summary = _latest_summary(self.monitor)
            logs.update(summary)  # seen by the callbacks after this one
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(summary)  # the Trainer copied ``logs`` there before on_log

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.monitor is not None:
                self.monitor.detach()

    return HuggingFaceMonitorCallback


def _lightning_callback() -> type:
    import lightning.pytorch as pl

    class LightningMonitorCallback(pl.Callback):
        """Attach a :class:`StabilityMonitor` to the first optimizer at ``on_train_start``; detach at the end.

        Keyword arguments are :class:`StabilityMonitor`'s; ``names`` defaults to the LightningModule.
        ``on_train_batch_end`` logs the worst bound ratio and spike factor of the last recorded step
        with ``pl_module.log``.
        """

        def __init__(self, **monitor_kwargs: Any) -> None:
            self.monitor_kwargs = monitor_kwargs
            self.monitor: StabilityMonitor | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.monitor = StabilityMonitor(trainer.optimizers[0], **{"names": pl_module, **self.monitor_kwargs})

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.monitor is not None:
                for key, value in _latest_summary(self.monitor).items():
                    pl_module.log(key, value, on_step=True, on_epoch=False)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if self.monitor is not None:
                self.monitor.detach()

    return LightningMonitorCallback


def _latest_summary(monitor: StabilityMonitor) -> dict[str, float]:
    """Largest bound ratio (any level) and spike factor over tensors at the last recorded step."""
    if not monitor._rows:
        return {}
    row = monitor._rows[-1]
    summary = {}
    ratios = [monitor._column[q] for q in monitor.quantities if q.startswith("bound_ratio_L")]
    for key, columns in (("monitor/max_bound_ratio", ratios), ("monitor/max_spike_factor",
                                                               [monitor._column["spike_factor"]])):
        block = row[:, columns]
        if np.isfinite(block).any():
            summary[key] = float(np.nanmax(block))
    return summary


_LAZY = {"HuggingFaceMonitorCallback": _huggingface_callback, "LightningMonitorCallback": _lightning_callback}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = _LAZY[name]()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
