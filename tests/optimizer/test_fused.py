"""The fused KAdam step (``fused=True``) against the loop implementation (THEORY §1).

Tolerances: float32 and float64 trajectories agree with the loop to 1e-6 and 1e-12 relative to the
largest magnitude; the kernel follows the loop's operation order, so what is left is the tensor-mode
sum (double in the kernel, float in the loop) and one rounding of a scalar division. Float16 and
bfloat16 parameters run float32 math: from the same state, one fused step equals the float32 loop's
step rounded once to the storage type (to one unit in the last place; for theta, plus one rounding of
the update where a level after a tensor-mode level reads back its stored m).
"""

from __future__ import annotations

import copy
import ctypes
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import kadam.optimizer._cpu_kernel as cpu_kernel
import kadam.optimizer.kadam as kadam_module
from kadam import KAdam
from kadam.optimizer.levels import resolve_levels

SHAPES = [(37, 211), (5,), (3, 1024), (1,), (300, 250)]  # multi-block, tiny, block-aligned, scalar, multi-chunk

CONFIGS = {
    "default": {},
    "all-elementwise": {"meta_betas": (0.9, 0.99), "meta_norm": "elementwise"},
    "tensor-level-1": {"norm": "tensor", "meta_betas": (0.5, 0.99)},
    "elementwise-no-momentum": {"meta_norm": "elementwise"},  # beta1 = 0: no m stored, the kernel skips it
}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The loop reference runs on one thread (on a loaded machine libgomp's fork/join per op can cost
    milliseconds); tests of the kernel's threading set their own count inside."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)) for shape in SHAPES
    ]


def _run(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
        optimizer.step()


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual - expected).abs().max() / scale).item()


def _assert_same_trajectory(
    kwargs: dict, dtype: torch.dtype, tolerance: float, steps: int = 12, fused_threads: int = 1
) -> None:
    loop_params, fused_params = _params(dtype), _params(dtype)
    loop = KAdam(loop_params, foreach=False, **kwargs)
    fused = KAdam(fused_params, fused=True, **kwargs)
    _run(loop_params, loop, steps)
    torch.set_num_threads(fused_threads)
    try:
        _run(fused_params, fused, steps)
    finally:
        torch.set_num_threads(1)
    for expected, actual in zip(loop_params, fused_params):
        assert _relative_error(actual, expected) <= tolerance
        assert loop.state[expected].keys() == fused.state[actual].keys()
        for key, value in loop.state[expected].items():
            assert _relative_error(fused.state[actual][key], value) <= tolerance, key


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize(
    "decay",
    [
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": False, "maximize": True},
        {"weight_decay": 0.0, "maximize": True},
    ],
    ids=["adamw", "adam-l2-maximize", "no-decay-maximize"],
)
def test_fused_matches_loop_float32(config, k, decay):
    _assert_same_trajectory({"lr": 1e-2, "k": k, **CONFIGS[config], **decay}, torch.float32, 1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fused_matches_loop_float64(k):
    _assert_same_trajectory(
        {"lr": 1e-2, "k": k, "norm": ["elementwise", "tensor", "elementwise"][:k]}, torch.float64, 1e-12
    )


@pytest.mark.parametrize("threads", [2, 3])
def test_fused_matches_loop_with_several_threads(threads):
    """Blocks split across threads and the tensor-mode sums joined between passes."""
    config = {"lr": 1e-2, "k": 3, "norm": ["elementwise", "tensor", "tensor"]}
    _assert_same_trajectory(config, torch.float32, 1e-6, fused_threads=threads)


GROUP_ELEMENTS = 1 << 16  # the kernel's kGroupElements
BUFFER_ELEMENTS = 1 << 20  # and kBufferElements
_LARGE = (BUFFER_ELEMENTS + 3,)
GROUPED_SHAPES = [_LARGE, (5,), (300, 1000), _LARGE, (100, 300), (1 << 15,), (7, 9), (500, 300), _LARGE]


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("config", "tolerance"),
    [
        ({}, 2e-5),
        ({"meta_betas": (0.5, 0.99)}, 2e-5),
        (CONFIGS["tensor-level-1"], 5e-5),
        ({"decoupled_weight_decay": False}, 2e-5),
    ],
    ids=["default-meta", "meta-with-m", "tensor-level-1", "l2-decay"],
)
def test_fused_matches_loop_across_replay_groups(monkeypatch, k, threads, config, tolerance):
    """Tensors stepped in groups (a group's passes before the next group's, except that the pass writing theta
    of a group without a buffer runs interleaved with the next group's first pass): tensors too large for any
    buffer (replayed from m and v) first, between buffered groups and last, one larger than a group but with a
    buffer of its own, groups of several tensors sharing the replay buffer, and a group closed by a tensor that
    would overflow it. The default meta levels read the buffer (also with L2 decay, whose first pass reads
    theta); levels that never replay an elementwise output (meta levels with m, a tensor-mode level 1) have no
    buffer, so every group is interleaved with the next, of fewer or more chunks. The tolerance is the loop's:
    its float32 norm of a million elements rounds at a few 1e-6 (the kernel sums each block in float32 lanes,
    the blocks in double), and its float32 mean of a million squared gradients (a tensor-mode level 1) at about
    2e-5 (the kernel's sum in double is within 1e-7 of float64's there); a misplaced buffer element, or a
    group's theta written with another group's denominators, would be off by O(1)."""
    assert 300 * 1000 > GROUP_ELEMENTS and 100 * 300 + (1 << 15) + 63 <= GROUP_ELEMENTS
    monkeypatch.setattr(sys.modules[__name__], "SHAPES", GROUPED_SHAPES)
    _assert_same_trajectory(
        {"lr": 1e-2, "k": k, "weight_decay": 0.1, **config}, torch.float32, tolerance, steps=4, fused_threads=threads
    )


