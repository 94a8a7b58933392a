"""KAdam(k=1) against torch's own Adam / AdamW: same trajectories, bit for bit (THEORY §1).

Each of our implementations (loop, foreach) runs against torch's matching one, whose operation order
the level-1 code reproduces, so equality is exact (``torch.equal``), over 200 steps of an MLP with two
parameter groups.
"""

import copy
import itertools

import pytest
import torch

from kadam import KAdam
from tests.optimizer.helpers import make_mlp, train, two_groups

CASES = list(
    itertools.product(
        [False, True],  # foreach
        [torch.float32, torch.float64],
        [0.0, 0.1],  # weight decay
        [False, True],  # maximize
        [True, False],  # decoupled (AdamW) or coupled (Adam)
    )
)


def _scheduler(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.5)


@pytest.mark.parametrize("foreach,dtype,weight_decay,maximize,decoupled", CASES)
def test_k1_equals_torch_bitwise(foreach, dtype, weight_decay, maximize, decoupled):
    torch_class = torch.optim.AdamW if decoupled else torch.optim.Adam
    kwargs = dict(betas=(0.8, 0.99), eps=1e-6, maximize=maximize, foreach=foreach)

    reference_model = make_mlp(dtype)
    reference = torch_class(two_groups(reference_model, weight_decay), lr=1e-3, weight_decay=weight_decay, **kwargs)
    expected = train(reference_model, reference, 200, _scheduler)

    model = make_mlp(dtype)
    optimizer = KAdam(
        two_groups(model, weight_decay),
        lr=1e-3,
        k=1,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled,
        **kwargs,
    )
    actual = train(model, optimizer, 200, _scheduler)

    assert torch.equal(actual, expected)
    for p_ref, p in zip(reference_model.parameters(), model.parameters()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[p][key], reference.state[p_ref][key]), key


def test_default_is_adamw_defaults_with_two_levels():
    optimizer = KAdam([torch.nn.Parameter(torch.zeros(3))])
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8, 1e-2)
    assert group["k"] == 2 and group["decoupled_weight_decay"]


def test_k1_checkpoint_loads_into_torch_adamw_and_back():
    model = make_mlp()
    optimizer = KAdam(model.parameters(), lr=1e-2, k=1)
    train(model, optimizer, 10)

    torch_model = make_mlp()
    torch_model.load_state_dict(model.state_dict())
    torch_optimizer = torch.optim.AdamW(torch_model.parameters(), lr=1e-2)
    torch_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # state_dict() shares tensors
    kadam_model = make_mlp()
    kadam_model.load_state_dict(model.state_dict())
    kadam_optimizer = KAdam(kadam_model.parameters(), lr=1e-2, k=1)
    kadam_optimizer.load_state_dict(copy.deepcopy(torch_optimizer.state_dict()))

    expected = train(model, optimizer, 10, seed=2)
    assert torch.equal(train(torch_model, torch_optimizer, 10, seed=2), expected)
    assert torch.equal(train(kadam_model, kadam_optimizer, 10, seed=2), expected)


def test_adamw_positional_call_means_the_same_in_kadam():
    """``AdamW(params, lr, betas, eps, weight_decay, amsgrad)`` becomes ``KAdam(..., k=1)`` unchanged (issue 16)."""
    arguments = (1e-2, (0.8, 0.99), 1e-6, 0.1, False)
    reference_model, model = make_mlp(), make_mlp()
    expected = train(reference_model, torch.optim.AdamW(reference_model.parameters(), *arguments), 20)
    optimizer = KAdam(model.parameters(), *arguments, k=1)
    assert torch.equal(train(model, optimizer, 20), expected)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == arguments[:4]


def test_torch_flags_are_accepted_at_their_defaults():
    flags = dict(amsgrad=False, capturable=False, differentiable=False, maximize=False, foreach=None, fused=None)
    model = make_mlp()
    optimizer = KAdam(model.parameters(), lr=1e-2, k=2, **flags)
    train(model, optimizer, 2)
    assert all(optimizer.param_groups[0][name] == value for name, value in flags.items())


@pytest.mark.parametrize("flag", ["amsgrad", "differentiable"])
def test_unsupported_torch_flags_raise_value_error(flag):
    with pytest.raises(ValueError, match=f"{flag} must be False for KAdam"):
        KAdam(make_mlp().parameters(), **{flag: True})
    optimizer = KAdam(make_mlp().parameters())
    with pytest.raises(ValueError, match=f"{flag} must be False for KAdam"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], flag: True})


def test_level_options_are_keyword_only():
    with pytest.raises(TypeError):
        KAdam(make_mlp().parameters(), 1e-3, (0.9, 0.999), 1e-8, 1e-2, False, 2)


@pytest.mark.parametrize("foreach", [False, True])
def test_capturable_on_cpu_is_refused_at_step_as_torch_refuses_it(foreach):
    """torch's Adam(capturable=True) accepts CPU parameters and raises at step(); KAdam does the same."""
    errors = []
    for optimizer_class in (torch.optim.AdamW, KAdam):
        model = make_mlp()
        optimizer = optimizer_class(model.parameters(), capturable=True, foreach=foreach)
        with pytest.raises((AssertionError, RuntimeError)) as error:
            train(model, optimizer, 1)
        errors.append(str(error.value))
    assert (
        errors[0] == errors[1]
        and "If capturable=True, params and state_steps must be on supported devices" in errors[1]
    )


PATHS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("shapes", [[(46,)], [(1,), (5,)], [(37, 211), (3, 1024)], [(0,), (1000,)]], ids=str)
@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("maximize", [False, True])
def test_k1_equals_torch_bitwise_on_every_path(path, shapes, decoupled, maximize):
    """Each path against torch's with the same flags (fused: torch's fused CPU kernel, which KAdam runs)."""
    torch_class = torch.optim.AdamW if decoupled else torch.optim.Adam
    dtypes = [torch.float32, torch.float64] + ([torch.bfloat16, torch.float16] if path == "fused" else [])
    for dtype in dtypes:
        results = []
        for optimizer_class, extra in ((torch_class, {}), (KAdam, {"k": 1, "decoupled_weight_decay": decoupled})):
            generator = torch.Generator().manual_seed(0)
            params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]
            optimizer = optimizer_class(
                params,
                lr=1e-2,
                betas=(0.8, 0.99),
                eps=1e-6,
                weight_decay=0.1,
                maximize=maximize,
                **PATHS[path],
                **extra,
            )
            for _ in range(20):
                for param in params:
                    param.grad = torch.randn(param.shape, generator=generator).to(dtype)
                optimizer.step()
            results.append((params, optimizer))
        (expected, reference), (actual, optimizer) = results
        for p_ref, p in zip(expected, actual):
            assert torch.equal(p, p_ref), dtype
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(optimizer.state[p][key], reference.state[p_ref][key]), (dtype, key)
