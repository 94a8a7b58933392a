r"""The monitor's running checks as small state machines, fed one recorded value at a time (THEORY §7).

:class:`~kadam.monitor.StabilityMonitor` feeds them live; the validation protocol
(:mod:`kadam.experiments.monitor`) replays recorded series through the same classes, so the checks it
scores are the ones users get.

- :class:`EdgeCheck`: the secant curvature along the update (:func:`secant_curvature`) held against the
  adaptive edge of stability :math:`(2+2\beta)/(1-\beta)` (THEORY §7), ``patience`` recorded steps in a row;
- :class:`GrowthCheck`: a value above ``factor`` times the median of its last ``window`` recorded values
  (the gradient norm, the loss);
- :class:`RiseCheck`: a value above ``factor`` times its running minimum (the update/parameter ratio, which
  falls as a healthy run settles and rises with the learning rate or a growing update);
- :func:`non_finite`: a NaN or infinite value (gradient, loss).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["EdgeCheck", "GrowthCheck", "RiseCheck", "non_finite", "secant_curvature"]


def secant_curvature(inner: float, weighted: float) -> float:
    r"""The preconditioned curvature along step n, :math:`\langle \Delta g, \Delta\theta\rangle /
    \langle \Delta\theta, P \Delta\theta\rangle` with :math:`P = \mathrm{diag}(\sqrt{\hat v_n} + \epsilon)/\eta`.

    ``inner`` is :math:`\langle g_n - g_{n-1}, \theta_n - \theta_{n-1}\rangle` and ``weighted``
    :math:`\sum_j (\sqrt{\hat v_{n,j}} + \epsilon)(\theta_{n,j} - \theta_{n-1,j})^2 / \eta`. On a quadratic with
    Hessian H, :math:`\Delta g = H \Delta\theta` and this is the Rayleigh quotient of :math:`P^{-1}H` at
    :math:`\Delta\theta`, at most :math:`\lambda_{\max}(P^{-1}H)`: above the edge of stability, so is the
    sharpness. With mini-batch gradients :math:`\Delta g` also holds the change of the gradient noise. NaN
    when ``weighted`` is not positive.
    """
    return inner / weighted if weighted > 0 and math.isfinite(weighted) else math.nan


def non_finite(value: float) -> bool:
    """Whether ``value`` is NaN or infinite."""
    return not math.isfinite(value)


@dataclass
class EdgeCheck:
    """Fires when the curvature has been above ``ratio`` × the edge for ``patience`` consecutive recorded
    steps from optimizer step ``after`` on; a NaN estimate (no previous gradient) leaves the count as it is.

    ``update(step, curvature, edge)`` returns whether the check fires at this step; :attr:`above` tells
    whether the run sits above the edge now (the streak is at least ``patience``).
    """

    ratio: float = 1.0
    patience: int = 2
    after: int = 10
    streak: int = 0

    def update(self, step: int, curvature: float, edge: float) -> bool:
        if math.isnan(curvature) or math.isnan(edge):
            return False
        if step >= self.after and curvature > self.ratio * edge:
            self.streak += 1
        else:
            self.streak = 0
        return self.streak >= self.patience

    @property
    def above(self) -> bool:
        return self.streak >= self.patience


@dataclass
class GrowthCheck:
    """Fires when a value exceeds ``factor`` × the median of the previous ``window`` finite values (none
    fires before ``window`` values have been seen). Non-finite values are not added to the window."""

    factor: float
    window: int = 20
    history: deque[float] = field(default_factory=deque)

    def update(self, value: float) -> bool:
        fires = False
        if len(self.history) >= self.window and math.isfinite(value):
            ordered = sorted(self.history)
            middle = len(ordered) // 2
            median = ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
            fires = value > self.factor * median
        if math.isfinite(value):
            self.history.append(value)
            while len(self.history) > self.window:
                self.history.popleft()
        return fires

    def replay(self, values: Iterable[float]) -> list[bool]:
        """:meth:`update` over ``values`` in order."""
        return [self.update(value) for value in values]


@dataclass
class RiseCheck:
    """Fires when a value exceeds ``factor`` × the smallest finite value seen before it, once ``after`` values
    have been seen. Non-finite values are not added."""

    factor: float
    after: int = 3
    seen: int = 0
    minimum: float = math.inf

    def update(self, value: float) -> bool:
        fires = self.seen >= self.after and math.isfinite(value) and value > self.factor * self.minimum
        if math.isfinite(value):
            self.seen += 1
            self.minimum = min(self.minimum, value)
        return fires