@pytest.mark.parametrize(
    "case",
    [
        ({"norm": ["elementwise", "tensor", "tensor"]}, torch.float32, False),
        ({"meta_betas": (0.5, 0.99)}, torch.float32, True),
        ({"weight_decay": 0.1, "decoupled_weight_decay": False}, torch.bfloat16, True),
    ],
    ids=["one-group", "groups", "groups-bf16-l2"],
)
def test_fused_result_does_not_depend_on_thread_count(monkeypatch, case):
    """Tensor-mode sums are added per chunk in a fixed order, so any thread count gives the same bits; across
    groups too, where a group's theta pass runs interleaved with the next group's first pass (every group,
    with meta levels that keep m or with bfloat16 parameters holding their own state)."""
    kwargs, dtype, grouped = case
    if grouped:
        monkeypatch.setattr(sys.modules[__name__], "SHAPES", GROUPED_SHAPES)
    results = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        params = _params(dtype)
        _run(params, KAdam(params, lr=1e-2, k=3, fused=True, **kwargs), 3 if grouped else 5)
        results.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("config", [{}, {"meta_betas": (0.5, 0.99)}], ids=["default-meta", "meta-with-m"])
def test_grouping_and_interleaving_change_no_bit(monkeypatch, config):
    """Each tensor's arithmetic does not depend on the tensors stepped beside it: the same tensors stepped in one
    call (in groups, theta passes of buffer-less groups interleaved with the next group's first pass, two threads)
    and each in an optimizer of its own (one group, nothing interleaved) give the same bits."""
    monkeypatch.setattr(sys.modules[__name__], "SHAPES", GROUPED_SHAPES)
    together, alone = _params(), _params()
    kwargs = {"lr": 1e-2, "k": 2, "weight_decay": 0.1, **config}
    joint = KAdam(together, fused=True, **kwargs)
    singles = [KAdam([param], fused=True, **kwargs) for param in alone]
    torch.set_num_threads(2)
    try:
        _run(together, joint, 3)

        class _Each:  # steps every single-tensor optimizer, so that _run drives them as one
            def step(self) -> None:
                for optimizer in singles:
                    optimizer.step()

        _run(alone, _Each(), 3)
    finally:
        torch.set_num_threads(1)
    for a, b, single in zip(together, alone, singles):
        assert torch.equal(a, b)
        for key, value in joint.state[a].items():
            assert torch.equal(value, single.state[b][key]), key


