"""The monitor's events and the thresholds that make a recorded value one (THEORY §7)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from kadam import stability

__all__ = ["StabilityEvent", "Thresholds", "announce", "reporting_rank"]

logger = logging.getLogger("kadam.monitor")


@dataclass(frozen=True)
class StabilityEvent:
    """One threshold crossing: which tensor, at which optimizer step, what was measured against what.

    ``source`` is ``"theory"`` when the threshold is a theorem (the region, the bound, the edge of
    stability), ``"argument"`` when it is a :class:`Thresholds` setting and ``"guard"`` for an action of
    :class:`~kadam.monitor.StabilityGuard`. ``level`` is the normalization level (1-based; 0 for quantities
    of the whole tensor or model). :attr:`kind` tells a check of the configuration (the region, checked
    when attached and when a group's (β, γ) changes) from a warning about the running training.
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

    @property
    def kind(self) -> str:
        """``"configuration"`` for the region check (``quantity == "gamma"``), ``"guard"`` for a guard's
        action, else ``"running"``."""
        if self.quantity == "gamma":
            return "configuration"
        return "guard" if self.source == "guard" else "running"


@dataclass(frozen=True)
class Thresholds:
    """When a recorded value becomes an event (None switches a check off).

    From the theory (do not tune): ``bound_ratio`` (1: :math:`\\max|u_n| \\le B_n` always holds, up to
    ``bound_tolerance`` of float rounding), ``edge_ratio`` and ``sharpness_ratio`` when on (1: the adaptive edge
    of stability :math:`(2+2\\beta)/(1-\\beta)`, THEORY §7). By argument: which running checks are on and their
    thresholds are the choice of ``kadam.experiments.monitor.analysis.choose_thresholds`` (the most failures
    caught among settings that warn at most 5% of healthy runs) on the development runs of the validation
    protocol in ``kadam.experiments.monitor``, whose fresh held-out runs score them
    (``results/monitor-study``):

    Attributes:
        edge_ratio: the secant curvature along the update (:func:`kadam.monitor.rules.secant_curvature`,
            from two consecutive steps' gradients, no extra computation of the model) above this multiple of
            the edge of stability for ``edge_patience`` recorded steps in a row, from step ``edge_after`` on,
            is an event, and :attr:`StabilityMonitor.above_edge` is True while it lasts. Off (None) by default:
            with mini-batch gradients :math:`\\Delta g` is mostly the change of the gradient noise, and the check
            added no caught failure on the development runs; set 1.0 to turn it on (and with it the guard's
            ``lower_lr``). The curvature is recorded either way.
        grad_growth: the global gradient norm above this multiple of the median of its last ``grad_window``
            recorded values.
        loss_growth: the loss handed to :meth:`StabilityMonitor.observe_loss` (the Hugging Face and Lightning
            callbacks hand it over) above this multiple of the median of its last ``loss_window`` values; without
            a loss the check is silent.
        update_ratio: the largest per-tensor update/parameter ratio :math:`|\\theta_n - \\theta_{n-1}|/|\\theta_{n-1}|`
            at a recorded step above this value.
        update_rise: that ratio above this multiple of its smallest value at the recorded steps before (from the
            ``update_rise_after``-th recorded step on): Adam's update is about lr per coordinate whatever the
            gradient's scale, so the ratio falls as a healthy run's weights settle and rises with the learning rate
            or with an update that grows.
        update_after: both update-ratio checks read recorded steps from this optimizer step on: the first
            steps move a tensor initialised at zero (a bias) by its whole norm.
        nonfinite: a NaN or infinite gradient norm or loss is an event.
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
    edge_ratio: float | None = None
    edge_patience: int = 5
    edge_after: int = 10
    grad_growth: float | None = None
    grad_window: int = 20
    loss_growth: float | None = 3.0
    loss_window: int = 20
    update_ratio: float | None = None
    update_rise: float | None = 5.0
    update_rise_after: int = 3
    update_after: int = 10
    nonfinite: bool = True
    near_bound: float | None = None
    spike_factor: float | None = None
    spike_after: int = 100
    cosine: float | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "nonfinite":
                if not isinstance(value, bool):
                    raise ValueError(f"Thresholds.nonfinite must be True or False, got {value!r}")
                continue
            if value is not None and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ):
                raise ValueError(f"Thresholds.{field.name} must be a finite number or None, got {value!r}")
        for name in ("edge_patience", "grad_window", "loss_window", "update_rise_after", "update_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Thresholds.{name} must be an integer >= 1, got {value!r}")
        for name in (
            "bound_ratio",
            "sharpness_ratio",
            "edge_ratio",
            "grad_growth",
            "loss_growth",
            "update_ratio",
            "update_rise",
            "near_bound",
            "spike_factor",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Thresholds.{name} must be > 0, got {value!r}")
        if self.cosine is not None and not -1.0 <= self.cosine <= 1.0:
            raise ValueError(f"Thresholds.cosine must lie in [-1, 1], got {self.cosine!r}")


def reporting_rank() -> bool:
    """Whether this process reports events: always without ``torch.distributed``, else rank 0 only."""
    import torch

    distributed = torch.distributed
    return not (distributed.is_available() and distributed.is_initialized()) or distributed.get_rank() == 0


def announce(
    event: StabilityEvent,
    key: Hashable,
    last_warned: dict[Hashable, int],
    quiet_steps: int,
    warn: bool,
    on_event: Callable[[StabilityEvent], None] | None,
) -> None:
    """Report ``event`` on the reporting rank: to ``on_event`` always, and to ``warnings`` (a
    :class:`kadam.stability.StabilityWarning` at the user's line) and the ``kadam.monitor`` logger at most once
    per ``quiet_steps`` optimizer steps for each ``key`` (``last_warned`` keeps the step of each key's last one)."""
    if not reporting_rank():
        return
    if on_event is not None:
        on_event(event)
    last = last_warned.get(key)
    if last is not None and event.step - last < quiet_steps:
        return
    last_warned[key] = event.step
    if warn:
        message = event.message()
        stability.warn_at_user(message)
        logger.warning(message)
