"""Checkpoints: exact resume, AdamW → k-Adam resume with fresh levels, and refused loads (issue 2)."""

import copy
import io
import re
import warnings

import numpy as np
import pytest
import torch

from kadam import KAdam
from tests.optimizer.helpers import flat, make_mlp, train
from tests.optimizer.reference import reference_kadam


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("meta_norm", ["tensor", "elementwise"])
def test_resume_is_bitwise(foreach, meta_norm):
    kwargs = dict(lr=1e-2, k=3, meta_norm=meta_norm, meta_betas=(0.5, 0.99), foreach=foreach)
    straight_model = make_mlp()
    straight = KAdam(straight_model.parameters(), **kwargs)
    train(straight_model, straight, 50)
    expected = train(straight_model, straight, 50, seed=2)

    first_model = make_mlp()
    first = KAdam(first_model.parameters(), **kwargs)
    train(first_model, first, 50)
    model_state, optimizer_state = _roundtrip(first_model.state_dict()), _roundtrip(first.state_dict())

    resumed_model = make_mlp(seed=123)
    resumed_model.load_state_dict(model_state)
    resumed = KAdam(resumed_model.parameters(), **kwargs)
    resumed.load_state_dict(optimizer_state)
    assert torch.equal(train(resumed_model, resumed, 50, seed=2), expected)


def test_adamw_checkpoint_resumes_as_two_adam_with_fresh_levels():
    """The new level starts from zero and its bias correction counts from the resume (step 30 → 1)."""
    rng = np.random.default_rng(0)
    theta0 = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    gradients = [[rng.standard_normal(t.shape) for t in theta0] for _ in range(60)]
    params = [torch.nn.Parameter(torch.tensor(t)) for t in theta0]
    adamw = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for n in range(30):
        for p, g in zip(params, gradients[n]):
            p.grad = torch.tensor(g)
        adamw.step()
    checkpoint = _roundtrip(adamw.state_dict())
    level1_state = [
        [
            (checkpoint["state"][i]["exp_avg"].numpy().copy(), checkpoint["state"][i]["exp_avg_sq"].numpy().copy()),
            (np.zeros_like(t), np.zeros(())),
        ]
        for i, t in enumerate(theta0)
    ]
    theta30 = [p.detach().numpy().copy() for p in params]

    two_adam = KAdam(params, lr=1e-2, weight_decay=0.1, k=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        two_adam.load_state_dict(checkpoint)
    assert len([w for w in caught if "fewer levels" in str(w.message)]) == 1
    for n in range(30, 60):
        for p, g in zip(params, gradients[n]):
            p.grad = torch.tensor(g)
        two_adam.step()

    # Reference: level 1 continues from step 30; level 2 counts its own steps from the resume.
    expected = reference_kadam(
        theta30,
        lambda n, _: gradients[29 + n],
        30,
        lr=1e-2,
        weight_decay=0.1,
        levels=[(0.9, 0.999, 1e-8, "elementwise"), (0.0, 0.999, 1e-8, "tensor")],
        start_steps=[-30, 0],
        initial_state=level1_state,
    )
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-10, atol=1e-12)
    # and the offset survives a save/load of the resumed optimizer
    again = KAdam(params, lr=1e-2, weight_decay=0.1, k=2)
    again.load_state_dict(_roundtrip(two_adam.state_dict()))
    assert again.state[params[0]]["step_offset_2"] == 30.0


def _state_snapshot(optimizer):
    return copy.deepcopy(optimizer.state_dict())


@pytest.mark.parametrize(
    "saved_kwargs,loading_kwargs,message",
    [
        (dict(k=3), dict(k=2), "3 levels"),
        (dict(k=2, meta_norm="elementwise"), dict(k=2, meta_norm="tensor"), "elementwise mode"),
        (dict(k=1, norm="tensor"), dict(k=2), "tensor mode"),
    ],
)
def test_incompatible_checkpoint_is_refused_and_changes_nothing(saved_kwargs, loading_kwargs, message):
    saved_model = make_mlp()
    saved = KAdam(saved_model.parameters(), lr=1e-2, **saved_kwargs)
    train(saved_model, saved, 5)
    model = make_mlp()
    optimizer = KAdam(model.parameters(), lr=3e-3, **loading_kwargs)
    train(model, optimizer, 3)
    before = _state_snapshot(optimizer)
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(_roundtrip(saved.state_dict()))
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for key, state in before["state"].items():
        for name, value in state.items():
            assert torch.equal(after["state"][key][name], value)


