"""The optimizers the experiments compare, by name (KAdam levels follow THEORY §1).

Level 1 is always (0.9, 0.999) elementwise unless stated:

- ``adam``: ``torch.optim.Adam`` (no weight decay); ``adamw``: ``torch.optim.AdamW`` (λ = 0.01).
- ``kadam2`` — *default strategy*, k = 2: level 2 is (β, γ) = (0, 0.999) in tensor mode, the level a
  normalization layer applies implicitly (THEORY §4); KAdam's defaults.
- ``kadam2-elementwise`` — *elementwise strategy*: as the default, but level 2 keeps one second moment per
  element.
- ``kadam2-naive`` — *naive strategy*: every level (0.9, 0.999) elementwise (Adam stacked on Adam).
- ``kadam2-momentum-last`` — *momentum only at the last level*: level 1 (0, 0.999) elementwise, level 2
  (0.9, 0.999) tensor mode; the momentum averages the normalized updates instead of the raw gradients.
- ``kadam3``, ``kadam3-elementwise``, ``kadam3-naive``, ``kadam3-momentum-last``: the same strategies at
  k = 3 (momentum-last has β = 0 on levels 1..2).

All KAdam variants use decoupled weight decay λ = 0.01 (AdamW's default), ε = 1e-8 at every level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kadam.optimizer import KAdam

__all__ = ["OPTIMIZERS", "WEIGHT_DECAY", "OptimizerSpec", "make_optimizer"]

WEIGHT_DECAY = 0.01
"""Decoupled weight decay of AdamW and every KAdam variant (AdamW's default)."""


@dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer configuration: ``build(params, lr)`` and a one-line description for the report."""

    description: str
    build: Callable[[Iterable[torch.nn.Parameter], float, tuple[float, float] | None], torch.optim.Optimizer]


def _kadam(k: int, strategy: str) -> OptimizerSpec:
    """KAdam with ``k`` levels under one per-level ``strategy`` (see the module docstring)."""
    first = (0.9, 0.999)
    if strategy == "default":
        description = f"{k}-Adam, levels ≥ 2 (0, 0.999) tensor mode"
        options: dict[str, Any] = {"betas": first, "meta_betas": (0.0, 0.999), "meta_norm": "tensor"}
    elif strategy == "elementwise":
        description = f"{k}-Adam, levels ≥ 2 (0, 0.999) elementwise"
        options = {"betas": first, "meta_betas": (0.0, 0.999), "meta_norm": "elementwise"}
    elif strategy == "naive":
        description = f"{k}-Adam, every level (0.9, 0.999) elementwise"
        options = {"betas": [first] * k, "norm": ["elementwise"] * k}
    elif strategy == "momentum-last":
        description = f"{k}-Adam, β = 0.9 at level {k} only (tensor), others (0, 0.999)"
        options = {"betas": [(0.0, 0.999)] * (k - 1) + [first], "norm": ["elementwise"] + ["tensor"] * (k - 1)}
    else:
        raise ValueError(f"strategy must be one of default, elementwise, naive, momentum-last; got {strategy!r}")

    def build(
        params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] | None
    ) -> torch.optim.Optimizer:
        chosen = dict(options)
        if betas is not None:  # replaces level 1's (β, γ) only
            chosen["betas"] = (
                [tuple(betas), *options["betas"][1:]] if isinstance(options["betas"], list) else tuple(betas)
            )
        return KAdam(params, lr=lr, k=k, weight_decay=WEIGHT_DECAY, **chosen)

    return OptimizerSpec(description, build)


OPTIMIZERS: Mapping[str, OptimizerSpec] = {
    "adam": OptimizerSpec(
        "torch Adam, (0.9, 0.999), no weight decay",
        lambda p, lr, betas: torch.optim.Adam(p, lr=lr, betas=betas or (0.9, 0.999)),
    ),
    "adamw": OptimizerSpec(
        f"torch AdamW, (0.9, 0.999), λ = {WEIGHT_DECAY}",
        lambda p, lr, betas: torch.optim.AdamW(p, lr=lr, betas=betas or (0.9, 0.999), weight_decay=WEIGHT_DECAY),
    ),
    "kadam2": _kadam(2, "default"),
    "kadam2-elementwise": _kadam(2, "elementwise"),
    "kadam2-naive": _kadam(2, "naive"),
    "kadam2-momentum-last": _kadam(2, "momentum-last"),
    "kadam3": _kadam(3, "default"),
    "kadam3-elementwise": _kadam(3, "elementwise"),
    "kadam3-naive": _kadam(3, "naive"),
    "kadam3-momentum-last": _kadam(3, "momentum-last"),
}
"""Optimizer name → :class:`OptimizerSpec`; the module docstring documents each strategy."""


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, betas: Sequence[float] | None = None
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (a key of ``OPTIMIZERS``) at a finite learning rate ``lr`` > 0.

    ``betas`` = (β, γ) replaces level 1's pair (for a (β, γ) sweep); None keeps the documented one.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    return OPTIMIZERS[name].build(params, lr, None if betas is None else (float(betas[0]), float(betas[1])))