def _states_from_float32_run(kwargs: dict, dtype: torch.dtype) -> tuple[list, KAdam, list, KAdam]:
    """A float32 loop optimizer and a fused ``dtype`` one holding the same (``dtype``-exact) state."""
    warm_params = _params(torch.float32)
    warm = KAdam(warm_params, foreach=False, **kwargs)
    _run(warm_params, warm, 3)
    state = copy.deepcopy(warm.state_dict())
    for param_state in state["state"].values():
        for key, value in param_state.items():
            if key != "step" and torch.is_tensor(value):
                param_state[key] = value.to(dtype).to(torch.float32)
    reference_params = [torch.nn.Parameter(p.detach().to(dtype).to(torch.float32)) for p in warm_params]
    fused_params = [torch.nn.Parameter(p.detach().to(dtype)) for p in reference_params]
    reference = KAdam(reference_params, foreach=False, **kwargs)
    reference.load_state_dict(copy.deepcopy(state))
    fused = KAdam(fused_params, fused=True, **kwargs)
    fused.load_state_dict(copy.deepcopy(state))
    return reference_params, reference, fused_params, fused


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 2])
def test_low_precision_parameters_run_float32_math(dtype, k):
    kwargs = {"lr": 1e-2, "k": k, "weight_decay": 0.1, "meta_betas": (0.5, 0.99)}
    reference_params, reference, fused_params, fused = _states_from_float32_run(kwargs, dtype)
    generator = torch.Generator().manual_seed(7)
    for ref, low in zip(reference_params, fused_params):
        ref.grad = torch.randn(ref.shape, generator=generator).to(dtype).to(torch.float32)
        low.grad = ref.grad.to(dtype)
    before = [p.detach().clone() for p in reference_params]
    reference.step()
    fused.step()
    ulp = torch.finfo(dtype).eps  # one unit in the last place, relative
    for ref, low, start in zip(reference_params, fused_params, before):
        assert low.dtype == dtype
        # One rounding of theta, plus (after a tensor-mode level) one of the stored m that the next
        # pass reads back: relative to the update, which cancels against theta near zero.
        bound = ulp * (ref.detach().abs() + (ref.detach() - start).abs()) + torch.finfo(dtype).tiny
        assert ((low.float() - ref.detach()).abs() <= bound).all()
        for key, value in reference.state[ref].items():
            actual = fused.state[low][key]
            assert actual.dtype == (torch.float32 if key == "step" else dtype), key
            torch.testing.assert_close(actual.float(), value, rtol=ulp, atol=2 * torch.finfo(dtype).smallest_normal)


def test_low_precision_differs_from_storage_precision_math():
    """Guard for the test above: a bfloat16 loop step (bfloat16 math) is measurably further off."""
    kwargs = {"lr": 1e-2, "k": 2}
    reference_params, reference, fused_params, fused = _states_from_float32_run(kwargs, torch.bfloat16)
    loop_params = [torch.nn.Parameter(p.detach().clone()) for p in fused_params]
    loop = KAdam(loop_params, foreach=False, **kwargs)
    loop.load_state_dict(copy.deepcopy(fused.state_dict()))
    for ref, low, plain in zip(reference_params, fused_params, loop_params):
        ref.grad = torch.full_like(ref, 0.3)
        low.grad = ref.grad.bfloat16()
        plain.grad = ref.grad.bfloat16()
    for optimizer in (reference, fused, loop):
        optimizer.step()
    fused_error = max(_relative_error(low.float(), ref.detach()) for ref, low in zip(reference_params, fused_params))
    loop_error = max(_relative_error(p.float(), ref.detach()) for ref, p in zip(reference_params, loop_params))
    assert fused_error <= torch.finfo(torch.bfloat16).eps
    assert fused_error <= loop_error


def test_complex_and_non_contiguous_parameters():
    def make() -> list[torch.nn.Parameter]:
        generator = torch.Generator().manual_seed(3)
        return [
            torch.nn.Parameter(torch.randn(40, 50, dtype=torch.complex64, generator=generator)),
            torch.nn.Parameter(torch.randn(60, 70, generator=generator).t()),  # non-contiguous, state too
        ]

    loop_params, fused_params = make(), make()
    assert not fused_params[1].is_contiguous()
    loop = KAdam(loop_params, lr=1e-2, k=2, foreach=False)
    fused = KAdam(fused_params, lr=1e-2, k=2, fused=True)
    for step in range(5):
        for a, b in zip(loop_params, fused_params):
            a.grad = torch.full_like(a, 0.1 * (step + 1)) + a.detach()
            b.grad = a.grad.clone()
        loop.step()
        fused.step()
    for expected, actual in zip(loop_params, fused_params):
        assert (
            _relative_error(
                torch.view_as_real(actual.detach()) if actual.is_complex() else actual,
                torch.view_as_real(expected.detach()) if expected.is_complex() else expected,
            )
            <= 1e-6
        )