def test_amsgrad_checkpoint_is_refused():
    model = make_mlp()
    adam = torch.optim.Adam(model.parameters(), amsgrad=True)
    train(model, adam, 2)
    with pytest.raises(ValueError, match="AMSGrad"):
        KAdam(model.parameters()).load_state_dict(adam.state_dict())


def test_state_dict_is_deterministic_and_loads_weights_only():
    model = make_mlp()
    optimizer = KAdam(model.parameters(), lr=1e-2, k=2)
    train(model, optimizer, 4)
    first, second = _roundtrip(optimizer.state_dict()), _roundtrip(optimizer.state_dict())
    assert first["param_groups"] == second["param_groups"]
    assert first["state"].keys() == second["state"].keys()
    assert all(
        torch.equal(first["state"][i][n], second["state"][i][n]) for i in first["state"] for n in first["state"][i]
    )
    assert flat(model).isfinite().all()


IMPLEMENTATIONS = [{"foreach": False}, {"foreach": True}, {"fused": True}]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=["loop", "foreach", "fused"])
def test_checkpoint_with_plain_number_steps_keeps_counting(implementation):
    """Older torch saved ``step`` as a Python number; __setstate__ turns it back into a tensor, as Adam's does."""
    straight_model = make_mlp()
    straight = torch.optim.AdamW(straight_model.parameters(), lr=1e-2)
    train(straight_model, straight, 3)
    checkpoint = copy.deepcopy(straight.state_dict())
    for state in checkpoint["state"].values():
        state["step"] = int(state["step"].item())
    model = make_mlp()
    model.load_state_dict(straight_model.state_dict())
    optimizer = KAdam(model.parameters(), lr=1e-2, k=1, **implementation)
    optimizer.load_state_dict(checkpoint)
    expected = train(straight_model, straight, 5, seed=2)
    actual = train(model, optimizer, 5, seed=2)
    assert all(state["step"].item() == 8 for state in optimizer.state.values())
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


def test_checkpoint_without_decoupled_weight_decay_keeps_this_optimizers_choice():
    """Adam/AdamW checkpoints of older torch have no ``decoupled_weight_decay`` key."""
    straight_model = make_mlp()
    straight = torch.optim.AdamW(straight_model.parameters(), lr=1e-2, weight_decay=0.1)
    train(straight_model, straight, 3)
    checkpoint = copy.deepcopy(straight.state_dict())
    for group in checkpoint["param_groups"]:
        del group["decoupled_weight_decay"]
    model = make_mlp()
    model.load_state_dict(straight_model.state_dict())
    optimizer = KAdam(model.parameters(), lr=1e-2, weight_decay=0.1, k=1)
    optimizer.load_state_dict(checkpoint)
    assert optimizer.param_groups[0]["decoupled_weight_decay"] is True
    assert torch.equal(train(model, optimizer, 4, seed=2), train(straight_model, straight, 4, seed=2))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=["loop", "foreach", "fused"])
def test_default_state_is_adamw_state_plus_one_scalar_per_tensor_and_level(implementation):
    """Level 2's default beta1 = 0 makes m = x: no exp_avg_2 is kept (issue 16)."""
    model, adamw_model = make_mlp(), make_mlp()
    optimizer = KAdam(model.parameters(), lr=1e-2, **implementation)
    adamw = torch.optim.AdamW(adamw_model.parameters(), lr=1e-2)
    train(model, optimizer, 3)
    train(adamw_model, adamw, 3)
    for param, adamw_param in zip(model.parameters(), adamw_model.parameters()):
        state, adamw_state = optimizer.state[param], adamw.state[adamw_param]
        assert set(state) == {*adamw_state, "exp_avg_sq_2"}
        assert state["exp_avg_sq_2"].dim() == 0
    model3 = make_mlp()
    level3 = KAdam(model3.parameters(), k=3, meta_betas=[(0.0, 0.999), (0.5, 0.99)], **implementation)
    train(model3, level3, 2)
    assert {"exp_avg_sq_2", "exp_avg_3", "exp_avg_sq_3"} <= set(level3.state[model3[0].weight])
    assert "exp_avg_2" not in level3.state[model3[0].weight]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=["loop", "foreach", "fused"])
