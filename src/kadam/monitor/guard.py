r"""An opt-in guard that acts on a live Adam, AdamW or k-Adam run: skip, clip, lower the learning rate.

:class:`StabilityGuard` attaches to an optimizer's step hooks (as :class:`kadam.monitor.StabilityMonitor`
does) and takes three actions, each of which can be turned off and each of which is a
:class:`~kadam.monitor.StabilityEvent` with ``source="guard"``:

1. **Skip a step** (``skip_nonfinite``, ``skip_outliers``): its gradient or loss is not finite, or is an
   outlier: the global gradient norm :math:`\|g_n\|` (or the loss) above ``outlier_factor`` times the
   median of the last ``outlier_window`` accepted steps' values, once that many steps have been accepted.
   A skipped step changes no state, as ``torch.amp.GradScaler`` skips a step with an inf/NaN gradient and
   ``optax.apply_if_finite`` a non-finite update: the pre-hook sets every parameter's ``.grad`` to ``None``
   for that call, and torch's Adam/AdamW and :class:`kadam.KAdam` step no parameter without a gradient (step
   counts, moments and parameters stay bitwise as they were); the post-hook hands the gradients back. The
   rolling window and multiplier are those of llm-foundry's ``KillLossSpike`` callback (which compares the
   loss with the window's mean and stops the run after a few consecutive outliers); the median here is not
   moved by one large accepted value. More than ``max_outlier_skips`` consecutive outlier skips are taken as
   a new scale of the gradient, not a bad batch: the windows restart from that step, which is taken.
2. **Clip the update per tensor** (``clip_updates``, off by default: on the validation protocol's healthy
   development runs it raised the final loss, and it rescued no failing run that skipping did not),
   StableAdamW's update clipping (Wortsman et al. 2023,
   *Stable and low-precision training for large-scale vision-language models*, Algorithm 2, after
   Adafactor's): with :math:`x_n` the level-1 input (the gradient, negated under ``maximize``, plus
   :math:`\lambda\theta_{n-1}` for coupled L2 decay) and the level-1 second moment *including* it, bias
   corrected as the step will correct it,

   .. math::
       \hat v_n = \frac{\gamma v_{n-1} + (1-\gamma) x_n^2}{1-\gamma^n},\qquad
       r_n = \sqrt{\operatorname{mean}\bigl(x_n^2 / \max(\hat v_n, \epsilon^2)\bigr)}

   (with AMSGrad the numerator of :math:`\hat v_n` is :math:`\max(v^{\max}_{n-1}, \gamma v_{n-1} + (1-\gamma)
   x_n^2)`, as in the step's denominator; for a level in tensor mode :math:`x_n^2` enters :math:`v` through its
   mean). :math:`r_n` is the RMS of :math:`x_n/\sqrt{\hat v_n}`,
   the size of the current gradient against the history the step normalises it by; it stays near or below
   1 while that history describes the gradient and exceeds 1 when the gradient outruns a stale second
   moment (THEORY §7: the spike factor :math:`g^2/\hat v_{n-1}`, and the one-spike update
   :math:`(1-\beta)/\sqrt{1-\gamma}` it drives). Where :math:`r_n > 1` the tensor's update is rescaled by
   :math:`1/r_n`, i.e. its learning rate is :math:`\eta/\max(1, r_n)`, after the optimizer's step, by

   .. math::
       \theta_n \leftarrow \theta_n + \eta\, u_n (1 - 1/r_n),

   :math:`u_n` the update the step applied per unit lr (:func:`kadam.optimizer.state.level_updates`, level
   k's output for k-Adam). Exact: with decoupled decay :math:`\theta_n = (1-\eta\lambda)\theta_{n-1} -
   \eta u_n` becomes :math:`(1-\eta\lambda)\theta_{n-1} - (\eta/r_n)u_n`; with coupled decay
   (:math:`\lambda\theta_{n-1}` inside :math:`x_n`, hence inside :math:`u_n`) and under ``maximize`` (the
   sign inside :math:`m`) :math:`\theta_n = \theta_{n-1} - \eta u_n` becomes :math:`\theta_{n-1} -
   (\eta/r_n)u_n`. The decoupled decay term stays at η (StableAdamW scales it with the update); the
   optimizer's state is the one the unclipped step wrote, as in StableAdamW, whose moments are not clipped.
3. **Lower the learning rate** (``lower_lr``, given a ``monitor``) while the run is too fast for its weights
   or above the edge of stability; the pre-hook scales every group's ``group["lr"]`` (a tensor lr in place) for
   the step and the post-hook restores the user's value, so an LR scheduler, which sets ``group["lr"]`` between
   steps, keeps its schedule. The factor is the product of two parts:

   - the *update rise*: with the monitor's update-rise check on (its default), after each step the monitor
     records, :math:`s \leftarrow \min(1, a / x)`, where x is the monitor's
     :attr:`~kadam.monitor.StabilityMonitor.update_excess` (the largest update/parameter ratio over
     ``Thresholds.update_rise`` × its smallest value before) and a the multiplier that step used. Adam's
     update per coordinate is about lr whatever the gradient's scale, so the ratio scales with the lr, and
     :math:`s` holds the ratio the user's lr would give at the threshold: a runaway schedule (a ramp, a jump)
     is held where the run's own history says its steps were still small against its weights;
   - the *edge*: while ``monitor.above_edge`` is True (the monitor's edge check, off by default,
     ``Thresholds(edge_ratio=1.0)``: the secant curvature along the update held against the adaptive edge
     :math:`(2+2\beta)/((1-\beta)\eta)` of THEORY §7, :func:`kadam.stability.edge_of_stability`), ``lr_factor``.
     Since the edge scales as 1/η, lowering η by ``lr_factor`` raises it by 1/``lr_factor``.

   An event marks when lowering starts and when it ends.

**Events** (``quantity``): ``skip_nonfinite`` (value: the non-finite gradient norm or loss),
``skip_outlier`` (value: the gradient norm or loss; threshold: ``outlier_factor`` × the window's median),
``outlier_reset`` (the windows restarted after ``max_outlier_skips`` consecutive outlier skips),
``clip_update`` (one per step that clipped: the tensor with the largest :math:`r_n`, its value; threshold 1),
``lr_lowered`` (value: the factor when lowering starts) and ``lr_restored``. ``step`` is the optimizer step the action applies
to: for a skipped step, the number it would have had (the next step taken gets the same number). Events go
to ``events`` and ``on_event``, and to ``warnings`` (:class:`kadam.stability.StabilityWarning` at the
user's line) and the ``kadam.monitor`` logger at most once per ``quiet_steps`` per (tensor, quantity).
:attr:`counts` counts the actions.

**GradScaler.** A non-fused optimizer's gradients are unscaled by the scaler before ``step`` (and a step
with an inf/NaN never reaches the hooks); a fused one's (``_step_supports_amp_scaling``) are still scaled in
the pre-hook, where the scaler has set ``optimizer.grad_scale`` and ``optimizer.found_inf``: the guard
divides by the scale, and leaves a step with ``found_inf`` set to the kernel, which skips it (no event).

**Closures.** ``step(closure)`` computes the gradient inside ``step``, after the pre-hooks; the guard
evaluates the closure in its pre-hook (with gradients enabled), hands the step a closure that returns that
loss, and uses the loss as if given to :meth:`StabilityGuard.observe_loss`.

**Checkpoints.** :meth:`StabilityGuard.state_dict` and :meth:`StabilityGuard.load_state_dict` carry the
windows, the consecutive-outlier count, whether the lr is being lowered, the counts and the warning
schedule: a run resumed from the optimizer's and the guard's state dicts takes the uninterrupted run's steps.

**Cost.** One host synchronisation per step (the decisions need the gradient norms); per tensor one norm
and, with clipping, a few elementwise passes in float32 (float64 for float64 parameters) over one tensor at a
time; :math:`u_n` is recomputed only for the tensors that are clipped.

**Distributed.** Every rank decides from what it sees: under DDP the gradients, hence the gradient rules,
agree across ranks; hand :meth:`StabilityGuard.observe_loss` a loss averaged over ranks, or none, so that
every rank skips the same steps. Warnings, log records and ``on_event`` are issued on rank 0 only.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kadam.monitor.events import StabilityEvent, announce
from kadam.normalization.tracker import uses_decoupled_weight_decay
from kadam.optimizer.hooks import StepHooks, named_tensors
from kadam.optimizer.state import level_states, level_updates, param_group_levels, step_count

__all__ = ["StabilityGuard"]

logger = logging.getLogger("kadam.monitor")

_COUNTS = (
    "skipped_nonfinite",
    "skipped_outlier",
    "outlier_resets",
    "clipped_steps",
    "clipped_tensors",
    "lowered_steps",
)


def _check_int(name: str, value: object, least: int, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        tail = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {least}{tail}, got {value!r}")


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _to_host(values: list[Tensor], device: torch.device) -> list[float]:
    """0-dim tensors as Python floats, in one transfer: stacked per (dtype, device), gathered on ``device``
    in float64."""
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for index, value in enumerate(values):
        groups.setdefault((value.dtype, value.device), []).append(index)
    order = [i for indices in groups.values() for i in indices]
    stacked = torch.cat(
        [torch.stack([values[i] for i in indices]).to(device, torch.float64) for indices in groups.values()]
    ).tolist()
    out = [0.0] * len(values)
    for i, value in zip(order, stacked):
        out[i] = value
    return out


def _real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor) if torch.is_complex(tensor) else tensor


class StabilityGuard(StepHooks):
    r"""Skips bad steps, clips per-tensor updates and lowers the lr above the edge (module docstring).

    Args:
        optimizer: ``torch.optim.Adam``/``AdamW`` or ``kadam.KAdam`` on any path (loop, foreach, fused);
            wrappers with an ``.optimizer`` (accelerate's) are unwrapped. Another optimizer only with
            ``clip_updates=False`` (clipping reads the second moment).
        monitor: a :class:`~kadam.monitor.StabilityMonitor` of the same optimizer (or any object with a
            boolean ``above_edge``), read before each step for ``lower_lr``.
        clip_updates: StableAdamW's per-tensor update clipping, :math:`\eta/\max(1, r_n)`.
        skip_nonfinite: skip a step whose gradient (any entry: its norm is not finite) or loss is not finite.
        skip_outliers: skip a step whose gradient norm or loss is above ``outlier_factor`` × the median of
            the last ``outlier_window`` accepted steps (the loss rule while that median is > 0).
        lower_lr: lower every group's lr during each step while the monitor's update ratio is above its rise
            threshold or ``monitor.above_edge`` (module docstring; nothing without a monitor).
        outlier_factor: the multiplier of the outlier rule, > 1.
        outlier_window: accepted steps in the rolling windows; the outlier rule starts once they are full.
        max_outlier_skips: consecutive outlier skips after which the next outlier is taken and the windows
            restart (None: skip outliers without limit).
        lr_factor: the factor in (0, 1) of the lr above the edge of stability.
        names: ``model``, its ``named_parameters()`` or a mapping, to name tensors in events.
        on_event: called with each :class:`~kadam.monitor.StabilityEvent` (rank 0).
        quiet_steps: after a warning about a (tensor, quantity), further ones within this many optimizer
            steps go to ``events`` and ``on_event`` only.
        warn: issue events through ``warnings`` and the ``kadam.monitor`` logger.

    Raises:
        ValueError: naming the argument and its accepted values.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        monitor: Any | None = None,
        clip_updates: bool = False,
        skip_nonfinite: bool = True,
        skip_outliers: bool = True,
        lower_lr: bool = True,
        outlier_factor: float = 10.0,
        outlier_window: int = 50,
        max_outlier_skips: int | None = 10,
        lr_factor: float = 0.5,
        names: nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] | None = None,
        on_event: Callable[[StabilityEvent], None] | None = None,
        quiet_steps: int = 100,
        warn: bool = True,
    ) -> None:
        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer and similar wrappers
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        for name, flag in (
            ("clip_updates", clip_updates),
            ("skip_nonfinite", skip_nonfinite),
            ("skip_outliers", skip_outliers),
            ("lower_lr", lower_lr),
            ("warn", warn),
        ):
            _check_flag(name, flag)
        if (
            isinstance(outlier_factor, bool)
            or not isinstance(outlier_factor, (int, float))
            or not 1.0 < outlier_factor < math.inf
        ):
            raise ValueError(f"outlier_factor must be a finite number > 1, got {outlier_factor!r}")
        _check_int("outlier_window", outlier_window, 1)
        _check_int("max_outlier_skips", max_outlier_skips, 1, allow_none=True)
        _check_int("quiet_steps", quiet_steps, 0)
        if isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float)) or not 0.0 < lr_factor < 1.0:
            raise ValueError(f"lr_factor must be a number in (0, 1), got {lr_factor!r}")
        if on_event is not None and not callable(on_event):
            raise ValueError(f"on_event must be callable or None, got {type(on_event).__name__}")
        if monitor is not None:
            if not hasattr(monitor, "above_edge") and not hasattr(type(monitor), "above_edge"):
                raise ValueError(
                    "monitor must be a kadam.monitor.StabilityMonitor (an object with a boolean "
                    f"above_edge), got {type(monitor).__name__}"
                )
            watched = getattr(monitor, "optimizer", optimizer)
            if isinstance(watched, torch.optim.Optimizer) and watched is not optimizer:
                raise ValueError("monitor must watch the guarded optimizer, it watches another one")
        if clip_updates:
            for group in optimizer.param_groups:
                try:
                    param_group_levels(optimizer, group)
                except ValueError as error:
                    raise ValueError(
                        f"clip_updates=True needs torch.optim.Adam, torch.optim.AdamW or kadam.KAdam "
                        f"(it reads the second moment), got {type(optimizer).__name__}; pass "
                        "clip_updates=False"
                    ) from error
        self.optimizer = optimizer
        self.monitor = monitor
        self.clip_updates = clip_updates
        self.skip_nonfinite = skip_nonfinite
        self.skip_outliers = skip_outliers
        self.lower_lr = lower_lr
        self.outlier_factor = float(outlier_factor)
        self.outlier_window = outlier_window
        self.max_outlier_skips = max_outlier_skips
        self.lr_factor = float(lr_factor)
        self.on_event = on_event
        self.quiet_steps = quiet_steps
        self.warn = warn
        self.events: list[StabilityEvent] = []
        self.counts: dict[str, int] = dict.fromkeys(_COUNTS, 0)

        self._names = {id(tensor): name for name, tensor in reversed(named_tensors(names))}
        self._grad_norms: deque[float] = deque(maxlen=outlier_window)
        self._losses: deque[float] = deque(maxlen=outlier_window)
        self._consecutive_outliers = 0
        self._lowering = False
        self._rise_scale = 1.0  # the lr multiplier that holds the update ratio at the monitor's rise threshold
        self._applied = 1.0  # the lr multiplier of the step between the hooks
        self._last_warned: dict[tuple[str, str], int] = {}
        self._loss: Tensor | float | None = None
        # between the hooks of one step: gradients held back, tensors to clip, lrs to restore
        self._held: list[tuple[Tensor, Tensor]] = []
        self._clips: list[tuple[Tensor, int, float]] = []
        self._lrs: list[tuple[dict[str, Any], Any]] = []
        self._attach(optimizer)

    # -- public --------------------------------------------------------------------------------------

    def observe_loss(self, loss: Tensor | float) -> None:
        """Give the loss of the step about to be taken (call before ``optimizer.step()``), for the
        non-finite and outlier rules of that step. A tensor is read in the step's one synchronisation."""
        self._loss = loss.detach() if isinstance(loss, Tensor) else float(loss)

    @property
    def lowering(self) -> bool:
        """Whether the lr was lowered at the last step taken (module docstring, action 3)."""
        return self._lowering

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to take the uninterrupted run's steps (module docstring); plain Python."""
        return {
            "grad_norms": list(self._grad_norms),
            "losses": list(self._losses),
            "consecutive_outliers": self._consecutive_outliers,
            "lowering": self._lowering,
            "rise_scale": self._rise_scale,
            "counts": dict(self.counts),
            "last_warned": [[tensor, quantity, step] for (tensor, quantity), step in self._last_warned.items()],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load :meth:`state_dict`'s output; windows longer than this guard's ``outlier_window`` keep their
        most recent values.

        Raises:
            ValueError: naming a missing or malformed entry.
        """
        required = ("grad_norms", "losses", "consecutive_outliers", "lowering", "counts", "last_warned")
        missing = [key for key in required if key not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {missing}: not a StabilityGuard.state_dict()")
        try:
            grad_norms = [float(v) for v in state_dict["grad_norms"]]
            losses = [float(v) for v in state_dict["losses"]]
            consecutive = int(state_dict["consecutive_outliers"])
            lowering = bool(state_dict["lowering"])
            rise_scale = float(state_dict.get("rise_scale", 1.0))
            counts = {key: int(state_dict["counts"].get(key, 0)) for key in _COUNTS}
            last_warned = {(str(t), str(q)): int(s) for t, q, s in state_dict["last_warned"]}
        except (TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"state_dict has a malformed entry: {error}") from error
        if not 0.0 < rise_scale <= 1.0:
            raise ValueError(f"state_dict's rise_scale must be in (0, 1], got {rise_scale!r}")
        self._grad_norms = deque(grad_norms, maxlen=self.outlier_window)
        self._losses = deque(losses, maxlen=self.outlier_window)
        self._consecutive_outliers = consecutive
        self._lowering = lowering
        self._rise_scale = rise_scale
        self.counts = counts
        self._last_warned = last_warned

    def remove(self) -> None:
        """Take the hooks off the optimizer (a step interrupted between them is first undone: lrs and
        gradients put back); events and counts stay. Idempotent."""
        self._finish()
        super().remove()

    # -- hooks ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        self._finish()  # a step that raised between the hooks leaves nothing behind
        result = None
        closure = kwargs.get("closure") if "closure" in kwargs else (args[1] if len(args) > 1 else None)
        if closure is not None:
            with torch.enable_grad():
                value = closure()

            def evaluated() -> Any:
                return value

            if "closure" in kwargs:
                kwargs = {**kwargs, "closure": evaluated}
            else:
                args = (args[0], evaluated, *args[2:])
            result = (args, kwargs)
            if value is not None and self._loss is None:
                self._loss = value.detach() if isinstance(value, Tensor) else float(value)
        loss, self._loss = self._loss, None

        entries = [
            (param, g)
            for g, group in enumerate(optimizer.param_groups)
            for param in group["params"]
            if param.grad is not None
        ]
        if not entries:
            return result
        if not (self.skip_nonfinite or self.skip_outliers or self.clip_updates):  # nothing to measure
            if self.monitor is not None and self.lower_lr:
                self._lower(optimizer)
            return result
        grad_scale = getattr(optimizer, "grad_scale", None)
        found_inf = getattr(optimizer, "found_inf", None)
        device = entries[0][0].device
        measured, corrections = self._measure(optimizer, entries, grad_scale)
        extras = [t for t in (found_inf, grad_scale, loss) if isinstance(t, Tensor)]
        host = _to_host([*measured, *(t.detach().reshape(()) for t in extras)], device)
        count = len(entries)
        norms, tail = host[:count], iter(host[len(measured) :])
        ratios = [r * c for r, c in zip(host[count : len(measured)], corrections)]
        if found_inf is not None and next(tail) != 0.0:
            return result  # GradScaler's own skip: the fused kernel leaves every state as it was
        scale = next(tail) if isinstance(grad_scale, Tensor) else 1.0
        loss_value = next(tail) if isinstance(loss, Tensor) else loss
        grad_norm = math.sqrt(math.fsum(n * n for n in norms)) / scale

        if self._skip(optimizer, entries, norms, grad_norm, loss_value):
            self._held = [(param, param.grad) for param, _ in entries]
            for param, _ in entries:
                param.grad = None
            return result
        if self.clip_updates:
            self._clips = [(param, g, math.sqrt(r2)) for (param, g), r2 in zip(entries, ratios) if r2 > 1.0]
        if self.monitor is not None and self.lower_lr:
            self._lower(optimizer)
        return result

    @torch.no_grad()
    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.monitor is not None and self.lower_lr:
            self._follow_rise(optimizer)
        if self._clips:
            clips, self._clips = self._clips, []
            largest = max(clips, key=lambda clip: clip[2])
            for param, g, ratio in clips:
                updates = level_updates(optimizer, param)
                if not updates:
                    continue
                lr = float(optimizer.param_groups[g]["lr"])  # the lr the step used (lowered or not)
                target = _real(param)
                target.add_(updates[-1].to(target.dtype), alpha=lr * (1.0 - 1.0 / ratio))
            self.counts["clipped_steps"] += 1
            self.counts["clipped_tensors"] += len(clips)
            param, g, ratio = largest
            others = f"; {len(clips) - 1} other tensor(s) were clipped too" if len(clips) > 1 else ""
            self._emit(
                self._name(param, optimizer),
                int(step_count(optimizer, param)),
                "clip_update",
                ratio,
                1.0,
                f"the gradient is {ratio:.3g}× (RMS of g/√v̂, this step included) the second-moment history "
                f"the step normalises it by: the update was scaled by 1/{ratio:.3g} (StableAdamW's update "
                f"clipping){others}",
                "frequent clipping of one tensor points to a stale second moment (γ too close to 1 for "
                "it) or an lr too high for it",
            )
        self._finish()

    # -- measurement ---------------------------------------------------------------------------------

    def _measure(
        self, optimizer: torch.optim.Optimizer, entries: list[tuple[Tensor, int]], grad_scale: Tensor | None
    ) -> tuple[list[Tensor], list[float]]:
        """Per tensor its gradient norm (scaled, as it stands), then, with clipping, :math:`r_n^2` without
        its bias correction (0-dim device tensors), and the corrections :math:`1-\\gamma^n` (host floats);
        nothing is synchronised here."""
        grads = [_real(param.grad) for param, _ in entries]
        norms: list[Tensor | None] = [None] * len(grads)
        by_dtype: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for index, grad in enumerate(grads):
            by_dtype.setdefault((grad.dtype, grad.device), []).append(index)
        for (dtype, _), indices in by_dtype.items():
            tensors, accumulate = [grads[i] for i in indices], torch.promote_types(dtype, torch.float32)
            try:
                values = torch._foreach_norm(tensors, 2, dtype=accumulate)  # one call for all (clip_grad_norm_'s)
            except (TypeError, RuntimeError):  # a torch without foreach norms for this dtype or device
                values = [torch.linalg.vector_norm(t, dtype=accumulate) for t in tensors]
            for i, value in zip(indices, values):
                norms[i] = value
        measured = [norm for norm in norms if norm is not None]
        if not self.clip_updates:
            return measured, []
        groups = optimizer.param_groups
        level_ones = [param_group_levels(optimizer, group)[0] for group in groups]
        decoupled = [uses_decoupled_weight_decay(optimizer, group) for group in groups]
        corrections = []
        for (param, g), grad in zip(entries, grads):
            ratio, correction = self._squared_update_rms(
                optimizer, param, grad, groups[g], level_ones[g], decoupled[g], grad_scale
            )
            measured.append(ratio)
            corrections.append(correction)
        return measured, corrections

    @staticmethod
    def _squared_update_rms(
        optimizer: torch.optim.Optimizer,
        param: Tensor,
        grad: Tensor,
        group: Mapping[str, Any],
        level: Any,
        decoupled: bool,
        grad_scale: Tensor | None,
    ) -> tuple[Tensor, float]:
        r""":math:`r_n^2 = \operatorname{mean}(x_n^2/\max(\hat v_n, \epsilon^2))` (module docstring) as
        ``(mean(x_n^2/max(v_n, ε²(1−γ^n))), 1 − γ^n)``, their product :math:`r_n^2`; 0 before the tensor's
        first step (then :math:`\hat v_1 = x_1^2` and :math:`r_1 \le 1`)."""
        accumulate = torch.promote_types(grad.dtype, torch.float32)
        states = level_states(optimizer, param)
        if not states:
            return grad.new_zeros((), dtype=accumulate), 0.0
        state = states[0]
        x = grad.to(accumulate)
        if grad_scale is not None:
            x = torch.div(x, grad_scale.to(x.device))
        if group.get("maximize", False):
            x = torch.neg(x)
        weight_decay = float(group.get("weight_decay", 0.0))
        if weight_decay and not decoupled:
            x = torch.add(x, _real(param.detach()).to(accumulate), alpha=weight_decay)
        squares = x.square()
        gamma, eps = level.gamma, level.eps
        correction = 1.0 - gamma ** (state.step + 1)
        floor = eps * eps * correction if eps > 0 else torch.finfo(accumulate).tiny
        previous = _real(state.exp_avg_sq).to(accumulate)
        if level.tensor_mode:
            mean_square = squares.mean()
            second = (previous * gamma + (1 - gamma) * mean_square).clamp_(min=floor)
            return mean_square / second, correction
        second = torch.lerp(squares, previous, gamma)  # γ v_{n−1} + (1 − γ) x_n²
        if state.max_exp_avg_sq is not None:
            second = torch.maximum(second, _real(state.max_exp_avg_sq).to(accumulate))
        return squares.div_(second.clamp_(min=floor)).mean(), correction

    # -- actions -------------------------------------------------------------------------------------

    def _skip(
        self,
        optimizer: torch.optim.Optimizer,
        entries: list[tuple[Tensor, int]],
        norms: list[float],
        grad_norm: float,
        loss: float | None,
    ) -> bool:
        """Whether to skip this step (and its event); otherwise the step's values join the windows."""
        finite_norm = math.isfinite(grad_norm)
        finite_loss = loss is None or math.isfinite(loss)
        if not (finite_norm and finite_loss):
            if not self.skip_nonfinite:
                return False
            self.counts["skipped_nonfinite"] += 1
            if not finite_norm:
                bad = next((param for (param, _), n in zip(entries, norms) if not math.isfinite(n)), entries[0][0])
                tensor, what, value = self._name(bad, optimizer), "gradient", grad_norm
            else:
                tensor, what, value = "*", "loss", float(loss)  # type: ignore[arg-type]
            self._emit(
                tensor,
                self._optimizer_step(optimizer) + 1,
                "skip_nonfinite",
                value,
                math.inf,
                f"the {what} is not finite ({value}): the step was skipped, no state changed",
                "if it repeats, lower lr, check the data, or (mixed precision) use a GradScaler",
            )
            return True
        if self.skip_outliers:
            reason = None
            if len(self._grad_norms) == self.outlier_window:
                limit = self.outlier_factor * statistics.median(self._grad_norms)
                if grad_norm > limit:
                    reason = ("gradient norm", grad_norm, limit)
            if reason is None and loss is not None and len(self._losses) == self.outlier_window:
                median = statistics.median(self._losses)
                if median > 0 and loss > self.outlier_factor * median:
                    reason = ("loss", loss, self.outlier_factor * median)
            if reason is not None:
                self._consecutive_outliers += 1
                what, value, limit = reason
                step = self._optimizer_step(optimizer) + 1
                if self.max_outlier_skips is None or self._consecutive_outliers <= self.max_outlier_skips:
                    self.counts["skipped_outlier"] += 1
                    self._emit(
                        "*",
                        step,
                        "skip_outlier",
                        value,
                        limit,
                        f"the {what} {value:.4g} is above {self.outlier_factor:g}× the median of the last "
                        f"{self.outlier_window} steps taken ({limit:.4g}): the step was skipped, no state "
                        "changed",
                        "one bad batch is skipped; if it repeats, lower lr or look at the data",
                    )
                    return True
                self.counts["outlier_resets"] += 1
                self._emit(
                    "*",
                    step,
                    "outlier_reset",
                    value,
                    limit,
                    f"{self._consecutive_outliers - 1} consecutive steps were skipped as outliers: the "
                    f"{what} {value:.4g} is taken as its new scale, this step is taken and the windows "
                    "restart from it",
                    "if the run is diverging, lower lr",
                )
                self._grad_norms.clear()
                self._losses.clear()
            self._consecutive_outliers = 0
            self._grad_norms.append(grad_norm)
            if loss is not None:
                self._losses.append(float(loss))
        return False

    def _follow_rise(self, optimizer: torch.optim.Optimizer) -> None:
        """After a step the monitor recorded: the lr multiplier that brings the update ratio the user's lr would
        have given back to the monitor's rise threshold (the ratio scales with the lr; this step's was measured
        with the multiplier it used)."""
        excess = getattr(self.monitor, "update_excess", None)
        if excess is None or excess[0] != self._optimizer_step(optimizer) or not math.isfinite(excess[1]):
            return
        if excess[1] > 0:
            self._rise_scale = min(1.0, self._applied / excess[1])

    def _lower(self, optimizer: torch.optim.Optimizer) -> None:
        edge = bool(getattr(self.monitor, "above_edge", False))
        factor = (self.lr_factor if edge else 1.0) * self._rise_scale
        lowering = factor < 1.0
        if lowering != self._lowering:
            self._lowering = lowering
            step = self._optimizer_step(optimizer) + 1
            if lowering:
                why = (
                    "the run is above the edge of stability (2 + 2β)/((1 − β)η)"
                    if edge
                    else f"the largest update/parameter ratio the lr would give is {1 / self._rise_scale:.3g}× the "
                    "monitor's update-rise threshold (the lr is large against the weights)"
                )
                self._emit(
                    "*",
                    step,
                    "lr_lowered",
                    factor,
                    1.0,
                    f"{why}: every group's lr is multiplied by {factor:.3g} during each step (recomputed at each "
                    "recorded step) until it is back below",
                    "if it lasts, lower the lr schedule itself",
                )
            else:
                self._emit(
                    "*",
                    step,
                    "lr_restored",
                    1.0,
                    1.0,
                    "the run is back below the edge of stability and the update-rise threshold: the lr is the "
                    "schedule's again",
                    "nothing to do",
                )
        if not lowering:
            return
        self._applied = factor
        self.counts["lowered_steps"] += 1
        for group in optimizer.param_groups:
            lr = group["lr"]
            if isinstance(lr, Tensor):
                self._lrs.append((group, lr.clone()))
                lr.mul_(factor)
            else:
                self._lrs.append((group, lr))
                group["lr"] = lr * factor

    def _finish(self) -> None:
        """Put back what the pre-hook changed for one step: gradients held back, the user's lrs."""
        for param, grad in self._held:
            param.grad = grad
        for group, lr in self._lrs:
            if isinstance(lr, Tensor):
                group["lr"].copy_(lr)
            else:
                group["lr"] = lr
        self._held, self._lrs, self._clips = [], [], []
        self._applied = 1.0

    # -- events --------------------------------------------------------------------------------------

    def _name(self, param: Tensor, optimizer: torch.optim.Optimizer) -> str:
        name = self._names.get(id(param))
        if name is not None:
            return name
        for g, group in enumerate(optimizer.param_groups):
            for j, candidate in enumerate(group["params"]):
                if candidate is param:
                    return f"param_groups[{g}][{j}]"
        return "*"

    @staticmethod
    def _optimizer_step(optimizer: torch.optim.Optimizer) -> int:
        steps = [
            step_count(optimizer, p)
            for group in optimizer.param_groups
            for p in group["params"]
            if p in optimizer.state
        ]
        return int(max(steps)) if steps else 0

    def _emit(
        self, tensor: str, step: int, quantity: str, value: float, threshold: float, explanation: str, suggestion: str
    ) -> None:
        event = StabilityEvent(
            tensor, step, quantity, float(value), float(threshold), explanation, suggestion, 0, "guard"
        )
        self.events.append(event)
        announce(event, (event.tensor, event.quantity), self._last_warned, self.quiet_steps, self.warn, self.on_event)