def test_resumed_levels_count_their_own_steps():
    """An AdamW checkpoint resumed as 2-Adam: level 2's bias correction counts from the resume."""
    base = _params()
    adamw = torch.optim.AdamW(base, lr=1e-2)
    _run(base, adamw, 4)
    loop_params = [torch.nn.Parameter(p.detach().clone()) for p in base]
    fused_params = [torch.nn.Parameter(p.detach().clone()) for p in base]
    for params, options in ((loop_params, {"foreach": False}), (fused_params, {"fused": True})):
        optimizer = KAdam(params, lr=1e-2, k=2, **options)
        with pytest.warns(UserWarning, match="fewer levels"):
            optimizer.load_state_dict(copy.deepcopy(adamw.state_dict()))
        assert optimizer.param_groups[0]["fused"] == options.get("fused")  # the checkpoint's None does not win
        _run(params, optimizer, 6, seed=5)
    for expected, actual in zip(loop_params, fused_params):
        assert _relative_error(actual, expected) <= 1e-6


def _snapshot(params: list[torch.nn.Parameter], optimizer: KAdam) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in params]
    for param in params:
        tensors += [v.clone() for v in optimizer.state[param].values() if torch.is_tensor(v)]
    return tensors


@pytest.mark.parametrize(("k", "grouped"), [(1, False), (2, False), (2, True)], ids=["k1", "k2", "k2-groups-2-threads"])
def test_grad_scaler_unscales_and_skips_inf_steps_without_touching_state(monkeypatch, k, grouped):
    """GradScaler's scale divides the gradients in the kernel, which writes them back unscaled; an inf skips the
    step. ``grouped``: tensors in several groups, the fused step on two threads, so that the unscaled write-back
    of one group's gradients runs beside the previous group's theta pass (tolerance as across groups)."""
    if grouped:
        monkeypatch.setattr(sys.modules[__name__], "SHAPES", GROUPED_SHAPES)
    fused_threads, tolerance = (2, 2e-5) if grouped else (1, 1e-6)
    params, reference_params = _params(), _params()
    optimizer = KAdam(params, lr=1e-2, k=k, fused=True)
    reference = KAdam(reference_params, lr=1e-2, k=k, foreach=False)
    assert optimizer._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=3.0, growth_interval=1000)  # 3: unscaling rounds
    generator = torch.Generator().manual_seed(2)
    for step in range(4):
        coefficients = [torch.randn(p.shape, generator=generator) for p in params]
        optimizer.zero_grad()
        scaler.scale(sum((p * c).sum() for p, c in zip(params, coefficients))).backward()  # grad = scale * c
        for reference_param, coefficient in zip(reference_params, coefficients):
            reference_param.grad = coefficient
        if step == 2:
            params[1].grad[0] = float("inf")
            before = _snapshot(params, optimizer)
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(params, optimizer)))
            assert scaler.get_scale() < scale  # the scaler saw the inf and backed off
            continue
        torch.set_num_threads(fused_threads)
        try:
            scaler.step(optimizer)
        finally:
            torch.set_num_threads(1)
        scaler.update()
        reference.step()
        for param, reference_param in zip(params, reference_params):
            torch.testing.assert_close(param.grad, reference_param.grad, rtol=1e-6, atol=0)  # unscaled in place
    for expected, actual in zip(reference_params, params):
        assert _relative_error(actual, expected) <= tolerance
        assert optimizer.state[actual]["step"].item() == 3