def test_checkpoint_that_keeps_the_unneeded_first_moment_loads_and_matches_the_reference(implementation):
    """Older kadam stored exp_avg_2 for level 2 (beta1 = 0); it is dropped on load and the run continues
    on the float64 reference (m = x needs no state)."""
    rng = np.random.default_rng(1)
    theta0 = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    gradients = [[rng.standard_normal(t.shape) for t in theta0] for _ in range(20)]
    params = [torch.nn.Parameter(torch.tensor(t)) for t in theta0]
    optimizer = KAdam(params, lr=1e-2, weight_decay=0.1, **implementation)
    for n in range(10):
        for p, g in zip(params, gradients[n]):
            p.grad = torch.tensor(g)
        optimizer.step()
    checkpoint = _roundtrip(optimizer.state_dict())
    for state in checkpoint["state"].values():
        state["exp_avg_2"] = torch.full_like(state["exp_avg"], 0.25)  # what older versions kept (value unused)
    resumed = KAdam(params, lr=1e-2, weight_decay=0.1, **implementation)
    resumed.load_state_dict(checkpoint)
    assert all("exp_avg_2" not in state for state in resumed.state.values())
    for n in range(10, 20):
        for p, g in zip(params, gradients[n]):
            p.grad = torch.tensor(g)
        resumed.step()
    expected = reference_kadam(
        theta0,
        lambda n, _: gradients[n - 1],
        20,
        lr=1e-2,
        weight_decay=0.1,
        levels=[(0.9, 0.999, 1e-8, "elementwise"), (0.0, 0.999, 1e-8, "tensor")],
    )
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-10, atol=1e-12)


def _trained(k: int, **kwargs) -> tuple[list[torch.nn.Parameter], KAdam]:
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(64, 64))]
    optimizer = KAdam(params, lr=1e-2, k=k, **kwargs)
    for _ in range(3):
        for param in params:
            param.grad = torch.randn(param.shape)
        optimizer.step()
    return params, optimizer


def _assert_refused_unchanged(optimizer: KAdam, checkpoint: dict, error: type, message: str) -> None:
    before = _state_snapshot(optimizer)
    with pytest.raises(error, match=message):
        optimizer.load_state_dict(checkpoint)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for key, state in before["state"].items():
        assert after["state"][key].keys() == state.keys()
        for name, value in state.items():
            assert torch.equal(after["state"][key][name], value)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(k=1), "step"),
        (dict(k=1), "exp_avg"),
        (dict(k=1), "exp_avg_sq"),
        (dict(k=2), "step"),
        (dict(k=2), "exp_avg"),
        (dict(k=2), "exp_avg_sq"),
        (dict(k=3), "exp_avg_sq_2"),  # a gap: level 3 saved, level 2 not
        (dict(k=2, meta_betas=(0.5, 0.99)), "exp_avg_2"),  # a level that keeps m
    ],
)
def test_checkpoint_missing_a_state_key_is_refused_naming_it(kwargs, key):
    """torch's Adam raises KeyError at the step for a missing state key; KAdam refuses the checkpoint at load,
    naming the key and the parameter, and stays as it was (a missing exp_avg used to reset the momentum)."""
    _, saved = _trained(**kwargs)
    checkpoint = _roundtrip(saved.state_dict())
    del checkpoint["state"][1][key]
    _, optimizer = _trained(**kwargs)
    _assert_refused_unchanged(
        optimizer, checkpoint, KeyError, f"parameter 1 of group 0 has no '{key}'|has .* but no '{key}'"
    )


def test_checkpoint_level_without_m_loads_into_a_level_with_m():
    """The documented cases load: a level whose checkpoint kept no m (β = 0) starts its m at zero, an AdamW
    checkpoint (fewer levels, no decoupled_weight_decay) starts the new levels fresh."""
    _, saved = _trained(k=2)
    params, optimizer = _trained(k=2, meta_betas=(0.5, 0.99))
    optimizer.load_state_dict(_roundtrip(saved.state_dict()))
    for param in params:
        param.grad = torch.ones(param.shape)
    optimizer.step()
    assert all(torch.isfinite(optimizer.state[p]["exp_avg_2"]).all() for p in params)
    adamw_params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(64, 64))]
    adamw = torch.optim.AdamW(adamw_params)
    for param in adamw_params:
        param.grad = torch.randn(param.shape)
    adamw.step()
    checkpoint = _roundtrip(adamw.state_dict())
    for group in checkpoint["param_groups"]:
        del group["decoupled_weight_decay"]
    with pytest.warns(UserWarning, match="fewer levels"):
        optimizer.load_state_dict(checkpoint)


