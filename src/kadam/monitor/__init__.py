r"""A stability monitor for a live Adam, AdamW or k-Adam run: THEORY §7's quantities, with events.

- :class:`StabilityMonitor` (:mod:`kadam.monitor.monitor`) attaches to an optimizer's step hooks and
  records, per tensor and level, the update against its exact bound, the spike factor, cosines, update
  ratios and, optionally, the preconditioned sharpness against the adaptive edge of stability;
- :class:`StabilityEvent` and :class:`Thresholds` (:mod:`kadam.monitor.events`): when a value is an event;
- :class:`MonitorHistory` and :func:`read_log` (:mod:`kadam.monitor.history`): what was recorded, as CSV;
- :func:`preconditioned_sharpness` (:mod:`kadam.monitor.sharpness`): Lanczos on Hessian-vector products;
- ``HuggingFaceMonitorCallback`` and ``LightningMonitorCallback`` (:mod:`kadam.monitor.callbacks`),
  created on first access so that importing this package needs neither framework.

The region check's numbers and the warning category are :mod:`kadam.stability`'s
(:class:`kadam.stability.StabilityWarning`, re-exported here).
"""

from __future__ import annotations

from typing import Any

from kadam.monitor.events import StabilityEvent, Thresholds
from kadam.monitor.guard import StabilityGuard
from kadam.monitor.history import MonitorHistory, read_log
from kadam.monitor.monitor import StabilityMonitor
from kadam.monitor.sharpness import preconditioned_sharpness
from kadam.stability import StabilityWarning

__all__ = [
    "HuggingFaceMonitorCallback",
    "LightningMonitorCallback",
    "MonitorHistory",
    "StabilityEvent",
    "StabilityGuard",
    "StabilityMonitor",
    "StabilityWarning",
    "Thresholds",
    "preconditioned_sharpness",
    "read_log",
]

_CALLBACKS = ("HuggingFaceMonitorCallback", "LightningMonitorCallback")


def __getattr__(name: str) -> Any:
    if name in _CALLBACKS:
        from kadam.monitor.callbacks import callback_class

        value = callback_class(name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
