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

**Events** (:class:`StabilityEvent`) compare these with thresholds (:class:`Thresholds`). Attach-time
*configuration* events (``kind == "configuration"``): a level outside the stable region γ > β² (checked
when attached and whenever a group's hyperparameters change; the message gives the growth rate of THEORY §2
and the nearest stable γ). *Running* events, from the theory: a bound ratio above 1 (impossible for the
recorded hyperparameters: the optimizer is not doing what its param groups say, e.g. β changed mid-run), and,
with a closure, the preconditioned sharpness above the adaptive edge of stability. Running events by
argument, on by default (no closure needed): a non-finite gradient norm or loss, the loss handed to
:meth:`StabilityMonitor.observe_loss` jumping above a multiple of its recent median, and the largest
update/parameter ratio rising above a multiple of its smallest value so far. Off by default: the secant
curvature against the edge, the gradient-norm growth, the absolute update ratio, the spike factor, the
update–gradient cosine and the near-worst-case bound ratio (:class:`Thresholds` says why for each).

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

import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from kadam import stability
from kadam.monitor import rules
from kadam.monitor.events import StabilityEvent, Thresholds, announce, reporting_rank
from kadam.monitor.history import MonitorHistory
from kadam.monitor.sharpness import preconditioned_sharpness
from kadam.normalization import predictions
from kadam.normalization.tracker import step_statistics, uses_decoupled_weight_decay
from kadam.optimizer.hooks import StepHooks, named_tensors
from kadam.optimizer.state import LevelState, level_states, param_group_levels, step_count
from kadam.vocabulary import Level

__all__ = ["DEFAULT_EVERY", "StabilityMonitor", "global_grad_norm"]

logger = logging.getLogger("kadam.monitor")

DEFAULT_EVERY = 10
"""Steps between recorded steps by default (the checks of the gradient norm and the loss run every step)."""


_TENSOR_QUANTITIES = ("lr", "spike_factor", "update_clip_rms", "cosine", "update_param_ratio", "param_norm")
_LEVEL_QUANTITIES = ("update_rms", "update_max", "bound", "bound_ratio")
_INVARIANT_QUANTITIES = ("effective_lr", "angular_update", "predicted_norm", "predicted_angular_update")
_MODEL_QUANTITIES = ("model_cosine", "grad_norm", "curvature", "edge", "sharpness", "sharpness_threshold", "loss")


class _Layout(NamedTuple):
    """What :meth:`StabilityMonitor._fill` needs besides the device measurements of one tensor."""

    levels: tuple[Level, ...]
    bounds: list[float]
    lr: float
    decay: float  # decoupled λ (0 for coupled or none)
    invariant: bool
    elements: int

    @property
    def size(self) -> int:
        """Number of measurements: two per level, ten for the tensor, one more if scale-invariant."""
        return 2 * len(self.levels) + 10 + int(self.invariant)


class _Sums(NamedTuple):
    """One tensor's terms of the model-wide sums: ⟨u, g⟩, |u|², |g|², and the secant curvature's
    ⟨Δg, Δθ⟩ and Σ(√v̂ + ε)Δθ²/η (NaN without the previous step's gradient)."""

    inner: float
    u_sq: float
    g_sq: float
    secant_inner: float
    secant_weighted: float

    def __add__(self, other: object) -> _Sums:  # type: ignore[override]
        assert isinstance(other, _Sums)
        return _Sums(*(a + b for a, b in zip(self, other)))


class _Tracked(NamedTuple):
    name: str
    param: Tensor
    group_index: int
    invariant: bool


