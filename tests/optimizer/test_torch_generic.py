"""PyTorch's generic optimizer checks (``TestOptimRenewed`` in PyTorch's test/test_optim.py, run there over
``optim_db``), written again here for KAdam on the CPU, over the inputs torch gives ``AdamW`` for the features
KAdam declares, on each of its implementations (loop, foreach, fused) and with its own options (k, bfloat16
state with and without stochastic rounding).

Each check keeps torch's criterion: loss goes the right way in 20 steps (with each LR scheduler torch's tests
use, alone or chained), a tensor lr of 0, 1 or 2 dimensions steps as the float lr, a state dict saved,
reloaded (``weights_only`` too) and stripped of the keys older versions lacked (older torch's flags, older
KAdam's ``state_dtype``/``stochastic_rounding``, plain-number steps) loads and steps on identically, hooks
fire in order, a deepcopy keeps every public attribute, foreach and fused match the loop in float64, complex
parameters step as their real views.

What torch's suite runs for AdamW but cannot apply to KAdam by design is listed in :data:`NOT_APPLICABLE`
with the reason, and a test checks that each of those inputs is refused as stated (so the list cannot go
stale). Checks that need CUDA or several GPUs (``test_state_dict_with_cuda_params``, the multi-GPU and
peak-memory checks) are not run on the CPU and not counted here; tests/optimizer/test_cuda.py holds KAdam's.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.nn import Parameter
from torch.optim import lr_scheduler as schedulers
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from kadam import KAdam

IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}

# torch's AdamW inputs on the CPU (common_optimizers.optim_inputs_func_adamw) that KAdam declares, then
# KAdam's own: k = 1 (Adam exactly), k = 3, bfloat16 state with and without stochastic rounding.
INPUTS = {
    "default": {},
    "lr": {"lr": 0.01},
    "tensor-lr": {"lr": torch.tensor(0.001)},
    "weight_decay": {"weight_decay": 0.1},
    "weight_decay,maximize": {"weight_decay": 0.1, "maximize": True},
    "coupled-decay": {"weight_decay": 0.1, "decoupled_weight_decay": False},
    "k=1": {"k": 1, "weight_decay": 0.1},
    "k=3": {"k": 3, "lr": 0.01},
    "bf16-state": {"state_dtype": torch.bfloat16, "lr": 0.01},
    "bf16-state,SR": {"state_dtype": torch.bfloat16, "stochastic_rounding": True, "lr": 0.01},
}

# The LR schedulers of torch's tests (alone and chained), and the rest of torch.optim.lr_scheduler.
SCHEDULERS = {
    "none": [],
    "StepLR": [lambda opt: schedulers.StepLR(opt, gamma=0.9, step_size=10)],
    "ReduceLROnPlateau": [lambda opt: schedulers.ReduceLROnPlateau(opt)],
    "ExponentialLR": [lambda opt: schedulers.ExponentialLR(opt, gamma=0.9)],
    "LinearLR": [lambda opt: schedulers.LinearLR(opt, start_factor=0.4, total_iters=4)],
    "ConstantLR+ExponentialLR": [
        lambda opt: schedulers.ConstantLR(opt, factor=0.4, total_iters=4),
        lambda opt: schedulers.ExponentialLR(opt, gamma=0.9),
    ],
    "ExponentialLR+ReduceLROnPlateau": [
        lambda opt: schedulers.ExponentialLR(opt, gamma=0.9),
        lambda opt: schedulers.ReduceLROnPlateau(opt),
    ],
    "PolynomialLR": [lambda opt: schedulers.PolynomialLR(opt, power=0.9, total_iters=4)],
    "MultiStepLR": [lambda opt: schedulers.MultiStepLR(opt, milestones=[5, 10], gamma=0.5)],
    "CosineAnnealingLR": [lambda opt: schedulers.CosineAnnealingLR(opt, T_max=20)],
    "CosineAnnealingWarmRestarts": [lambda opt: schedulers.CosineAnnealingWarmRestarts(opt, T_0=5)],
    "LambdaLR": [lambda opt: schedulers.LambdaLR(opt, lambda epoch: 0.95**epoch)],
    "MultiplicativeLR": [lambda opt: schedulers.MultiplicativeLR(opt, lambda epoch: 0.95)],
    "OneCycleLR": [lambda opt: schedulers.OneCycleLR(opt, max_lr=0.01, total_steps=25)],  # cycles betas[0] too
    "CyclicLR": [lambda opt: schedulers.CyclicLR(opt, base_lr=1e-3, max_lr=1e-2, step_size_up=4)],  # and betas[0]
    "SequentialLR": [
        lambda opt: schedulers.SequentialLR(
            opt,
            [schedulers.LinearLR(opt, start_factor=0.5, total_iters=3), schedulers.ExponentialLR(opt, gamma=0.9)],
            milestones=[3],
        )
    ],
    "ChainedScheduler": [
        lambda opt: schedulers.ChainedScheduler(
            [schedulers.ConstantLR(opt, factor=0.5, total_iters=3), schedulers.ExponentialLR(opt, gamma=0.95)]
        )
    ],
}

# What torch's suite runs for AdamW that KAdam refuses by design: the input and why.
NOT_APPLICABLE = {
    "amsgrad": ({"amsgrad": True}, ValueError, "KAdam does not implement AMSGrad's running maximum"),
    "differentiable": ({"differentiable": True}, ValueError, "autograd through the step is not implemented"),
    "tensor betas": (
        {"betas": (torch.tensor(0.9), torch.tensor(0.99))},
        ValueError,
        "each level's (β, γ) is a validated Python number in [0, 1); tensor betas (0-, 1- or 2-dim) are refused",
    ),
    "capturable on the CPU": (
        {"capturable": True},
        RuntimeError,
        "capturable steps keep their step counts on a CUDA device, as torch's (torch runs it on CUDA only)",
    ),
}


def _inputs(impl: str) -> list[tuple[str, dict]]:
    """Fresh kwargs of every input for ``impl`` (a tensor lr is mutated in place by schedulers)."""
    return [(name, {**copy.deepcopy(kwargs), **IMPLEMENTATIONS[impl]}) for name, kwargs in INPUTS.items()]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _step_schedulers(active: list, loss: torch.Tensor) -> None:
    for scheduler in active:
        if isinstance(scheduler, schedulers.ReduceLROnPlateau):
            scheduler.step(loss)
        else:
            scheduler.step()


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_goes_right_direction(impl, contiguous, scheduler):
    for name, kwargs in _inputs(impl):
        generator = torch.Generator().manual_seed(0)
        if contiguous:
            weight = Parameter(torch.randn(10, 5, generator=generator))
            bias = Parameter(torch.randn(10, generator=generator))
        else:
            weight = Parameter(torch.randn(10, 5, 2, generator=generator)[..., 0])
            bias = Parameter(torch.randn(10, 2, generator=generator)[..., 0])
        inputs = torch.randn(5, generator=generator)
        optimizer = KAdam([weight, bias], **kwargs)
        active = [make(optimizer) for make in SCHEDULERS[scheduler]]

        def closure():
            optimizer.zero_grad()
            loss = (weight.mv(inputs) + bias).pow(2).sum()
            loss.backward()
            return loss

        initial = closure().item()
        for _ in range(20):
            loss = optimizer.step(closure)
            _step_schedulers(active, loss)
        final = closure().item()
        assert (final > initial) if kwargs.get("maximize") else (final < initial), (name, initial, final)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("scheduler", [s for s in SCHEDULERS if s != "none"])
def test_param_group_with_lr_scheduler_goes_right_direction(impl, scheduler):
    generator = torch.Generator().manual_seed(1)
    weight, weight2 = (Parameter(torch.randn(10, 5, generator=generator)) for _ in range(2))
    inputs = torch.randn(5, generator=generator)
    optimizer = KAdam([{"params": [weight]}, {"params": [weight2], "lr": 0.01, "k": 1}], **IMPLEMENTATIONS[impl])
    active = [make(optimizer) for make in SCHEDULERS[scheduler]]

    def closure():
        optimizer.zero_grad()
        loss = (weight.mv(inputs) + weight2.mv(inputs)).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        _step_schedulers(active, optimizer.step(closure))
    assert closure().item() < initial


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("num_dim", [0, 1, 2])
def test_tensor_lr(impl, num_dim):
    """A tensor lr of shape [1] * num_dim steps as the float lr (torch's criterion: equal to float32's default
    tolerance, rtol 1.3e-6 and atol 1e-5)."""
    for name, kwargs in _inputs(impl):
        kwargs.pop("lr", None)
        generator = torch.Generator().manual_seed(2)
        weight = Parameter(torch.randn(10, 5, generator=generator))
        bias = Parameter(torch.randn(10, generator=generator))
        weight_c, bias_c = (Parameter(p.detach().clone()) for p in (weight, bias))
        inputs = torch.randn(5, generator=generator)
        reference = KAdam([weight, bias], lr=1e-3, **kwargs)
        optimizer = KAdam([weight_c, bias_c], lr=torch.tensor(1e-3).reshape([1] * num_dim), **kwargs)
        for _ in range(5):
            for opt, w, b in ((reference, weight, bias), (optimizer, weight_c, bias_c)):
                opt.zero_grad()
                (w.mv(inputs) + b).pow(2).sum().backward()
                opt.step()
            torch.testing.assert_close(weight_c, weight, msg=name)
            torch.testing.assert_close(bias_c, bias, msg=name)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_step_is_noop_when_params_have_no_grad(impl):
    params = [torch.randn(2, 3) for _ in range(2)]
    old = [p.clone() for p in params]
    for _, kwargs in _inputs(impl):
        optimizer = KAdam(params, **kwargs)
        optimizer.step(lambda: torch.tensor([1.0]))
        assert all(torch.equal(p, o) for p, o in zip(params, old))
        assert len(optimizer.state) == 0


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_step_is_noop_for_zero_grads(impl):
    param = Parameter(torch.randn(5, 1))
    old = param.detach().clone()
    for name, kwargs in _inputs(impl):
        if kwargs.get("weight_decay", 1e-2) != 0:  # KAdam's default decay is AdamW's 1e-2: turn it off
            kwargs["weight_decay"] = 0.0
        optimizer = KAdam([param], **kwargs)
        param.grad = torch.zeros_like(param)
        optimizer.step()
        assert torch.equal(param.detach(), old), name


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_optimizer_can_be_printed(impl):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for _, kwargs in _inputs(impl):
        assert repr(KAdam(params, **kwargs)).startswith("KAdam (")


def _without_param_names(state_dict: dict) -> dict:
    state_dict = copy.deepcopy(state_dict)
    for group in state_dict["param_groups"]:
        group.pop("param_names", None)
    return state_dict


def _assert_state_dicts_equal(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for key, state in a["state"].items():
        assert state.keys() == b["state"][key].keys()
        for name, value in state.items():
            other = b["state"][key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (key, name)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("named", [(False, False), (True, False), (False, True), (True, True)], ids=str)
def test_state_dict_deterministic(impl, named):
    for name, kwargs in _inputs(impl):
        generator = torch.Generator().manual_seed(3)
        weight, bias = Parameter(torch.randn(2, 3, generator=generator)), Parameter(torch.randn(2, generator=generator))
        inputs = torch.randn(3, generator=generator)

        def params_of(params, is_named):
            return [(f"name{i}", p) for i, p in enumerate(params)] if is_named else params

        def closure_for(opt, w, b):
            def closure():
                opt.zero_grad()
                loss = (w.mv(inputs) + b).pow(2).sum()
                loss.backward()
                return loss

            return closure

        optimizer = KAdam(params_of([weight, bias], named[0]), **kwargs)
        for _ in range(10):
            optimizer.step(closure_for(optimizer, weight, bias))
        weight_c, bias_c = Parameter(weight.detach().clone()), Parameter(bias.detach().clone())
        optimizer_c = KAdam(params_of([weight_c, bias_c], named[1]), **kwargs)
        optimizer_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for _ in range(10):
            optimizer.step(closure_for(optimizer, weight, bias))
            optimizer_c.step(closure_for(optimizer_c, weight_c, bias_c))
            assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c), name
        _assert_state_dicts_equal(
            _without_param_names(optimizer.state_dict()), _without_param_names(optimizer_c.state_dict())
        )
        optimizer_c.param_groups.extend(optimizer_c.param_groups)  # repeated groups: identical representation
        assert (
            _without_param_names(optimizer.state_dict())["param_groups"][-1]
            == _without_param_names(optimizer_c.state_dict())["param_groups"][-1]
        )


# Keys that older checkpoints lack: torch's flags added after Adam's first release (torch's
# not_og_supported_flags for Adam/AdamW), and KAdam's own later keys.
OLDER_FORMAT_KEYS = (
    "maximize",
    "foreach",
    "fused",
    "differentiable",
    "capturable",
    "decoupled_weight_decay",
    "state_dtype",
    "stochastic_rounding",
)


def _conv_bn_model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2, eps=1e-05, momentum=0.1))
    return model, torch.rand(1, 4, 16, 16)


def _fwd_bwd(optimizer, model, inputs):
    optimizer.zero_grad()
    loss = model(inputs).sum()
    loss.backward()
    return loss


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_can_load_older_state_dict(impl):
    """An older checkpoint (without the keys later versions added) loads and steps on as the current one does,
    except that a checkpoint without ``maximize`` minimizes (older versions had no maximize; torch's rule)."""
    for name, kwargs in _inputs(impl):
        model, inputs = _conv_bn_model()
        optimizer = KAdam(model.parameters(), **kwargs)
        for _ in range(3):
            _fwd_bwd(optimizer, model, inputs)
            optimizer.step()
        current = copy.deepcopy(optimizer.state_dict())
        older = copy.deepcopy(current)
        for group in older["param_groups"]:
            for key in OLDER_FORMAT_KEYS:
                group.pop(key, None)
        twin_model = copy.deepcopy(model)
        twin = KAdam(twin_model.parameters(), **kwargs)
        twin.load_state_dict(current)
        optimizer.load_state_dict(older)
        for _ in range(2):
            for opt, mod in ((optimizer, model), (twin, twin_model)):
                _fwd_bwd(opt, mod, inputs)
                opt.step()
        if kwargs.get("maximize", False):
            assert optimizer.param_groups[0]["maximize"] is False and twin.param_groups[0]["maximize"] is True
            continue
        for p, q in zip(model.parameters(), twin_model.parameters()):
            assert torch.equal(p, q), name


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_load_nontensor_step(impl):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    for name, kwargs in _inputs(impl):
        optimizer = KAdam(params, **kwargs)
        for _ in range(3):
            optimizer.step()
        state_dict = copy.deepcopy(optimizer.state_dict())
        for state in state_dict["state"].values():
            state["step"] = state["step"].item()
        optimizer.load_state_dict(state_dict)
        optimizer.step()
        assert all(float(state["step"]) == 4 for state in optimizer.state.values()), name


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("named", [False, True])
def test_save_load_equality_with_weights_only(impl, named):
    generator = torch.Generator().manual_seed(4)
    weight, bias = Parameter(torch.randn(2, 3, generator=generator)), Parameter(torch.randn(2, generator=generator))
    inputs = torch.randn(3, generator=generator)
    for _, kwargs in _inputs(impl):
        params = [("weight", weight), ("bias", bias)] if named else [weight, bias]
        optimizer = KAdam(params, **kwargs)

        def closure():
            optimizer.zero_grad()
            loss = (weight.mv(inputs) + bias).pow(2).sum()
            loss.backward()
            return loss

        for _ in range(3):
            optimizer.step(closure)
        saved = optimizer.state_dict()
        for weights_only in (False, True):
            buffer = io.BytesIO()
            torch.save(saved, buffer)
            buffer.seek(0)
            _assert_state_dicts_equal(torch.load(buffer, weights_only=weights_only), saved)


def _state_dict_pre_hook(optimizer):
    optimizer.state["test"] = 1


def _state_dict_post_hook(optimizer, state_dict):
    state_dict["ran_state_dict_pre_hook"] = state_dict["state"].pop("test", None) is not None
    return state_dict


def _load_pre_hook_1(optimizer, state_dict):
    state_dict["param_groups"][0]["lr"] = 0.002


def _load_pre_hook_2(optimizer, state_dict):
    changed = copy.deepcopy(state_dict)
    changed["param_groups"][0]["lr"] = 0.003
    return changed


def _load_post_hook(optimizer):
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_state_dict_and_load_state_dict_hooks(impl):
    for name, kwargs in _inputs(impl):
        param = Parameter(torch.rand(2, 3))
        optimizer = KAdam([param], **kwargs)
        optimizer.register_state_dict_pre_hook(_state_dict_pre_hook)
        assert optimizer.state_dict()["state"]["test"] == 1, name
        optimizer.register_state_dict_post_hook(_state_dict_post_hook)
        state_dict = optimizer.state_dict()
        assert "test" not in state_dict["state"] and state_dict["ran_state_dict_pre_hook"]

        optimizer = KAdam([param], **kwargs)
        state_dict = optimizer.state_dict()
        optimizer.register_load_state_dict_pre_hook(_load_pre_hook_1)
        optimizer.load_state_dict(state_dict)
        assert optimizer.param_groups[0]["lr"] == 0.002
        optimizer.register_load_state_dict_pre_hook(_load_pre_hook_2, prepend=True)
        optimizer.load_state_dict(state_dict)
        assert optimizer.param_groups[0]["lr"] == 0.002  # the prepended hook runs first, the other overrides it

        optimizer = KAdam([param], **kwargs)
        optimizer.register_load_state_dict_pre_hook(_load_pre_hook_2)
        optimizer.register_load_state_dict_post_hook(_load_post_hook)
        optimizer.load_state_dict(optimizer.state_dict())
        assert optimizer.state["ran_load_state_dict_pre_hook2"] and optimizer.state["ran_load_state_dict_post_hook"]


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_step_hooks(impl):
    params = [Parameter(torch.tensor([1.0, 1.0]))]
    for name, kwargs in _inputs(impl):
        optimizer = KAdam(params, **kwargs)
        other = torch.optim.SGD(params)
        order = []
        handles = [
            register_optimizer_step_pre_hook(lambda *a: order.append(0)),
            register_optimizer_step_post_hook(lambda *a: order.append(5)),
            optimizer.register_step_pre_hook(lambda *a: order.append(1)),
            optimizer.register_step_post_hook(lambda *a: order.append(2)),
            other.register_step_pre_hook(lambda *a: order.append(1)),
            other.register_step_post_hook(lambda *a: order.append(2)),
        ]
        optimizer.step()
        other.step()
        optimizer.step()
        assert order == [0, 1, 2, 5] * 3, name
        for handle in handles:
            handle.remove()
        optimizer.step()
        other.step()
        assert order == [0, 1, 2, 5] * 3, name


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_deepcopy_copies_all_public_attrs(impl):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)

    def public(obj):
        return {key for key in obj.__dict__ if not key.startswith("_")}

    for name, kwargs in _inputs(impl):
        optimizer = KAdam(params, **kwargs)
        optimizer.step()
        assert public(optimizer) == public(copy.deepcopy(optimizer)), name


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_implementation_matches_the_loop_in_float64(impl):
    """torch's test_foreach_matches_forloop (float64, a 0-dim parameter last, a layer frozen for two steps and a
    step with no gradients), for foreach and for KAdam's fused CPU kernel; torch compares with float64's default
    tolerance (rtol 1e-7, atol 1e-7)."""
    for name, kwargs in _inputs("loop"):
        if kwargs.get("state_dtype") is not None:
            continue  # bfloat16 state: test_state_dtype.py compares the paths with bfloat16's criterion
        kwargs = {**kwargs, **IMPLEMENTATIONS[impl]}
        if isinstance(kwargs.get("lr"), torch.Tensor):
            kwargs["lr"] = kwargs["lr"].double()
        runs = []
        for flags in ({"foreach": False}, IMPLEMENTATIONS[impl]):
            torch.manual_seed(1)
            model = torch.nn.Sequential(
                torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
            ).double()
            extra = Parameter(torch.rand((), dtype=torch.float64))  # seeded above: the same start in both runs
            extra.grad = torch.rand_like(extra)
            optimizer = KAdam([*model.parameters(), extra], **{**kwargs, **flags})
            runs.append((model, extra, optimizer))
        inputs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64).reshape(3, 2)
        for i in range(7):
            for model, _, optimizer in runs:
                optimizer.zero_grad()
                model[2].requires_grad_(not 3 <= i < 5)
                if i != 2:
                    model(inputs).sum().backward()
                optimizer.step()
            (ref_model, ref_extra, reference), (model, extra, optimizer) = runs
            for p, q in zip([*ref_model.parameters(), ref_extra], [*model.parameters(), extra]):
                torch.testing.assert_close(q, p, rtol=1e-7, atol=1e-7, msg=name)
                for key, value in reference.state[p].items():
                    torch.testing.assert_close(optimizer.state[q][key], value, rtol=1e-7, atol=1e-7, msg=name)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_complex_parameters_step_as_their_real_views(impl):
    """torch's test_complex: complex parameters (with a real one among them) step as their real views, bitwise."""
    for name, kwargs in _inputs(impl):
        if kwargs.get("state_dtype") is not None:
            continue  # state_dtype applies to real parameters (test_state_dtype.py checks the refusal)
        generator = torch.Generator().manual_seed(5)
        complex_params = [
            Parameter(torch.randn(10, 5, dtype=torch.complex64, generator=generator)),
            Parameter(torch.randn(10, dtype=torch.complex64, generator=generator)),
            Parameter(torch.randn(10, 5, generator=generator)),
        ]
        real_params = [
            Parameter(torch.view_as_real(p.detach()).clone() if p.is_complex() else p.detach().clone())
            for p in complex_params
        ]
        complex_optimizer = KAdam(complex_params, **copy.deepcopy(kwargs))
        real_optimizer = KAdam(real_params, **kwargs)
        for _ in range(3):
            for c, r in zip(complex_params, real_params):
                r.grad = torch.randn(r.shape, generator=generator)
                c.grad = torch.view_as_complex(r.grad.clone()) if c.is_complex() else r.grad.clone()
            complex_optimizer.step()
            real_optimizer.step()
        for c, r in zip(complex_params, real_params):
            assert torch.equal(torch.view_as_real(c) if c.is_complex() else c, r), name


