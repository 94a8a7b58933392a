"""KAdam(fused=True)'s dispatch to the Triton kernel (``kadam.optimizer._triton``), without a GPU.

The dispatcher sends CUDA tensors to the Triton kernel (every configuration but exactly Adam). Here a
child process started with ``TRITON_INTERPRET=1`` (as in test_triton_kernel.py: the variable must be
set before triton is imported) adds "cpu" to the private ``_TRITON_DEVICE_TYPES``, so that
``KAdam(fused=True)`` on CPU tensors goes through ``_fused_kadam`` → ``_triton_fused_kadam`` → the
interpreted kernel: the moments passed per level (``None`` for β₁ = 0), the step counts (incremented
once, by the kernel), the step offsets of a level added at a resume, GradScaler's ``grad_scale`` and
``found_inf``. Parameters and every state tensor are compared with the loop implementation
(``KAdam(foreach=False)``) to 1e-6 relative to the largest magnitude (float32).
"""

from __future__ import annotations

import multiprocessing
import os
import traceback

import pytest
import torch

import kadam.optimizer.kadam as kadam_module
from kadam import KAdam
from kadam.optimizer.levels import resolve_levels

try:
    import triton  # noqa: F401
except ImportError as error:  # make test installs it (pip install -e '.[triton]'); never skip silently
    raise ImportError("the Triton dispatch tests need triton (pip install -e '.[triton]')") from error

TOLERANCE = 1e-6


def _run_case(case, *args):
    """Runs in the child: the case's AssertionError comes back with its traceback in the message."""
    try:
        case(*args)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{traceback.format_exc()}") from None