@pytest.mark.parametrize("k,norm", [(1, "elementwise")])
def test_off_cpu_path_on_cpu_tensors(monkeypatch, k, norm):
    """The path other devices take (torch's fused Adam for k = 1 elementwise), exercised on CPU tensors;
    on a GPU only the device differs."""
    monkeypatch.setattr(kadam_module, "_cpu_fused_kadam", kadam_module._torch_kernels_kadam)
    params, reference_params = _params(), _params()
    optimizer = KAdam(params, lr=1e-2, k=k, norm=norm, fused=True)
    reference = KAdam(reference_params, lr=1e-2, k=k, norm=norm, foreach=False)
    generator = torch.Generator().manual_seed(4)
    for step in range(4):
        for param, reference_param in zip(params, reference_params):
            reference_param.grad = torch.randn(param.shape, generator=generator)
            param.grad = reference_param.grad * 4.0
        optimizer.grad_scale = torch.tensor(4.0)
        optimizer.found_inf = torch.tensor(1.0 if step == 1 else 0.0)
        before = _snapshot(params, optimizer) if step == 1 else None
        optimizer.step()
        if before is not None:
            assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(params, optimizer)))
        else:
            reference.step()
    for expected, actual in zip(reference_params, params):
        assert _relative_error(actual, expected) <= 1e-6


def test_bad_combinations_raise():
    param = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        KAdam([param], fused=True, foreach=True)
    with pytest.raises(RuntimeError, match="supports parameters of dtype"):
        KAdam([torch.zeros(3, dtype=torch.float8_e4m3fn)], fused=True)

    class Subclass(torch.Tensor):  # stands in for FSDP2's DTensor
        pass

    with pytest.raises(RuntimeError, match="steps plain tensors"):
        KAdam([torch.nn.Parameter(torch.zeros(3).as_subclass(Subclass))], fused=True)
    optimizer = KAdam([param], fused=False)
    param.grad = torch.ones(3)
    optimizer.grad_scale = torch.tensor(2.0)
    with pytest.raises(RuntimeError, match="only supported with fused=True"):
        optimizer.step()


def test_new_process_first_step_is_fast_and_import_builds_nothing(tmp_path):
    """A cached kernel: a fresh process's first fused step (load + step) is well under 2 s."""
    cpu_kernel.fused_kernel_library()  # make sure this test's cache holds the build
    script = (
        "import time, torch\n"
        "import kadam, kadam.optimizer._cpu_kernel as f\n"
        "assert f._library is None, 'import compiled something'\n"
        "p = torch.nn.Parameter(torch.zeros(1000)); p.grad = torch.ones(1000)\n"
        "o = kadam.KAdam([p], fused=True)\n"
        "t = time.perf_counter(); o.step(); print(time.perf_counter() - t)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ), check=True
    )
    assert float(result.stdout.strip().splitlines()[-1]) < 2.0


def test_compiler_without_openmp_builds_the_one_thread_kernel(tmp_path, monkeypatch):
    wrapper = tmp_path / "cxx-without-openmp"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec c++ "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    monkeypatch.setenv("KADAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_kernel, "_library", None)
    with pytest.warns(UserWarning, match="without OpenMP"):
        cpu_kernel.fused_kernel_library()
    _assert_same_trajectory({"lr": 1e-2, "k": 2}, torch.float32, 1e-6, steps=3, fused_threads=2)


def test_kernel_struct_layout_is_checked_at_load(monkeypatch):
    """The library reports sizeof and offsetof of its struct; a ctypes mirror that differs cannot load."""
    library = cpu_kernel.fused_kernel_library()
    cpu_kernel.check_layout(library)
    fields = list(cpu_kernel.KernelArgs._fields_)

    class Swapped(ctypes.Structure):  # n_levels (int32) before n_tensors (int64): same fields, other layout
        _fields_ = [fields[1], fields[0], *fields[2:]]

    class Shorter(ctypes.Structure):
        _fields_ = fields[:-1]

    for wrong in (Swapped, Shorter):
        with pytest.raises(RuntimeError, match="does not match"):
            cpu_kernel.check_layout(library, wrong)
    monkeypatch.setattr(cpu_kernel, "KernelArgs", Swapped)
    monkeypatch.setattr(cpu_kernel, "_library", None)
    with pytest.raises(RuntimeError, match="does not match"):
        cpu_kernel.fused_kernel_library()


def test_fused_on_the_meta_device_raises_torchs_error():
    param = torch.nn.Parameter(torch.zeros(3, device="meta"))
    param.grad = torch.zeros(3, device="meta")
    with pytest.raises(
        RuntimeError, match="`fused=True` requires all the params to be floating point Tensors of supported devices"
    ):
        KAdam([param], k=1, fused=True).step()


