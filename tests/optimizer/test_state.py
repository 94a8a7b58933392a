"""The public state accessor (kadam.optimizer.state): each level's m, v, step count, and the update the step applied."""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import pytest
import torch

from kadam import KAdam
from kadam.optimizer import level_states, level_updates, param_group_levels

LR, DECAY = 0.01, 0.1
SRC = Path(__file__).resolve().parents[2] / "src" / "kadam"


def _run(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int = 4) -> list[torch.Tensor]:
    """``steps`` steps on random gradients; returns the parameters before the last step."""
    before: list[torch.Tensor] = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        before = [p.detach().clone() for p in params]
        optimizer.step()
    return before


def _assert_update_is_the_steps(optimizer, params, before, decoupled: bool, maximize: bool = False) -> None:
    for param, previous in zip(params, before):
        update = level_updates(optimizer, param)[-1]
        shrunk = previous * (1 - LR * DECAY) if decoupled else previous
        torch.testing.assert_close(param.detach(), shrunk - LR * update, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("k", "norm", "path", "decoupled"),
    list(itertools.product([1, 2, 3], ["elementwise", "tensor"], ["loop", "foreach", "fused"], [True, False])),
)
def test_the_accessors_update_is_the_steps_on_every_path(k, norm, path, decoupled):
    torch.manual_seed(k)
    params = [torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(3))]
    optimizer = KAdam(
        params,
        lr=LR,
        k=k,
        norm=norm,
        weight_decay=DECAY,
        decoupled_weight_decay=decoupled,
        foreach=path == "foreach",
        fused=True if path == "fused" else False,
    )
    before = _run(optimizer, params)
    _assert_update_is_the_steps(optimizer, params, before, decoupled)
    states = level_states(optimizer, params[0])
    assert [s.index for s in states] == list(range(1, k + 1)) and all(s.step == 4 for s in states)
    assert states[0].level.norm == norm and (states[0].exp_avg_sq.dim() == 0) == (norm == "tensor")
    assert all(s.exp_avg is None for s in states[1:])  # the default meta levels keep no m (β = 0)
    assert states[0].bias_correction1 == pytest.approx(1 - 0.9**4)
    assert states[0].bias_correction2 == pytest.approx(1 - 0.999**4)


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (torch.optim.AdamW, {"foreach": False}),
        (torch.optim.AdamW, {"foreach": True}),
        (torch.optim.AdamW, {"fused": True}),
        (torch.optim.Adam, {"foreach": False}),
        (torch.optim.AdamW, {"amsgrad": True, "foreach": False}),
    ],
)
def test_the_accessor_reads_torchs_adam_and_adamw(cls, options):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 6))]
    optimizer = cls(params, lr=LR, weight_decay=DECAY, **options)
    before = _run(optimizer, params)
    decoupled = cls is torch.optim.AdamW
    if cls is torch.optim.Adam:  # L2 decay enters the moments, θ_n = θ_{n-1} − η u_n
        _assert_update_is_the_steps(optimizer, params, before, decoupled=False)
    else:
        _assert_update_is_the_steps(optimizer, params, before, decoupled)
    (state,) = level_states(optimizer, params[0])
    assert state.step == 4 and state.level.beta == 0.9 and state.level.gamma == 0.999
    assert param_group_levels(optimizer, optimizer.param_groups[0])[0] == state.level


def test_a_level_added_on_resume_counts_its_steps_from_the_resume():
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(6))]
    adamw = torch.optim.AdamW(params, lr=LR, weight_decay=DECAY)
    _run(adamw, params, steps=3)
    optimizer = KAdam(params, lr=LR, k=2, weight_decay=DECAY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer levels in the checkpoint: the new one starts fresh
        optimizer.load_state_dict(adamw.state_dict())
    before = _run(optimizer, params, steps=2)
    level1, level2 = level_states(optimizer, params[0])
    assert (level1.step, level2.step) == (5, 2)
    _assert_update_is_the_steps(optimizer, params, before, decoupled=True)


def test_before_the_first_step_there_is_no_state_and_a_stranger_is_refused():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = KAdam([param])
    assert level_states(optimizer, param) == [] and level_updates(optimizer, param) == []
    with pytest.raises(ValueError, match="not a parameter of this optimizer"):
        level_states(optimizer, torch.nn.Parameter(torch.ones(2)))
    with pytest.raises(ValueError, match="torch.optim.Adam, torch.optim.AdamW or kadam.KAdam"):
        param_group_levels(torch.optim.SGD([param], lr=0.1), {})


OWN_STATE = {"normalization/sphere.py"}
"""Modules that define an optimizer of their own and name its state."""


def test_no_module_outside_the_optimizer_spells_a_state_key():
    """Everything else reads Adam's, AdamW's and KAdam's state through kadam.optimizer.state (one place knows
    the keys)."""
    keys = re.compile(r"""["'](exp_avg(_sq)?(_\{?\w*\}?)?|max_exp_avg_sq|step_offset\w*)["']|f["']step_offset_""")
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in SRC.rglob("*.py")
        if "optimizer" not in path.relative_to(SRC).parts[:1] and path.relative_to(SRC).as_posix() not in OWN_STATE
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if keys.search(line)
    ]
    assert offenders == []
