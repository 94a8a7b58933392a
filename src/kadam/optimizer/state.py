r"""The optimizer's state, level by level, through one public accessor (THEORY §1).

A level of Adam, AdamW or k-Adam keeps, per parameter, a first moment :math:`m` (none where β = 0:
then :math:`m_n = x_n`, the level's input), a second moment :math:`v` (one scalar per tensor in tensor
mode) and a step count :math:`n`, and outputs

.. math::
    u_n = \frac{m_n / (1-\beta^n)}{\sqrt{v_n / (1-\gamma^n)} + \epsilon}.

:func:`level_states` returns these, after the last step, for a parameter of ``torch.optim.Adam``,
``torch.optim.AdamW`` (one level; AMSGrad's running maximum is the denominator's :math:`v`) or
:class:`kadam.KAdam` (k levels; level i ≥ 2 counts its steps from the step at which a resumed run added
it); :func:`level_updates` chains the levels' outputs, level k's being the update the step applied:
:math:`\theta_n = (1-\eta\lambda)\theta_{n-1} - \eta u^{(k)}_n` (decoupled decay). Code outside
:mod:`kadam.optimizer` reads the optimizer's state only through these, never by its keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kadam.optimizer.kadam import KAdam, _offset_key, state_keys
from kadam.optimizer.levels import group_levels
from kadam.vocabulary import Level

__all__ = ["LevelState", "level_states", "level_updates", "param_group_levels", "step_count"]

_HALF = (torch.float16, torch.bfloat16)


def param_group_levels(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> tuple[Level, ...]:
    """The levels that ``group`` of ``optimizer`` steps with, level 1 first: KAdam's k levels, or the one
    level of ``torch.optim.Adam``/``AdamW`` (and subclasses) from ``betas``/``eps``. Tensor-valued β, γ, ε
    are read as floats.

    Raises:
        ValueError: for another optimizer.
    """
    if isinstance(optimizer, KAdam):
        return tuple(Level(float(lv.beta), float(lv.gamma), float(lv.eps), lv.norm) for lv in group_levels(group))
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta, gamma = group["betas"]
        return (Level(float(beta), float(gamma), float(group["eps"]), "elementwise"),)
    raise ValueError(
        f"optimizer must be torch.optim.Adam, torch.optim.AdamW or kadam.KAdam, got {type(optimizer).__name__}"
    )


def step_count(optimizer: torch.optim.Optimizer, param: Tensor) -> float:
    """The optimizer's step count of ``param`` (its state's ``step``; 0 before the first step)."""
    step = optimizer.state.get(param, {}).get("step", 0.0)
    return float(step.item() if isinstance(step, Tensor) else step)


@dataclass(frozen=True)
class LevelState:
    """Level ``index`` (1-based) of one parameter after the last step.

    ``exp_avg`` is :math:`m` (``None`` where the level keeps none: β = 0 at level ≥ 2), ``exp_avg_sq`` the
    running :math:`v` (0-dim in tensor mode), ``max_exp_avg_sq`` AMSGrad's running maximum of it (``None``
    without AMSGrad), ``step`` the level's own step count n. The tensors are the optimizer's own (not copies):
    read them, do not write them.
    """

    index: int
    level: Level
    exp_avg: Tensor | None
    exp_avg_sq: Tensor
    step: float
    max_exp_avg_sq: Tensor | None = None

    @property
    def denominator_moment(self) -> Tensor:
        """The :math:`v` under the square root of the update: AMSGrad's maximum where there is one."""
        return self.exp_avg_sq if self.max_exp_avg_sq is None else self.max_exp_avg_sq

    @property
    def bias_correction1(self) -> float:
        """:math:`1 - \\beta^n`."""
        return 1.0 - self.level.beta**self.step

    @property
    def bias_correction2(self) -> float:
        """:math:`1 - \\gamma^n`."""
        return 1.0 - self.level.gamma**self.step

    def update(self, level_input: Tensor | None = None) -> Tensor:
        r""":math:`u_n` of this level (a new tensor, real view for complex parameters).

        ``level_input`` is :math:`x_n`, needed only where the level keeps no :math:`m` (β = 0: m = x). Moments
        kept in a 16-bit ``state_dtype`` are read in float32, as the step reads them.
        """
        first = self.exp_avg if self.exp_avg is not None else level_input
        if first is None:
            raise ValueError(f"level {self.index} keeps no first moment (beta = 0): pass its input x_n")
        second = self.denominator_moment
        if torch.is_complex(first):
            first = torch.view_as_real(first)
        if torch.is_complex(second):
            second = torch.view_as_real(second)
        if first.dtype in _HALF or second.dtype in _HALF:
            first, second = first.float(), second.float()
        denom = (second.sqrt() / math.sqrt(self.bias_correction2)).add_(self.level.eps)
        return torch.div(first, denom).div_(self.bias_correction1)


def level_states(optimizer: torch.optim.Optimizer, param: Tensor) -> list[LevelState]:
    """The state of every level of ``param`` after the last step, level 1 first (module docstring).

    Empty before the parameter's first step. Raises ``ValueError`` for an optimizer other than
    Adam, AdamW and KAdam, or a tensor the optimizer does not hold.
    """
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            break
    else:
        raise ValueError("param is not a parameter of this optimizer")
    levels = param_group_levels(optimizer, group)
    state = optimizer.state.get(param)
    if not state:
        return []
    count = step_count(optimizer, param)
    states = []
    for index, level in enumerate(levels, start=1):
        first, second = state_keys(index)
        maximum = state.get("max_exp_avg_sq") if index == 1 and group.get("amsgrad", False) else None
        offset = float(state.get(_offset_key(index), 0.0)) if isinstance(optimizer, KAdam) else 0.0
        states.append(LevelState(index, level, state.get(first), state[second], count - offset, maximum))
    return states


def level_updates(optimizer: torch.optim.Optimizer, param: Tensor) -> list[Tensor]:
    """Every level's output :math:`u^{(i)}_n` of ``param`` after the last step, chained as the step chains
    them; the last is the update the step applied (per unit learning rate). Empty before the first step."""
    updates: list[Tensor] = []
    for state in level_states(optimizer, param):
        updates.append(state.update(updates[-1] if updates else None))
    return updates