@pytest.mark.parametrize("k,norm", [(2, "elementwise"), (1, "tensor")])
def test_off_cpu_fused_without_a_kernel_raises(monkeypatch, k, norm):
    """Off the CPU and off CUDA (where the Triton kernel steps every configuration, test_triton_dispatch.py)
    only k = 1 elementwise has a fused kernel (torch's); anything else is an error, not a silent fallback
    (issue 16)."""
    monkeypatch.setattr(kadam_module, "_cpu_fused_kadam", kadam_module._torch_kernels_kadam)
    params = _params()
    optimizer = KAdam(params, lr=1e-2, k=k, norm=norm, fused=True)
    _run(params, KAdam(params, lr=1e-2, k=1, fused=True), 1)
    with pytest.raises(RuntimeError, match="has no fused kernel on cpu for k = "):
        _run(params, optimizer, 1)
    with_triton = ["cpu", "cuda"] if kadam_module._triton_available() else ["cpu"]
    assert kadam_module.fused_devices(resolve_levels(k=k, norm=norm)) == with_triton
    assert "cuda" in kadam_module.fused_devices(resolve_levels(k=1))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_default_on_cpu_is_the_fused_kernel_except_for_adam(monkeypatch, k):
    """fused=None picks the C++ kernel on the CPU for every configuration but k = 1 elementwise, which
    keeps torch's default (the loop) and its bitwise equality with AdamW; without a kernel, the loop."""
    calls = []
    original = kadam_module._cpu_fused_kadam
    monkeypatch.setattr(kadam_module, "_cpu_fused_kadam", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    params, loop_params = _params(), _params()
    _run(params, KAdam(params, lr=1e-2, k=k), 3)
    _run(loop_params, KAdam(loop_params, lr=1e-2, k=k, foreach=False), 3)
    assert len(calls) == (0 if k == 1 else 3)
    for actual, expected in zip(params, loop_params):
        assert _relative_error(actual, expected) <= 1e-6
    monkeypatch.setattr(cpu_kernel, "available", lambda: False)
    _run(params, KAdam(params, lr=1e-2, k=k), 1)
    assert len(calls) == (0 if k == 1 else 3)


def test_step_counts_of_either_dtype_advance_once_per_step():
    """The kernel increments float32 or float64 step counts itself; a list of mixed dtypes (a checkpoint from a
    float64-default session resumed beside new parameters) is incremented by torch beside it: once either way."""
    params = _params()
    optimizer = KAdam(params, fused=True)
    _run(params, optimizer, 2)
    for param in params:
        optimizer.state[param]["step"] = optimizer.state[param]["step"].to(torch.float64)
    _run(params, optimizer, 1)
    assert [(optimizer.state[p]["step"].item(), optimizer.state[p]["step"].dtype) for p in params] == [
        (3.0, torch.float64)
    ] * len(params)
    optimizer.state[params[0]]["step"] = optimizer.state[params[0]]["step"].to(torch.float32)
    _run(params, optimizer, 1)
    assert [optimizer.state[p]["step"].item() for p in params] == [4.0] * len(params)


_ZERO_SIZE_CONFIGS = [
    {"norm": norm, "meta_norm": meta_norm, "meta_betas": meta_betas}
    for norm in ("elementwise", "tensor")
    for meta_norm in ("tensor", "elementwise")
    for meta_betas in ((0.0, 0.999), (0.5, 0.99))
]


def _assert_fused_matches_loop_on(sizes: list[int], kwargs: dict, steps: int = 2) -> None:
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(size, generator=generator) for size in sizes]
    loop_params = [torch.nn.Parameter(v.clone()) for v in values]
    fused_params = [torch.nn.Parameter(v.clone()) for v in values]
    loop = KAdam(loop_params, foreach=False, fused=False, **kwargs)
    fused = KAdam(fused_params, fused=True, **kwargs)
    for _ in range(steps):
        grads = [torch.randn(size, generator=generator) for size in sizes]
        for params, optimizer in ((loop_params, loop), (fused_params, fused)):
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            optimizer.step()
    # The loop's float32 norm of a large tensor rounds at a few 1e-6 (the kernel sums in double).
    tolerance = 1e-4 if max(sizes) > GROUP_ELEMENTS else 1e-6
    for expected, actual in zip(loop_params, fused_params):
        assert torch.isfinite(actual).all()
        if expected.numel():
            assert _relative_error(actual, expected) <= tolerance
        assert loop.state[expected].keys() == fused.state[actual].keys()
        for key, value in loop.state[expected].items():
            if value.numel():
                assert _relative_error(fused.state[actual][key], value) <= tolerance, key