@pytest.mark.parametrize(
    "key,value,error,message",
    [
        (
            "exp_avg",
            torch.zeros(3),
            ValueError,
            r"'exp_avg' of parameter 1 of group 0 has shape \(3,\), expected the parameter's \(64, 64\)",
        ),
        ("exp_avg_sq", torch.zeros(64, 63), ValueError, r"'exp_avg_sq' of parameter 1 of group 0 has shape \(64, 63\)"),
        (
            "exp_avg_sq_2",
            torch.zeros(3),
            ValueError,
            r"'exp_avg_sq_2' of parameter 1 of group 0 has shape \(3,\), expected \(\)",
        ),
        (
            "exp_avg_sq_2",
            torch.zeros(64, 64),
            ValueError,
            "level 2 of parameter 1 of group 0 is stored in elementwise mode",
        ),
        ("exp_avg", "zeros", TypeError, "'exp_avg' of parameter 1 of group 0 must be a tensor, got str"),
        ("exp_avg", torch.zeros(64, 64, dtype=torch.int64), TypeError, "must be a real floating-point tensor"),
        ("exp_avg", torch.zeros(64, 64, dtype=torch.complex64), TypeError, "must be a real floating-point tensor"),
        ("step", "3", TypeError, "'step' of parameter 1 of group 0 must be a number"),
        (
            "step",
            torch.tensor([1.0, 2.0]),
            ValueError,
            "'step' of parameter 1 of group 0 must be a real number or a one-element",
        ),
        ("step", -1.0, ValueError, r"'step' of parameter 1 of group 0 must be a finite number >= 0, got -1.0"),
        ("step", float("nan"), ValueError, "'step' of parameter 1 of group 0 must be a finite number >= 0"),
        (
            "step_offset_2",
            10.0,
            ValueError,
            r"'step_offset_2' of parameter 1 of group 0 must be a number in \[0, step = 3.0\]",
        ),
    ],
)
def test_mis_shaped_or_mis_typed_state_is_refused(key, value, error, message):
    """A state tensor is checked against its parameter at load (the fused kernels used to read past its end)."""
    _, saved = _trained(k=2)
    checkpoint = _roundtrip(saved.state_dict())
    checkpoint["state"][1][key] = value
    _, optimizer = _trained(k=2)
    _assert_refused_unchanged(optimizer, checkpoint, error, message)


@pytest.mark.parametrize(
    "change,error,message",
    [
        (lambda c: c["param_groups"][0].pop("lr"), KeyError, "group 0 of the checkpoint has no 'lr'"),
        (lambda c: c["param_groups"][0]["params"].pop(), ValueError, "group 0 of the checkpoint has 1 parameters"),
        (
            lambda c: c["param_groups"][0].update(lr=float("inf")),
            ValueError,
            re.escape("lr of group 0 of the checkpoint must be a number >= 0 (and finite), got inf"),
        ),
        (
            lambda c: c["param_groups"][0].update(weight_decay=-1.0),
            ValueError,
            "weight_decay of group 0 of the checkpoint",
        ),
        (lambda c: c["state"].update({1: [1, 2]}), TypeError, "the state of parameter 1 of group 0 must be a dict"),
        (lambda c: c.pop("state"), KeyError, "the checkpoint has no 'state'"),
    ],
)
def test_malformed_checkpoint_groups_are_refused(change, error, message):
    _, saved = _trained(k=2)
    checkpoint = _roundtrip(saved.state_dict())
    change(checkpoint)
    _, optimizer = _trained(k=2)
    _assert_refused_unchanged(optimizer, checkpoint, error, message)


@pytest.mark.parametrize(
    "kwargs", [{}, {"fused": True}, {"k": 1, "fused": True}, {"foreach": False}, {"foreach": True}]
)
def test_mis_shaped_checkpoint_is_refused_on_every_path(kwargs):
    """The report's sequence: ``sd = opt.state_dict()`` (whose per-parameter dicts are the optimizer's own, as
    torch's are), ``sd['state'][1]['exp_avg'] = torch.zeros(3)``, load, step. It aborted the process on the fused
    paths; the load now refuses the checkpoint and the step, which sees the state changed in place, raises."""
    params, optimizer = _trained(**{"k": 2, **kwargs})
    checkpoint = copy.deepcopy(optimizer.state_dict())
    checkpoint["state"][1]["exp_avg"] = torch.zeros(3)
    _assert_refused_unchanged(optimizer, checkpoint, ValueError, "'exp_avg' of parameter 1 of group 0 has shape")
    shared = optimizer.state_dict()
    shared["state"][1]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match="'exp_avg' of parameter 1 of group 0 has shape"):
        optimizer.load_state_dict(shared)
    for param in params:
        param.grad = torch.randn(param.shape)
    with pytest.raises(RuntimeError, match="size of"):
        optimizer.step()
