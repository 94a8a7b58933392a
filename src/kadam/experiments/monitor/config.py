"""Sizes of the monitor section per profile (one frozen dataclass, one instance per profile)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MonitorConfig:
    """What the monitor section runs.

    ``tasks`` maps a task of ``kadam.experiments.workloads`` to its model sizes; each task runs every knob of
    ``knobs`` that applies to it (``protocol.KNOB_TASKS``), both arms, for ``seeds`` seeds, for
    ``steps`` steps of ``batch_size``. ``sharpness_lrs`` are the learning rates of the sharpness question
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


_CHAR_TINY = {"corpus_chars": 30_000, "context": 16, "width": 32, "heads": 2, "layers": 1}
_CHAR_SMALL = {"corpus_chars": 100_000, "context": 32, "width": 64, "heads": 4, "layers": 2}

_WARMUP_SMALL = {"failing": {"lr": 0.03, "warmup": 0}, "healthy": {"lr": 0.03, "warmup": 50}}
"""The warmup knob for the larger transformer: at the quick profile's 0.1 it trains badly with a warmup too (final
loss 3.09–3.10, barely below the character frequencies' 3.22); at 0.03 a warmup matters (seed 1: 1.73 with it,
1.88 without), at 0.01 it does not (1.51, 1.48)."""

PROFILES: dict[str, MonitorConfig] = {
    "smoke": MonitorConfig(tasks={"mnist1d-mlp": {"hidden": 32, "depth": 1}}, knobs=("lr",), seeds=(1,),
                           steps=60, batch_size=16),
    "quick": MonitorConfig(tasks={"char-transformer": _CHAR_TINY, "mnist1d-mlp": {"hidden": 64, "depth": 2}},
                           knobs=("lr", "ramp", "region", "warmup", "silence"), seeds=(1, 2, 3), steps=100, batch_size=16,
                           sharpness_lrs=(1e-3, 1e-2, 1e-1), sharpness_steps=100, sharpness_every=20,
                           sharpness_iterations=8, sharpness_sizes=_CHAR_TINY),
    "full": MonitorConfig(tasks={"char-transformer": _CHAR_SMALL, "mnist1d-mlp": {"hidden": 128, "depth": 2}},
                          knobs=("lr", "ramp", "region", "warmup", "silence"), seeds=(1, 2, 3, 4, 5), steps=600, batch_size=32,
                          sharpness_lrs=(1e-3, 3e-3, 1e-2), sharpness_steps=1000, sharpness_every=25,
                          sharpness_iterations=20, sharpness_sizes=_CHAR_SMALL,
                          knob_settings={"warmup": _WARMUP_SMALL}),
}
"""smoke: one pair of runs; quick: 42 runs (21 failing-arm, 21 healthy-arm: 7 task–knob settings × 3 seeds) of 100
steps and three short sharpness runs; full: 70 runs (35 failing-arm: at least 20 that go wrong, as issue 13 asks) of 600 steps on larger
models and the sharpness question over 1000 steps."""