@pytest.mark.parametrize(
    "sizes,kwargs",
    [
        ([0, 4], {"k": 2, "norm": "tensor"}),
        ([BUFFER_ELEMENTS + 7, 0, 4], {"k": 2, "norm": "tensor"}),
        ([0, 4], {"k": 2}),
    ],
    ids=["zero-first", "zero-first-in-second-group", "default"],
)
def test_zero_size_parameter_does_not_change_its_group(sizes, kwargs):
    """Whether a level keeps m is a property of the level, not of a group's first tensor (whose data pointer
    is null when it has no elements)."""
    _assert_fused_matches_loop_on(sizes, {"lr": 1e-2, **kwargs})


_SIZES = st.one_of(
    st.just(0),
    st.integers(1, 3000),
    st.just(0),
    st.integers(1, 3000),
    st.just(0),
    st.integers(1, 3000),
    st.sampled_from([GROUP_ELEMENTS + 3, BUFFER_ELEMENTS + 7]),
)


@pytest.mark.parametrize(
    "config", _ZERO_SIZE_CONFIGS, ids=lambda c: f"{c['norm']}-{c['meta_norm']}-{c['meta_betas'][0]}"
)
@given(sizes=st.lists(_SIZES, min_size=1, max_size=6), zero_at=st.integers(0, 6), k=st.integers(1, 3))
@settings(max_examples=12, deadline=None)
def test_fused_matches_loop_with_zero_size_tensors_anywhere(config, sizes, zero_at, k):
    """Zero-size tensors at any position of a kernel group (and of the groups the size caps make), every
    mode of level 1 and of the meta levels, with and without their m, k = 1..3."""
    sizes = [*sizes[:zero_at], 0, *sizes[zero_at:]]
    assume(sum(size > GROUP_ELEMENTS for size in sizes) <= 1)  # large tensors sparingly: the loop is slow
    _assert_fused_matches_loop_on(sizes, {"lr": 1e-2, "k": k, "weight_decay": 0.1, **config})


_STATE_CASES = [
    (
        "exp_avg",
        torch.zeros(3),
        r"The size of state 'exp_avg' \(3,\) must match the size of parameter 1 \(64, 64\)",
    ),
    ("exp_avg_sq", torch.zeros(64), r"The size of state 'exp_avg_sq' \(64,\) must match the size of parameter 1"),
    (
        "exp_avg",
        torch.zeros(64, 64, dtype=torch.float64),
        r"state 'exp_avg' of parameter 1 has dtype torch.float64",
    ),
    ("exp_avg", torch.zeros(64, 64, device="meta"), r"must be on the parameters' device cpu"),
    ("exp_avg", torch.zeros(64, 64).to_sparse(), r"state 'exp_avg' of parameter 1 has layout torch.sparse_coo"),
    ("step", torch.zeros(3), r"state 'step' of parameter 1 must be a one-element tensor, got shape \(3,\)"),
    ("exp_avg_sq_2", torch.zeros(3), r"The size of state 'exp_avg_sq_2' \(3,\) of parameter 1 must be one element"),
]
"""(state key, the value put there behind the optimizer's back, the error it must raise)."""


@pytest.mark.parametrize(
    "k,key,value,message",
    [(k, *case) for k in (1, 2) for case in _STATE_CASES if k == 2 or not case[0].endswith("_2")],  # k = 1: no level 2
)
def test_fused_step_checks_every_tensor_before_the_kernel(k, key, value, message):
    """A state changed behind the optimizer's back raises RuntimeError naming the key and the parameter, on
    the C++ kernel's path (k = 2) and on torch's fused kernel's (k = 1), instead of corrupting memory."""
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(64, 64))]
    optimizer = KAdam(params, k=k, fused=True)
    _run(params, optimizer, 1)
    before = [p.detach().clone() for p in params]
    optimizer.state[params[1]][key] = value
    with pytest.raises(RuntimeError, match=message):
        _run(params, optimizer, 1)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
