"""The monitor's events and the thresholds that make a recorded value one (THEORY §7)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["StabilityEvent", "Thresholds"]


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
