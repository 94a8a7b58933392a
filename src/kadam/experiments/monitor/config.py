"""The monitor section's configuration type; its value per profile is in :mod:`kadam.experiments.profiles`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MonitorConfig"]


@dataclass(frozen=True)
class MonitorConfig:
    """What the monitor section runs.

    ``tasks`` maps a task of ``kadam.experiments.workloads`` to its model sizes; each task runs every knob of
    ``knobs`` that applies to it (``protocol.KNOB_TASKS``), both arms, for ``seeds`` seeds, for
    ``steps`` steps of ``batch_size``. ``sharpness_lrs`` are the learning rates of the sharpness runs
    (none: skipped), each run for ``sharpness_steps`` steps with an estimate every ``sharpness_every``
    steps of ``sharpness_iterations`` Lanczos steps. ``knob_settings`` replaces a knob's arms in
    ``protocol.KNOBS`` where this profile's models need other values.
    """

    tasks: dict[str, dict[str, Any]]
    knobs: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    batch_size: int
    sharpness_lrs: tuple[float, ...] = ()
    sharpness_steps: int = 0
    sharpness_every: int = 10
    sharpness_iterations: int = 10
    sharpness_sizes: dict[str, Any] = field(default_factory=dict)
    knob_settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
