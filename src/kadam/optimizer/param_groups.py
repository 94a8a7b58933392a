"""Parameter groups that keep biases and normalization weights out of weight decay.

Decay pulls a weight towards zero. On a bias, or on the gain and shift of a normalization layer, that
pull has no regularizing role: it only biases the layer's output (and for a normalization gain it
fights the scale the layer exists to learn). The usual recipe, which users write by hand for AdamW and
which Hugging Face's ``Trainer`` applies by default, is two parameter groups; ``param_groups_for``
builds them for any optimizer that takes per-group ``weight_decay`` (``KAdam``, ``torch.optim.AdamW``).

For the scale-invariant weights in front of a normalization layer, decay is what sets the effective
learning rate (THEORY §4); those keep their decay here, since they are ordinary weights.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["is_normalization_layer", "param_groups_for"]

# torch's normalization layers; BatchNorm*, InstanceNorm* and SyncBatchNorm derive from _NormBase.
NORMALIZATION_LAYERS: tuple[type[nn.Module], ...] = (
    _NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)


def is_normalization_layer(module: nn.Module) -> bool:
    """True for torch's normalization layers and for any module whose class name ends in ``Norm``.

    The name rule covers the normalization layers that libraries define for themselves
    (``LlamaRMSNorm``, ``T5LayerNorm``, …), which do not derive from torch's classes.
    """
    return isinstance(module, NORMALIZATION_LAYERS) or type(module).__name__.endswith("Norm")


def param_groups_for(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups for ``model``: ``weight_decay`` on weights, 0 on biases and normalization weights.

    A parameter goes without decay when its own name ends in ``bias`` (``bias``, ``in_proj_bias``, …)
    or when it belongs directly to a normalization layer (:func:`is_normalization_layer`). A parameter
    shared by several modules (tied embeddings) appears once, under its first name. Frozen parameters
    are included, so that unfreezing them later needs no new group. An empty group is left out.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``,
        ready for ``KAdam(param_groups_for(model, 0.1), lr=...)``.

    Raises:
        ValueError: if ``weight_decay`` is not a finite number ≥ 0.
    """
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or not (math.isfinite(weight_decay) and weight_decay >= 0.0)
    ):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        normalization = is_normalization_layer(module)
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            (no_decay if normalization or name.endswith("bias") else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]