def global_grad_norm(grads: list[Tensor]) -> Tensor:
    """The Euclidean norm of all ``grads`` together: the norm of their norms (``torch._foreach_norm``)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class StabilityMonitor(StepHooks):
    r"""THEORY §7's quantities and events for an ``Adam``, ``AdamW`` or ``KAdam`` optimizer (module docstring).

    Args:
        optimizer: ``torch.optim.Adam``/``AdamW`` or ``kadam.KAdam`` (e.g. unwrapped from accelerate's
            ``AcceleratedOptimizer``, which :class:`StabilityMonitor` does itself via ``.optimizer``).
        every: record every ``every``-th call of ``optimizer.step`` (counted from attachment).
        names: ``model``, ``model.named_parameters()`` or ``dict(model.named_parameters())``: names used in
            history and events (others are called ``param_groups[g][j]``).
        scale_invariant: names (or tensors) of scale-invariant tensors, e.g.
            ``find_scale_invariant(...).invariant`` (THEORY §4), or the report itself.
        sharpness_every: estimate the preconditioned sharpness every this many *recorded* steps; needs
            ``sharpness_closure`` (a callable returning the loss with its graph, without ``backward``).
        sharpness_iterations: Lanczos steps (Hessian-vector products) per estimate.
        on_event: called with each :class:`StabilityEvent` (rank 0).
        thresholds: :class:`Thresholds`.
        quiet_steps: after warning about a (tensor, quantity, level), further events for it within this
            many optimizer steps go to ``events`` and ``on_event`` but not to ``warnings``/``logging``.
        warn: issue events through ``warnings`` (category :class:`kadam.stability.StabilityWarning`, located
            at the caller's line) and the ``kadam.monitor`` logger.
        writer: an object with ``add_scalar(tag, value, step)`` (e.g. a TensorBoard ``SummaryWriter``, see
            :meth:`tensorboard`), written at every recorded step (rank 0).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        every: int = DEFAULT_EVERY,
        names: nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] | None = None,
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
        for name, value, least in (
            ("every", every, 1),
            ("sharpness_iterations", sharpness_iterations, 1),
            ("quiet_steps", quiet_steps, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if sharpness_every is not None and (
            isinstance(sharpness_every, bool) or not isinstance(sharpness_every, int) or sharpness_every < 1
        ):
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

        self._levels = [param_group_levels(optimizer, group) for group in optimizer.param_groups]
        self._tracked = self._resolve_tensors(optimizer, names, scale_invariant)
        depth = max(len(levels) for levels in self._levels)
        self.quantities: list[str] = [
            *_TENSOR_QUANTITIES,
            *(f"{q}_L{i}" for i in range(1, depth + 1) for q in _LEVEL_QUANTITIES),
        ]
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
        self._loss: Tensor | None = None
        self._last_warned: dict[tuple[str, str, int], int] = {}
        self._seen_levels: list[tuple[Level, ...] | None] = [None] * len(optimizer.param_groups)
        self._bounds: dict[tuple[float, float, float], float] = {}
        self._recorded = 0
        limits = self.thresholds
        self._edge_check = (
            rules.EdgeCheck(limits.edge_ratio, limits.edge_patience, limits.edge_after)
            if limits.edge_ratio is not None
            else None
        )
        self._grad_check = (
            rules.GrowthCheck(limits.grad_growth, limits.grad_window) if limits.grad_growth is not None else None
        )
        self._loss_check = (
            rules.GrowthCheck(limits.loss_growth, limits.loss_window) if limits.loss_growth is not None else None
        )
        self._rise_check = (
            rules.RiseCheck(limits.update_rise, limits.update_rise_after) if limits.update_rise is not None else None
        )
        self._update_excess: tuple[int, float] | None = None
        self._uses_gradients = True  # the secant curvature is recorded whether or not its check is on
        self._kept: dict[int, Tensor] = {}
        self._kept_step: int | None = None
        self._check_region(step=self._optimizer_step())
        self._attach(optimizer)

    # -- setup ---------------------------------------------------------------------------------------

    @staticmethod
    def _resolve_tensors(optimizer: torch.optim.Optimizer, names: Any, scale_invariant: Any) -> list[_Tracked]:
        name_of: dict[int, str] = {}
        for name, tensor in named_tensors(names):
            name_of.setdefault(id(tensor), name)
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
        steps = [step_count(self.optimizer, t.param) for t in self._tracked if t.param in self.optimizer.state]
        return int(max(steps)) if steps else 0

    # -- hooks ---------------------------------------------------------------------------------------

    def _recording(self) -> bool:
        return self._pending or self._calls % self.every == 0

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._calls += 1
        if not self._recording():
            self._pre = None
            return
        self._pre = {index: step_count(optimizer, tracked.param) for index, tracked in enumerate(self._tracked)}

    @torch.no_grad()
    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._check_step(optimizer)
        if self._pre is None:
            self._keep_gradients(self._optimizer_step())
            return
        pre, self._pre = self._pre, None
        row = np.full((len(self._tracked), len(self.quantities)), np.nan)
        advanced = [
            i
            for i, before in pre.items()
            if self._tracked[i].param.grad is not None and step_count(optimizer, self._tracked[i].param) > before
        ]
        if not advanced:
            self._pending = True  # e.g. GradScaler skipped a fused step: record the next one instead
            return
        self._pending = False
        step = int(max(step_count(optimizer, self._tracked[i].param) for i in advanced))
        if self._kept_step != step - 1:
            self._kept = {}
        self._check_region(step)
        levels = [param_group_levels(optimizer, group) for group in optimizer.param_groups]
        measured: list[Tensor] = []  # per tensor, its device measurements; moved to the host once
        layouts: list[tuple[int, _Layout]] = []
        for index in advanced:
            tracked = self._tracked[index]
            values, layout = self._measure(optimizer, tracked, levels[tracked.group_index])
            measured.append(values.double())
            layouts.append((index, layout))
        host = torch.cat(measured).cpu().numpy() if measured else np.zeros(0)
        position = 0
        total = _Sums(0.0, 0.0, 0.0, 0.0, 0.0)
        # A diverging run's measurements are inf or NaN (inf / inf, say): its quantities are NaN or inf by design,
        # recorded and reported as events, so numpy's warnings about them would only repeat that in the user's log.
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for index, layout in layouts:
                total = total + self._fill(row[index], host[position : position + layout.size], layout)
                position += layout.size
        inner, u_sq, g_sq = total.inner, total.u_sq, total.g_sq
        model = {q: math.nan for q in _MODEL_QUANTITIES}
        model["model_cosine"] = inner / math.sqrt(u_sq * g_sq) if u_sq > 0 and g_sq > 0 else math.nan
        model["grad_norm"] = math.sqrt(g_sq) if g_sq >= 0 else math.nan
        model["curvature"] = rules.secant_curvature(total.secant_inner, total.secant_weighted)
        model["edge"] = self._edge(optimizer)
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
        if self.writer is not None and reporting_rank():
            self._write_scalars(step, row, model)
        self._keep_gradients(step)

    def _measure(
        self, optimizer: torch.optim.Optimizer, tracked: _Tracked, levels: tuple[Level, ...]
    ) -> tuple[Tensor, _Layout]:
        """One tensor's device-side reductions (a 1-d tensor) and what the host needs to finish them.

        Per level: |u⁽ⁱ⁾| and max|u⁽ⁱ⁾|; then ⟨u, g⟩, |u|, |g| of the final update, |θ_n − θ_{n−1}|,
        |θ_{n−1}|, |θ_n|, the spike factor, and for a scale-invariant tensor the angular update. A few
        elementwise passes, each in the tensor's own dtype.
        """
        group = optimizer.param_groups[tracked.group_index]
        param = tracked.param.detach()
        lr = float(group["lr"])
        decoupled = uses_decoupled_weight_decay(optimizer, group)
        decay = float(group.get("weight_decay", 0.0)) if decoupled else 0.0
        shrink = 1.0 - lr * decay
        reductions: list[Tensor] = []
        bounds: list[float] = []
        update: Tensor | None = None
        states = level_states(optimizer, tracked.param)
        for level_state in states:  # β = 0 (level ≥ 2): m_n is the level's input, the previous level's update
            update = level_state.update(update)
            reductions += [torch.linalg.vector_norm(update), torch.linalg.vector_norm(update, ord=math.inf)]
            bounds.append(self._bound(level_state.level.beta, level_state.level.gamma, level_state.step))
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
        reductions += [
            torch.dot(flat_u, flat_g),
            torch.linalg.vector_norm(flat_u),
            torch.linalg.vector_norm(flat_g),
            torch.linalg.vector_norm(change) * (lr / shrink),
            torch.linalg.vector_norm(before),
            torch.linalg.vector_norm(flat_after),
            self._spike_factor(optimizer, group, states[0], flat_g, before),
            *self._secant_terms(tracked, states[0], flat_g, change, lr, shrink),
            self._update_clip_rms(states[0], flat_g),
        ]
        if tracked.invariant:
            reductions.append(step_statistics(before, flat_after, lr, decay)[3])
        layout = _Layout(levels, bounds, lr, decay, tracked.invariant, param.numel())
        dtype = reductions[0].dtype
        return torch.stack([r.reshape(()).to(dtype) for r in reductions]), layout

    def _fill(self, row: np.ndarray, values: np.ndarray, layout: _Layout) -> _Sums:
        """Write one tensor's quantities into ``row`` from its measurements; returns its terms of the model's sums."""
        column = self._column
        size = layout.elements
        for i, (level, bound) in enumerate(zip(layout.levels, layout.bounds), start=1):
            norm, largest = values[2 * i - 2], values[2 * i - 1]
            rms = norm / math.sqrt(size)
            row[column[f"update_rms_L{i}"]] = rms
            row[column[f"update_max_L{i}"]] = largest
            row[column[f"bound_L{i}"]] = bound
            row[column[f"bound_ratio_L{i}"]] = (rms if level.tensor_mode else largest) / bound
        inner, u_norm, g_norm, change, before, after, spike, secant_inner, secant_weighted, clip_rms, *rest = values[
            2 * len(layout.levels) :
        ]
        lr = layout.lr
        row[column["cosine"]] = inner / (u_norm * g_norm) if u_norm > 0 and g_norm > 0 else math.nan
        row[column["update_param_ratio"]] = change / before if before > 0 else math.nan
        row[column["param_norm"]] = after
        row[column["lr"]] = lr
        row[column["spike_factor"]] = spike
        row[column["update_clip_rms"]] = clip_rms
        if layout.invariant:
            row[column["angular_update"]] = rest[0]
            row[column["effective_lr"]] = lr / before if before > 0 else math.nan
            beta, decay = layout.levels[-1].beta, layout.decay
            if decay > 0 and lr > 0 and lr * decay < 1:
                row[column["predicted_norm"]] = predictions.equilibrium_norm(lr, decay, size, beta)
                row[column["predicted_angular_update"]] = predictions.equilibrium_angular_update(lr, decay, beta)
        return _Sums(float(inner), float(u_norm) ** 2, float(g_norm) ** 2, float(secant_inner), float(secant_weighted))

    @staticmethod
    def _spike_factor(
        optimizer: torch.optim.Optimizer,
        group: Mapping[str, Any],
        level_state: LevelState,
        grad: Tensor,
        before: Tensor,
    ) -> Tensor:
        """THEORY §7's spike factor of step n, from the state after the step (module docstring).

        ``v_{n−1} = (v_n − (1−γ) x_n²)/γ`` recovers the second moment before the step; in a spike
        ``x_n² ≫ v_{n−1}`` this subtraction keeps about ``(1−γ)^{-1}/s`` of ``v_n``'s relative precision,
        enough for spike factors far beyond any threshold in float32 (e.g. s = 10⁶ at γ = 0.999 to ~1e-4).
        """
        level, count = level_state.level, level_state.step
        second = level_state.exp_avg_sq  # the moment itself, also under AMSGrad
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

    def _secant_terms(
        self, tracked: _Tracked, level_state: LevelState, grad: Tensor, change: Tensor, lr: float, shrink: float
    ) -> tuple[Tensor, Tensor]:
        """⟨g_n − g_{n−1}, Δθ⟩ and Σ(√v̂_n + ε)Δθ²/η over this tensor, Δθ = −η(u + λθ_n)/q (NaN without the
        previous step's gradient): the terms of :func:`kadam.monitor.rules.secant_curvature`."""
        previous = self._kept.get(id(tracked.param))
        if previous is None or previous.shape != grad.shape:
            nan = grad.new_tensor(math.nan)
            return nan, nan
        moment = level_state.denominator_moment
        moment = torch.view_as_real(moment) if torch.is_complex(moment) else moment
        scale = (moment.sqrt() / math.sqrt(level_state.bias_correction2)).add_(level_state.level.eps)
        scale = scale.reshape(-1) if scale.dim() else scale
        inner = torch.dot(grad - previous, change) * (-lr / shrink)
        weighted = torch.sum(scale * change.square()) * (lr / (shrink * shrink))
        return inner, weighted

    @staticmethod
    def _update_clip_rms(level_state: LevelState, grad: Tensor) -> Tensor:
        """StableAdamW's :math:`\\mathrm{RMS}(g_n^2 / \\max(\\hat v_n, \\epsilon^2))` of level 1 after the step
        (Wortsman et al. 2023): above 1, its update clipping would shrink this tensor's step."""
        moment = level_state.exp_avg_sq
        moment = torch.view_as_real(moment) if torch.is_complex(moment) else moment
        corrected = moment / level_state.bias_correction2
        corrected = corrected.reshape(-1) if corrected.dim() else corrected
        floor = max(level_state.level.eps, 1e-30) ** 2
        return torch.sqrt(torch.mean(grad.square() / torch.clamp(corrected, min=floor)))

    def _keep_gradients(self, step: int) -> None:
        """Copy the gradients when the next call is recorded: its secant curvature needs g_{n−1}."""
        if not (self._pending or (self._calls + 1) % self.every == 0) or not self._uses_gradients:
            self._kept, self._kept_step = {}, None
            return
        kept = {}
        for tracked in self._tracked:
            grad = tracked.param.grad
            if grad is None:
                continue
            group = self.optimizer.param_groups[tracked.group_index]
            flat = (torch.view_as_real(grad) if torch.is_complex(grad) else grad).reshape(-1)
            kept[id(tracked.param)] = -flat if group.get("maximize", False) else flat.clone()
        self._kept, self._kept_step = kept, step

    def _edge(self, optimizer: torch.optim.Optimizer) -> float:
        """The adaptive edge of stability (2 + 2β)/(1 − β) of the first group's level 1 (η inside P)."""
        beta = param_group_levels(optimizer, optimizer.param_groups[0])[0].beta
        return float(stability.edge_of_stability(beta))

    @property
    def above_edge(self) -> bool:
        """Whether the secant curvature has been above the edge of stability for ``Thresholds.edge_patience``
        recorded steps in a row (up to the last recorded step); what :class:`~kadam.monitor.StabilityGuard`
        lowers the learning rate on."""
        return self._edge_check is not None and self._edge_check.above

    @property
    def update_excess(self) -> tuple[int, float] | None:
        """``(step, x)`` of the last recorded step where the update-rise check could fire: x is the largest
        update/parameter ratio over ``Thresholds.update_rise`` × its smallest value before (the check fires
        when x > 1); None before then or with the check off. What :class:`~kadam.monitor.StabilityGuard` scales
        the learning rate by."""
        return self._update_excess

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
            states = level_states(optimizer, tracked.param)
            if not states or not tracked.param.requires_grad:
                continue
            group = optimizer.param_groups[tracked.group_index]
            level, count, second = states[0].level, states[0].step, states[0].denominator_moment
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
        value = preconditioned_sharpness(
            self.sharpness_closure, params, inverse, iterations=self.sharpness_iterations, generator=generator
        )
        beta = param_group_levels(optimizer, optimizer.param_groups[0])[0].beta
        return value, float(stability.edge_of_stability(beta))

    # -- events --------------------------------------------------------------------------------------

    def _check_region(self, step: int) -> None:
        for g, group in enumerate(self.optimizer.param_groups):
            levels = param_group_levels(self.optimizer, group)
            if g < len(self._seen_levels) and self._seen_levels[g] == levels:
                continue
            if g >= len(self._seen_levels):
                self._seen_levels.append(None)
            self._seen_levels[g] = levels
            for i, level in enumerate(levels, start=1):
                if stability.is_stable(level.beta, level.gamma):
                    continue
                explanation, suggestion = stability.region_text(level.beta, level.gamma)
                boundary = float(stability.boundary_gamma(level.beta))
                self._emit(
                    StabilityEvent(
                        f"param_groups[{g}]",
                        step,
                        "gamma",
                        level.gamma,
                        boundary,
                        f"level {i}: {explanation}" if len(levels) > 1 else explanation,
                        suggestion,
                        i,
                        "theory",
                    )
                )

    def _check_events(
        self, step: int, row: np.ndarray, model: Mapping[str, float], group_levels: list[tuple[Level, ...]]
    ) -> None:
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
                    self._emit(
                        StabilityEvent(
                            tracked.name,
                            step,
                            f"bound_ratio_L{i}",
                            float(ratio),
                            limits.bound_ratio,
                            f"level {i}'s update {what} is {ratio:.3g}× the exact bound B_n = {bound:.4g} of "
                            f"(β, γ) = ({level.beta:g}, {level.gamma:g}), which no input can exceed",
                            "the optimizer is not stepping with these param-group hyperparameters (changed β/γ "
                            "mid-run, or a modified update)",
                            i,
                            "theory",
                        )
                    )
                elif limits.near_bound is not None and ratio >= limits.near_bound:
                    self._emit(
                        StabilityEvent(
                            tracked.name,
                            step,
                            f"bound_ratio_L{i}",
                            float(ratio),
                            limits.near_bound,
                            f"level {i}'s update {what} is {ratio:.3g} of its exact bound B_n = {bound:.4g}: the "
                            "gradients are close to the worst case, a geometrically growing gradient",
                            "look for a growing gradient in this tensor; lower lr or clip",
                            i,
                            "argument",
                        )
                    )
            spike = values[self._column["spike_factor"]]
            if limits.spike_factor is not None and step >= limits.spike_after and spike > limits.spike_factor:
                level = levels[0]
                one_spike = (1 - level.beta) / math.sqrt(1 - level.gamma)
                self._emit(
                    StabilityEvent(
                        tracked.name,
                        step,
                        "spike_factor",
                        float(spike),
                        limits.spike_factor,
                        f"a gradient entry squared is {spike:.3g}× its second-moment history: its update "
                        f"approaches the one-spike size (1 − β)/√(1 − γ) = {one_spike:.3g} per unit lr whatever "
                        "the gradient's scale",
                        "raise ε for rarely-updated rows (embeddings), clip per coordinate, or lower γ's memory",
                        1,
                        "argument",
                    )
                )
            cosine = values[self._column["cosine"]]
            if limits.cosine is not None and cosine < limits.cosine:
                self._emit(
                    StabilityEvent(
                        tracked.name,
                        step,
                        "cosine",
                        float(cosine),
                        limits.cosine,
                        f"the update–gradient cosine is {cosine:.3g}: the update moves against the current gradient "
                        "(momentum overshoot, oscillation across a valley)",
                        "lower lr or β",
                        0,
                        "argument",
                    )
                )
        sharpness, threshold = model["sharpness"], model["sharpness_threshold"]
        if (
            limits.sharpness_ratio is not None
            and step >= limits.sharpness_after
            and sharpness > limits.sharpness_ratio * threshold
        ):
            self._emit(
                StabilityEvent(
                    "*",
                    step,
                    "sharpness",
                    float(sharpness),
                    float(threshold) * limits.sharpness_ratio,
                    f"the preconditioned sharpness λ_max(ηP⁻¹H) = {sharpness:.4g} is above the adaptive edge of "
                    f"stability (2 + 2β)/(1 − β) = {threshold:.4g}: the step overshoots along that direction (full-batch "
                    "Adam hovers at this edge, Cohen et al. 2022, so a large or persistent excess is the signal)",
                    "lower lr (the edge in P⁻¹H scales as 1/η)",
                    0,
                    "theory",
                )
            )
        column = self._column["update_param_ratio"]
        ratios = row[:, column]
        largest = float(np.nanmax(ratios)) if np.isfinite(ratios).any() and step >= limits.update_after else math.nan
        rise = self._rise_check
        if rise is not None and rise.seen >= rise.after and math.isfinite(largest):
            self._update_excess = (step, largest / (rise.factor * rise.minimum))
        if rise is not None and rise.update(largest):
            worst = int(np.nanargmax(ratios))
            self._emit(
                StabilityEvent(
                    self._tracked[worst].name,
                    step,
                    "update_rise",
                    largest,
                    self._rise_check.factor * self._rise_check.minimum,
                    f"the largest update/parameter ratio {largest:.3g} is {largest / self._rise_check.minimum:.3g}× its smallest "
                    "value so far: the steps grow against the weights (a rising learning rate, or an update that grows)",
                    "lower lr, or check the schedule",
                    0,
                    "argument",
                )
            )
        if limits.update_ratio is not None and math.isfinite(largest) and largest > limits.update_ratio:
            worst = int(np.nanargmax(ratios))
            self._emit(
                StabilityEvent(
                    self._tracked[worst].name,
                    step,
                    "update_param_ratio",
                    float(ratios[worst]),
                    limits.update_ratio,
                    f"the step changed this tensor by {ratios[worst]:.3g} of its norm (|θ_n − θ_n−1|/|θ_n−1|): Adam's update "
                    "is about lr per coordinate whatever the gradient's scale, so a large ratio means lr is large against "
                    "the weights",
                    "lower lr, or warm it up",
                    0,
                    "argument",
                )
            )
        curvature, edge = model["curvature"], model["edge"]
        if self._edge_check is not None and self._edge_check.update(step, curvature, edge):
            self._emit(
                StabilityEvent(
                    "*",
                    step,
                    "curvature",
                    float(curvature),
                    float(edge) * self._edge_check.ratio,
                    f"the curvature along the last steps, ⟨Δg, Δθ⟩/⟨Δθ, PΔθ⟩ = {curvature:.4g} with P = diag(√v̂ + ε)/η, "
                    f"has been above the adaptive edge of stability (2 + 2β)/(1 − β) = {edge:.4g} for "
                    f"{self._edge_check.streak} recorded steps: the steps overshoot along the update's direction",
                    "lower lr (or warm it up), or let kadam.monitor.StabilityGuard lower it while this lasts",
                    0,
                    "theory",
                )
            )

    def _check_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Every step, recorded or not: the global gradient norm (one reduction over the gradients and one
        read on the host) and the loss handed over, against the non-finite and growth checks."""
        loss, self._loss = self._loss, None
        limits = self.thresholds
        if not (limits.nonfinite or self._grad_check is not None or self._loss_check is not None):
            return
        found_inf = getattr(optimizer, "found_inf", None)
        if found_inf is not None and bool(found_inf):
            return  # GradScaler skips this step itself
        grads = [t.param.grad for t in self._tracked if t.param.grad is not None]
        if not grads:
            return
        grad_norm = float(global_grad_norm(grads))
        scale = getattr(optimizer, "grad_scale", None)  # fused optimizers under GradScaler see scaled gradients
        if scale is not None:
            grad_norm /= float(scale)
        self._check_running(self._optimizer_step(), grad_norm, math.nan if loss is None else float(loss))

    def _check_running(self, step: int, grad_norm: float, loss: float) -> None:
        """The checks of the running training that need no closure, once per step (:mod:`kadam.monitor.rules`)."""
        limits = self.thresholds
        if limits.nonfinite and (rules.non_finite(grad_norm) or (not math.isnan(loss) and rules.non_finite(loss))):
            what, value = ("gradient norm", grad_norm) if rules.non_finite(grad_norm) else ("loss", loss)
            self._emit(
                StabilityEvent(
                    "*",
                    step,
                    "nonfinite",
                    float(value),
                    math.inf,
                    f"the {what} is {value}: the step was taken with a non-finite value (an inf/NaN in one element "
                    "poisons a tensor's second moment, and the whole tensor's at a tensor-mode level)",
                    "skip such steps (torch.amp.GradScaler, kadam.monitor.StabilityGuard) and find the batch or "
                    "operation that produced it",
                    0,
                    "argument",
                )
            )
        if self._grad_check is not None and self._grad_check.update(grad_norm):
            self._emit(
                StabilityEvent(
                    "*",
                    step,
                    "grad_norm",
                    float(grad_norm),
                    self._grad_check.factor,
                    f"the gradient norm {grad_norm:.4g} is above {self._grad_check.factor:g}× the median of its last "
                    f"{self._grad_check.window} steps",
                    "a growing gradient precedes a loss spike: lower lr, or clip gradients",
                    0,
                    "argument",
                )
            )
        if self._loss_check is not None and not math.isnan(loss) and self._loss_check.update(loss):
            self._emit(
                StabilityEvent(
                    "*",
                    step,
                    "loss",
                    float(loss),
                    self._loss_check.factor,
                    f"the loss {loss:.4g} is above {self._loss_check.factor:g}× the median of its last "
                    f"{self._loss_check.window} steps",
                    "lower lr, or skip outlier batches (kadam.monitor.StabilityGuard)",
                    0,
                    "argument",
                )
            )

    def _emit(self, event: StabilityEvent) -> None:
        self.events.append(event)
        announce(
            event,
            (event.tensor, event.quantity, event.level),
            self._last_warned,
            self.quiet_steps,
            self.warn,
            self.on_event,
        )

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
        """Give the loss of the step about to be taken (call before ``optimizer.step()``): the non-finite and
        loss-growth checks read it after the step, and recorded steps keep it as the ``loss`` model quantity."""
        value = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        self._loss = value
        if self._pending or (self._calls + 1) % self.every == 0:
            self._losses[self._optimizer_step() + 1] = value

    @property
    def history(self) -> MonitorHistory:
        """Everything recorded so far (a copy)."""
        values = np.stack(self._rows) if self._rows else np.zeros((0, len(self._tracked), len(self.quantities)))
        model = {q: np.asarray([row[q] for row in self._model_rows], dtype=np.float64) for q in _MODEL_QUANTITIES}
        return MonitorHistory(
            np.asarray(self._steps, dtype=np.int64),
            [t.name for t in self._tracked],
            list(self.quantities),
            values,
            model,
            list(self.events),
        )

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """:meth:`MonitorHistory.to_csv` of :attr:`history` (on every rank; choose per-rank paths under DDP)."""
        self.history.to_csv(path)

    @staticmethod
    def tensorboard(log_dir: str) -> Any:
        """A ``torch.utils.tensorboard.SummaryWriter`` for ``writer=`` (needs the ``tensorboard`` package)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "StabilityMonitor.tensorboard needs the tensorboard package (pip install tensorboard)"
            ) from error
        return SummaryWriter(log_dir)

    def summary(self) -> dict[str, float]:
        """The largest bound ratio (any level) and spike factor over tensors at the last recorded step, as
        ``{"monitor/max_bound_ratio": ..., "monitor/max_spike_factor": ...}`` (keys with no finite value left out)."""
        if not self._rows:
            return {}
        row = self._rows[-1]
        summary = {}
        ratios = [self._column[q] for q in self.quantities if q.startswith("bound_ratio_L")]
        for key, columns in (
            ("monitor/max_bound_ratio", ratios),
            ("monitor/max_spike_factor", [self._column["spike_factor"]]),
        ):
            block = row[:, columns]
            if np.isfinite(block).any():
                summary[key] = float(np.nanmax(block))
        return summary

    def detach(self) -> None:
        """Deprecated name of :meth:`remove`."""
        warnings.warn("StabilityMonitor.detach() is deprecated; call remove()", DeprecationWarning, stacklevel=2)
        self.remove()