@pytest.fixture(scope="module")
def interpreter():
    """One child process for the whole file, started with TRITON_INTERPRET=1."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pool = multiprocessing.get_context("spawn").Pool(1)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    with pool:
        yield lambda case, *args: pool.apply(_run_case, (case, *args))


def _route_cpu_to_triton() -> list[int]:
    """In the child: CPU device groups go to the Triton path; returns a list counting its calls."""
    import kadam.optimizer._triton as triton_module  # noqa: PLC0415 (only in the interpreter's process)

    assert triton_module._is_interpreted(), "TRITON_INTERPRET=1 must be set before triton is imported"
    assert kadam_module._TRITON_DTYPES == triton_module.TRITON_DTYPES
    torch.set_num_threads(1)
    kadam_module._TRITON_DEVICE_TYPES = ("cpu", "cuda")
    calls = [0]
    if not hasattr(kadam_module, "_unwrapped_triton_fused_kadam"):
        kadam_module._unwrapped_triton_fused_kadam = kadam_module._triton_fused_kadam

    def counted(*args, **kwargs):
        calls[0] += 1
        return kadam_module._unwrapped_triton_fused_kadam(*args, **kwargs)

    kadam_module._triton_fused_kadam = counted
    return calls


def _params(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), ()]
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]


def _set_grads(params, step: int, scale: float = 1.0) -> None:
    generator = torch.Generator().manual_seed(100 + step)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) * scale


def _assert_close(fused_params, fused_optimizer, loop_params, loop_optimizer, label: str) -> None:
    for j, (a, b) in enumerate(zip(fused_params, loop_params)):
        error = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)
        assert error <= TOLERANCE, f"{label}: parameter {j} differs by {error:.3g} (relative)"
        fused_state, loop_state = fused_optimizer.state[a], loop_optimizer.state[b]
        assert sorted(fused_state) == sorted(loop_state), (
            f"{label}: state keys {sorted(fused_state)} != {sorted(loop_state)}"
        )
        for key, expected in loop_state.items():
            actual = fused_state[key]
            if isinstance(expected, torch.Tensor):
                scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1e-30)
                error = (actual - expected).abs().max().item() / scale if expected.numel() else 0.0
                assert error <= TOLERANCE, f"{label}: state {key!r} of parameter {j} differs by {error:.3g}"
            else:
                assert actual == expected, f"{label}: state {key!r} of parameter {j}: {actual} != {expected}"


def _case_matches_loop(options: dict, steps: int) -> None:
    calls = _route_cpu_to_triton()
    fused_params, loop_params = _params(0), _params(0)
    fused = KAdam(fused_params, lr=1e-2, fused=True, **options)
    loop = KAdam(loop_params, lr=1e-2, foreach=False, **options)
    for step in range(steps):
        for params, optimizer in ((fused_params, fused), (loop_params, loop)):
            _set_grads(params, step)
            optimizer.step()
    assert calls[0] == steps, f"the Triton path ran {calls[0]} times in {steps} steps"
    _assert_close(fused_params, fused, loop_params, loop, str(options))


CONFIGURATIONS = [
    {"k": 1, "norm": "tensor"},
    {"k": 2},
    {"k": 3},
    {"k": 2, "meta_norm": "elementwise"},
    {"k": 3, "meta_norm": "elementwise"},
    {"k": 2, "meta_betas": (0.9, 0.99)},
    {"k": 2, "betas": (0.0, 0.999), "maximize": True},
]


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "coupled"])
@pytest.mark.parametrize(
    "options", CONFIGURATIONS, ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items())
)
def test_fused_step_on_the_triton_path_matches_the_loop(interpreter, options, decoupled):
    interpreter(_case_matches_loop, {**options, "decoupled_weight_decay": decoupled, "weight_decay": 0.1}, 3)


def _case_resume_adds_a_level() -> None:
    """k = 2 for 2 steps, then resumed as k = 3: level 3 counts its bias corrections from step 2."""
    calls = _route_cpu_to_triton()
    results = []
    for flags in ({"fused": True}, {"foreach": False}):
        params = _params(1)
        first = KAdam(params, lr=1e-2, k=2, **flags)
        for step in range(2):
            _set_grads(params, step)
            first.step()
        second = KAdam(params, lr=1e-2, k=3, **flags)
        second.load_state_dict(first.state_dict())
        for step in range(2, 4):
            _set_grads(params, step)
            second.step()
        results.append((params, second))
    assert calls[0] == 4
    assert results[0][1].state[results[0][0][0]]["step_offset_3"] == 2.0
    _assert_close(*results[0], *results[1], "resume k=2 -> k=3")


def test_resumed_level_step_offsets_reach_the_kernel(interpreter):
    interpreter(_case_resume_adds_a_level)


def _case_grad_scaler(options: dict) -> None:
    """GradScaler's protocol: grads scaled by 4 and unscaled by the kernel; a found_inf step changes nothing."""
    calls = _route_cpu_to_triton()
    fused_params, loop_params = _params(2), _params(2)
    fused = KAdam(fused_params, lr=1e-2, fused=True, **options)
    loop = KAdam(loop_params, lr=1e-2, foreach=False, **options)
    fused.grad_scale = torch.tensor(4.0)
    for step in range(3):
        _set_grads(loop_params, step)
        loop.step()
        _set_grads(fused_params, step, scale=4.0)
        fused.found_inf = torch.tensor(0.0)
        fused.step()
        if step == 1:  # an overflow step: nothing may change
            before = [p.detach().clone() for p in fused_params]
            states = [
                {
                    key: value.clone() if isinstance(value, torch.Tensor) else value
                    for key, value in fused.state[p].items()
                }
                for p in fused_params
            ]
            _set_grads(fused_params, 99, scale=4.0)
            fused.found_inf = torch.tensor(1.0)
            fused.step()
            for p, old, state in zip(fused_params, before, states):
                assert torch.equal(p.detach(), old), "a found_inf step changed a parameter"
                for key, value in state.items():
                    now = fused.state[p][key]
                    same = torch.equal(now, value) if isinstance(value, torch.Tensor) else now == value
                    assert same, f"a found_inf step changed state {key!r}"
    assert calls[0] == 4
    _assert_close(fused_params, fused, loop_params, loop, f"GradScaler {options}")


@pytest.mark.parametrize("options", [{"k": 2}, {"k": 2, "betas": (0.0, 0.999), "decoupled_weight_decay": False}])
def test_grad_scale_and_found_inf_reach_the_kernel(interpreter, options):
    interpreter(_case_grad_scaler, options)


def test_fused_devices_include_cuda_for_every_configuration_with_triton():
    for options in ({"k": 1}, {"k": 1, "norm": "tensor"}, {"k": 2}, {"k": 3, "meta_norm": "elementwise"}):
        assert "cuda" in kadam_module.fused_devices(resolve_levels(**options)), options


def test_import_kadam_does_not_import_triton():
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = "import sys, kadam, kadam.optimizer.kadam as m; m.fused_devices(m.resolve_levels(k=2)); print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_float64_on_the_triton_path_raises_torchs_style_error(monkeypatch):
    """The Triton kernel has no float64 arithmetic: fused=True raises at the first step (as torch's fused
    optimizers raise for an unsupported dtype) instead of silently running another implementation."""
    monkeypatch.setattr(kadam_module, "_TRITON_DEVICE_TYPES", ("cpu", "cuda"))
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    param.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="runs the Triton kernel, which steps parameters of dtype"):
        KAdam([param], k=2, fused=True).step()
    assert param.detach().eq(0).all()


