"""One parser for KAdam's levels (issue 11): a group's keys mean what the constructor's arguments mean,
groups hold canonical per-level values that survive state_dict/deepcopy/pickle, ``step()`` only reads
them, and the unstable-level warning points at the user's line."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch

import kadam.optimizer.kadam as kadam_module
from kadam import KAdam
from kadam.flow import optimizer_levels
from kadam.optimizer.levels import Level, group_entries, group_levels, resolve_levels


def _param(seed: int = 0, shape=(3, 4)) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


def _train(optimizer: KAdam, params: list[torch.nn.Parameter], steps: int = 6) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        optimizer.step()
    return [param.detach().clone() for param in params]


# (constructor arguments, a group's overrides): the group means {**constructor, **overrides} as constructor
CASES = [
    (dict(k=2, eps=1e-8), dict(eps=1e-3)),  # the bug of issue 11: eps of level 2 stayed 1e-8
    (dict(k=3, eps=[1e-8, 1e-6, 1e-4]), dict(eps=1e-2)),
    (dict(k=2), dict(eps=[1e-3, 1e-5])),
    (dict(k=3, meta_betas=(0.5, 0.9)), dict(betas=(0.8, 0.99))),
    (dict(k=2, betas=(0.8, 0.99)), dict(betas=[(0.9, 0.999), (0.3, 0.95)])),
    (dict(k=2, meta_norm="elementwise"), dict(k=4)),
    (dict(k=2), dict(norm="tensor", meta_norm=["elementwise"])),
    (dict(k=3, norm=["tensor", "elementwise", "tensor"]), dict(k=3, eps=1e-4)),
    (dict(k=1), dict(k=3, meta_betas=[(0.0, 0.99), (0.5, 0.9)])),
]


@pytest.mark.parametrize("constructor,overrides", CASES)
def test_group_keys_mean_what_constructor_arguments_mean(constructor, overrides):
    alone = KAdam([_param(1)], lr=1e-2, **{**constructor, **overrides})
    in_group = KAdam([{"params": [_param(0)]}, {"params": [_param(1)], **overrides}], lr=1e-2, **constructor)
    added = KAdam([_param(0)], lr=1e-2, **constructor)
    added.add_param_group({"params": [_param(1)], **overrides})
    expected = group_levels(alone.param_groups[0])
    assert group_levels(in_group.param_groups[1]) == expected
    assert group_levels(added.param_groups[1]) == expected
    assert {key: in_group.param_groups[1][key] for key in group_entries(expected)} == group_entries(expected)
    reference = _train(alone, alone.param_groups[0]["params"])
    assert all(torch.equal(a, b) for a, b in zip(_train(in_group, in_group.param_groups[1]["params"]), reference))


def test_issue_example_gives_eps_to_every_level():
    p, q = _param(0), _param(1)
    optimizer = KAdam([{"params": [p]}, {"params": [q], "eps": 1e-3}], k=2, eps=1e-8)
    assert [level.eps for level in group_levels(optimizer.param_groups[1])] == [1e-3, 1e-3]
    assert [level.eps for level in group_levels(optimizer.param_groups[0])] == [1e-8, 1e-8]


def test_resolve_levels_spells_out_every_level():
    assert resolve_levels(k=3, eps=1e-6, meta_betas=[(0.0, 0.99), (0.5, 0.9)]) == (
        Level(0.9, 0.999, 1e-6, "elementwise"),
        Level(0.0, 0.99, 1e-6, "tensor"),
        Level(0.5, 0.9, 1e-6, "tensor"),
    )
    assert resolve_levels(k=2, eps=1e-6, meta_eps=1e-3)[1].eps == 1e-3


def _trained(**kwargs) -> tuple[KAdam, list[torch.nn.Parameter]]:
    params = [_param(0), _param(1, (5,))]
    optimizer = KAdam([{"params": params[:1]}, {"params": params[1:], "eps": 1e-4, "k": 3}], lr=1e-2, **kwargs)
    _train(optimizer, params, 3)
    return optimizer, params


def test_canonical_groups_round_trip_through_state_dict_deepcopy_and_pickle():
    optimizer, params = _trained(k=2, meta_betas=(0.5, 0.9))
    groups = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    loaded = KAdam(
        [{"params": [_param(0)]}, {"params": [_param(1, (5,))], "eps": 1e-4, "k": 3}],
        lr=1e-2,
        k=2,
        meta_betas=(0.5, 0.9),
    )
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    for copied in (loaded, copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert [
            {key: value for key, value in group.items() if key != "params"} for group in copied.param_groups
        ] == groups
    # A group read back from param_groups means the same levels when given to a new optimizer.
    again = KAdam([{**group, "params": [_param(i)]} for i, group in enumerate(optimizer.param_groups)], k=1, eps=0.5)
    assert [group_levels(group) for group in again.param_groups] == [group_levels(g) for g in optimizer.param_groups]


def _old_format_state_dict(optimizer: KAdam) -> dict:
    """The state dict as kadam wrote it before groups held canonical levels: levels 2..k given once."""
    state_dict = copy.deepcopy(optimizer.state_dict())
    for group in state_dict["param_groups"]:
        group["meta_betas"], group["meta_eps"], group["meta_norm"] = (0.0, 0.999), group["eps"], "tensor"
    return state_dict


def test_old_kadam_checkpoint_and_pickle_load_and_continue_identically():
    optimizer, _ = _trained()
    straight = copy.deepcopy(optimizer)
    expected = _train(straight, [p for group in straight.param_groups for p in group["params"]])
    old = _old_format_state_dict(optimizer)
    for load in ("state_dict", "setstate"):
        resumed = copy.deepcopy(optimizer)
        if load == "state_dict":
            resumed.load_state_dict(old)
        else:  # an optimizer pickled by an older version: __setstate__ sees its groups as they were
            resumed.__setstate__(
                {
                    "state": resumed.state,
                    "param_groups": [
                        {**group, "params": resumed.param_groups[i]["params"]}
                        for i, group in enumerate(old["param_groups"])
                    ],
                }
            )
        assert resumed.param_groups[0]["meta_betas"] == ((0.0, 0.999),)
        assert resumed.param_groups[1]["meta_eps"] == (1e-4, 1e-4)
        actual = _train(resumed, [p for group in resumed.param_groups for p in group["params"]])
        assert all(torch.equal(a, b) for a, b in zip(actual, expected))


def test_step_reads_levels_and_never_parses_them(monkeypatch):
    optimizer, params = _trained(k=2)

    def refuse(*args, **kwargs):
        raise AssertionError("step() parsed the level arguments again")

    monkeypatch.setattr(kadam_module, "resolve_levels", refuse)
    monkeypatch.setattr(kadam_module, "with_group_overrides", refuse)
    _train(optimizer, params, 2)


def test_schedulers_cycling_betas_drive_level_one():
    optimizer = KAdam([_param(0)], lr=1e-2, k=2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=10)
    _train(optimizer, optimizer.param_groups[0]["params"], 1)
    scheduler.step()
    assert group_levels(optimizer.param_groups[0])[0].beta == optimizer.param_groups[0]["betas"][0] != 0.9


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(k=2),
        dict(k=3, eps=[1e-8, 1e-6, 1e-4], meta_norm="elementwise"),
        dict(k=2, betas=[(0.9, 0.95), (0.5, 0.9)], norm="tensor"),
    ],
)
def test_flow_resolves_the_levels_the_optimizer_runs(kwargs, monkeypatch):
    expected = group_levels(KAdam([_param()], **kwargs).param_groups[0])

    def no_optimizer(*args, **kwargs):
        raise AssertionError("kadam.flow built an optimizer to read its levels")

    monkeypatch.setattr(KAdam, "__init__", no_optimizer)
    levels, options = optimizer_levels(lr=1e-2, **kwargs)
    assert levels == expected and options["lr"] == 1e-2


def test_unstable_warning_points_at_the_users_line():
    with pytest.warns(UserWarning, match="level 1") as record:
        KAdam([_param()], k=1, betas=(0.9, 0.5))
    assert record[0].filename == __file__
    optimizer = KAdam([_param()], k=1)
    with pytest.warns(UserWarning, match="level 2") as record:
        optimizer.add_param_group({"params": [_param(1)], "k": 2, "meta_betas": (0.99, 0.9)})
    assert record[0].filename == __file__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer_levels(k=1, betas=(0.9, 0.5))
    assert [w.filename for w in caught] == [__file__]