@pytest.mark.parametrize("case", list(NOT_APPLICABLE))
def test_not_applicable_inputs_are_refused_as_listed(case):
    """Each input of torch's AdamW suite that KAdam cannot take by design is refused with the stated error (at
    construction or, for capturable on the CPU, at the first step, as torch refuses it)."""
    kwargs, error, _ = NOT_APPLICABLE[case]
    param = Parameter(torch.randn(3))
    param.grad = torch.randn(3)
    with pytest.raises(error):
        KAdam([param], **kwargs).step()


@pytest.mark.parametrize("decoupled", [True, False])
def test_k1_fused_steps_strided_parameters_as_the_loop(decoupled):
    """k = 1 fused runs torch's fused Adam kernel, which steps a strided (non-contiguous) parameter as if it were
    laid out like its gradient; KAdam hands it contiguous copies, so the step is the loop's."""
    runs = []
    for flags in ({"fused": True}, {"foreach": False}):
        generator = torch.Generator().manual_seed(6)
        weight = Parameter(torch.randn(10, 5, 2, generator=generator)[..., 0])
        optimizer = KAdam([weight], k=1, weight_decay=0.1, decoupled_weight_decay=decoupled, **flags)
        for _ in range(5):
            weight.grad = torch.randn(10, 5, generator=generator)
            optimizer.step()
        runs.append((weight, optimizer))
    (fused, fused_optimizer), (loop, loop_optimizer) = runs
    assert not fused.is_contiguous()
    torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fused_optimizer.state[fused]["exp_avg_sq"], loop_optimizer.state[loop]["exp_avg_sq"])
