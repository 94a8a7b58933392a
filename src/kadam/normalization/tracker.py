r"""Record norms, updates and angular updates of chosen tensors through an optimizer's step hooks.

:class:`NormTracker` registers a step pre-hook and a step post-hook on any ``torch.optim.Optimizer``.
At recorded steps the pre-hook keeps a copy of each tracked tensor ``W_{n−1}`` and the learning rate η and
weight decay λ of its parameter group; the post-hook reads ``W_n`` and computes, per tensor (THEORY §4):

- ``norm``: ``|W_n|``;
- ``update_norm``: ``|u_n|`` where ``u_n`` is the applied update divided by η with decoupled weight decay's
  shrink removed, so that ``W_n = (1 − ηλ) W_{n−1} − η u_n`` holds exactly (``u_n = (W_{n−1} − W_n)/η``
  for optimizers with coupled or no decay);
- ``inner``: ``⟨W_{n−1}, u_n⟩``, the cross term of THEORY §4;
- ``angular_update``: the angle between ``W_{n−1}`` and ``W_n``, ``atan2(|δ_⊥|, |W_{n−1}| + δ_∥)`` with
  ``δ = W_n − W_{n−1}`` split along and across ``W_{n−1}`` (accurate for small angles, unlike ``acos`` of
  the cosine);
- ``effective_lr``: ``η/|W_{n−1}|``, the rate at which step n moved the direction.

Per tensor and recorded step the cost is one copy, one subtraction and three dot products
(``|W_{n−1}|²``, ``⟨W_{n−1}, δ⟩``, ``|δ|²``), in the tensor's own dtype; results are kept as float64. In
float32, ``|u|`` and ``⟨W, u⟩`` lose relative accuracy when ``η|u|`` is far below ``ηλ|W|``
(cancellation, as in any recomputation of u from the weights). Between recorded steps the hooks only
count. The statistics stay on the tensors' device until :meth:`NormTracker.history` is called (no host
synchronisation per step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kadam.optimizer.hooks import StepHooks, named_tensors

__all__ = ["NormTracker", "step_statistics", "uses_decoupled_weight_decay"]

STATISTICS = ("norm", "update_norm", "inner", "angular_update", "effective_lr")


def step_statistics(before: Tensor, after: Tensor, lr: float, weight_decay: float) -> Tensor:
    r"""``norm, update_norm, inner, angular_update, effective_lr`` of one step (module docstring), last axis.

    ``before``/``after`` are ``W_{n−1}``/``W_n`` with the elements along the last axis (leading axes: several
    tensors at once); ``weight_decay`` is the decoupled λ (0 for coupled or none). Three dot products of
    ``a = W_{n−1}`` and ``δ = W_n − W_{n−1}`` give everything: ``ηu = −(ηλa + δ)``,
    ``|W_n|² = |a|² + 2⟨a,δ⟩ + |δ|²``, and the angle ``atan2(|δ_⊥|, |a| + δ_∥)`` from δ's parts across and
    along a, with ``|δ_⊥|² = |δ|² − ⟨a,δ⟩²/|a|²``. Returns a tensor of shape ``(..., 5)``.
    """
    change = after - before
    aa = torch.linalg.vecdot(before, before)
    ad = torch.linalg.vecdot(before, change)
    dd = torch.linalg.vecdot(change, change)
    decay = lr * weight_decay
    norm_before = torch.sqrt(aa)
    across = torch.sqrt(torch.clamp(dd - ad * ad / aa, min=0.0))
    return torch.stack(
        [
            torch.sqrt(aa + 2 * ad + dd),
            torch.sqrt(torch.clamp(decay * decay * aa + 2 * decay * ad + dd, min=0.0)) / lr,
            -(decay * aa + ad) / lr,
            torch.atan2(across, norm_before + ad / norm_before),
            lr / norm_before,
        ],
        dim=-1,
    )


def uses_decoupled_weight_decay(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> bool:
    """Whether ``group`` of ``optimizer`` shrinks weights by ``(1 − ηλ)`` outside the update (AdamW-style).

    True for ``torch.optim.AdamW`` and for any group with ``decoupled_weight_decay=True`` (``KAdam``,
    ``torch.optim.Adam`` in recent torch); False otherwise (SGD, Adam with L2, no decay).
    """
    return bool(group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)))


class NormTracker(StepHooks):
    r"""Per-tensor norm, update, cross term, angular update and effective LR of an optimizer's steps.

    Args:
        optimizer: any ``torch.optim.Optimizer``; the hooks attach to it on construction.
        tensors: the tensors to follow: a module (all its parameters), a mapping or an iterable of
            ``(name, parameter)`` pairs (e.g. a filtered ``model.named_parameters()``); each must be in one
            of the optimizer's groups.
        every: record every ``every``-th step (1 = each step), counting the optimizer's steps from the
            tracker's construction; steps n with ``n % every == 0`` are recorded.
        decoupled_weight_decay: whether the optimizer applies ``(1 − ηλ)`` outside its update; ``None``
            infers it per group with :func:`uses_decoupled_weight_decay`.

    Use as a context manager or call :meth:`remove` to take the hooks off. See the module docstring for the
    definitions (THEORY §4).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        tensors: nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
        every: int = 1,
        decoupled_weight_decay: bool | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        named = named_tensors(tensors, "tensors")
        if not named:
            raise ValueError("tensors must name at least one tensor to track")
        group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        for name, tensor in named:
            if id(tensor) not in group_of:
                raise ValueError(f"tensors: {name!r} is not a parameter of the optimizer")
        self.names: tuple[str, ...] = tuple(name for name, _ in named)
        self._tensors = [tensor for _, tensor in named]
        self._groups = [group_of[id(tensor)] for tensor in self._tensors]
        self._optimizer = optimizer
        self._decoupled = decoupled_weight_decay
        self.every = every
        self._step = 0
        self._before: list[Tensor] | None = None
        self._hyper: list[tuple[float, float]] = []
        self._steps: list[int] = []
        self._records: list[Tensor] = []
        self._attach(optimizer)

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._step += 1
        if self._step % self.every:
            return
        self._before = [tensor.detach().clone() for tensor in self._tensors]
        self._hyper = []
        for group in self._groups:
            decoupled = (
                self._decoupled if self._decoupled is not None else uses_decoupled_weight_decay(optimizer, group)
            )
            lr = float(group["lr"])
            self._hyper.append((lr, float(group.get("weight_decay", 0.0)) if decoupled else 0.0))

    @torch.no_grad()
    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._before is None:
            return
        rows = [
            step_statistics(before.reshape(-1), tensor.detach().reshape(-1), lr, weight_decay).double()
            for before, tensor, (lr, weight_decay) in zip(self._before, self._tensors, self._hyper)
        ]
        self._records.append(torch.stack(rows))
        self._steps.append(self._step)
        self._before = None

    def history(self) -> dict[str, Any]:
        """Everything recorded: ``{"steps": array (R,), "names": [...], stat: {name: array (R,)}}``.

        ``stat`` runs over ``norm``, ``update_norm``, ``inner``, ``angular_update``, ``effective_lr``
        (module docstring); R is the number of recorded steps.
        """
        table = (
            torch.stack(self._records).cpu().numpy()
            if self._records
            else np.zeros((0, len(self.names), len(STATISTICS)))
        )
        result: dict[str, Any] = {"steps": np.asarray(self._steps, dtype=np.int64), "names": list(self.names)}
        for index, statistic in enumerate(STATISTICS):
            result[statistic] = {name: table[:, j, index].copy() for j, name in enumerate(self.names)}
        return result

    def initial_norms(self) -> dict[str, float]:
        """``|W|`` of each tracked tensor now (call before training for the trajectories' start)."""
        return {
            name: math.sqrt(float(torch.sum(t.detach().double() ** 2))) for name, t in zip(self.names, self._tensors)
        }