BFLOAT16_UNIT = 2.0**-7


def _case_state_dtype_matches_the_loop(options: dict, param_dtype: torch.dtype) -> None:
    """Moments in bfloat16 (``state_dtype`` or bfloat16 parameters with stochastic rounding) on the Triton path
    against the loop: the same rounding of the same float32 values, so the same stored moments except where a
    float32 value differs by a few units between the two (at most 1 in 10³ moments, by one bfloat16 unit);
    float32 parameters to 1e-6 relative to the largest but where such a moment moved them (at most 1 in 10³,
    each by at most lr·2⁻⁵ per step: one bfloat16 unit of a moment, times an update of up to 4), bfloat16
    parameters to two bfloat16 units of the largest per step (the loop rounds θ twice a step, after the decay
    and after the update, the kernel once, and an update below half a unit is kept or lost by that)."""
    calls = _route_cpu_to_triton()
    results = []
    for flags in ({"fused": True}, {"foreach": False}):
        params = [torch.nn.Parameter(p.detach().to(param_dtype)) for p in _params(3)]
        params.append(torch.nn.Parameter(torch.randn(3000, generator=torch.Generator().manual_seed(4)).to(param_dtype)))
        optimizer = KAdam(params, lr=1e-2, **flags, **options)
        for step in range(4):
            generator = torch.Generator().manual_seed(100 + step)
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator).to(param_dtype)
            optimizer.step()
        results.append((params, optimizer))
    assert calls[0] == 4
    (fused_params, fused), (loop_params, loop) = results
    differing = total = 0
    for j, (a, b) in enumerate(zip(fused_params, loop_params)):
        scale = max(b.float().abs().max().item(), 1e-30)
        off = (a.float() - b.float()).abs()
        if param_dtype == torch.float32:
            assert int((off > 1e-6 * scale).sum()) <= 1e-3 * off.numel() + 1, f"{options}: parameter {j}"
            assert off.max().item() <= 1e-2 * 2.0**-5 * 4, f"{options}: parameter {j} differs by {off.max().item()}"
        else:
            assert off.max().item() <= 2 * 4 * BFLOAT16_UNIT * scale, f"{options}: parameter {j}"
        for key, expected in loop.state[b].items():
            actual = fused.state[a][key]
            assert actual.dtype == expected.dtype, key
            if key == "step":
                assert torch.equal(actual, expected)
                continue
            assert expected.dtype == torch.bfloat16, key
            magnitude = torch.maximum(actual.double().abs(), expected.double().abs())
            spacing = torch.exp2(torch.floor(torch.log2(magnitude.clamp_min(1e-38)))) * BFLOAT16_UNIT
            assert ((actual.double() - expected.double()).abs() <= spacing).all(), f"{options}: {key} of {j}"
            differing += int((actual != expected).sum())
            total += expected.numel()
    assert differing <= 1e-3 * total, f"{options}: {differing} of {total} moments differ"


STATE_OPTIONS = [
    {"k": 1, "state_dtype": torch.bfloat16},
    {"k": 2, "state_dtype": torch.bfloat16},
    {"k": 3, "state_dtype": torch.bfloat16, "stochastic_rounding": True},
    {"k": 2, "state_dtype": torch.bfloat16, "stochastic_rounding": True},
    {"k": 2, "state_dtype": torch.bfloat16, "meta_betas": (0.9, 0.99), "meta_norm": "elementwise"},
    {"k": 2, "norm": "tensor", "meta_betas": (0.5, 0.99), "state_dtype": torch.bfloat16, "stochastic_rounding": True},
]


@pytest.mark.parametrize("options", STATE_OPTIONS, ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()))
def test_bfloat16_state_on_the_triton_path_matches_the_loop(interpreter, options):
    interpreter(_case_state_dtype_matches_the_loop, options, torch.float32)


@pytest.mark.parametrize("k", [1, 2])
def test_stochastic_rounding_of_bfloat16_parameters_on_the_triton_path_matches_the_loop(interpreter, k):
    interpreter(_case_state_dtype_matches_the_loop, {"k": k, "stochastic_rounding": True}, torch.bfloat16)
