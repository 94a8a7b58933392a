"""The Triton k-Adam kernel (``kadam.optimizer._triton``) run by Triton's interpreter on CPU tensors.

Triton reads ``TRITON_INTERPRET`` when a function is decorated with ``triton.jit``, including its own
library functions (``tl.sum``) when ``triton`` is first imported: the interpreter works only in a
process that had the variable set before importing triton. So the cases run in one child process
(``spawn``, started with ``TRITON_INTERPRET=1`` in its environment); each test below sends its case
there and fails with the case's assertion. Nothing leaks into this process or other test files, where
``kadam.optimizer._triton`` stays the compiled kernel. The interpreter runs each program's operations
with numpy, so the arithmetic is the kernel's own (float32, IEEE division and square root); only the
GPU's scheduling and instruction selection are not exercised (see test_triton_compile.py).

Tolerances: float32 trajectories and states agree with the loop implementation (``KAdam(foreach=False)``)
to 1e-6 relative to the largest magnitude, and with the float64 reference (THEORY §1) to 1e-6.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback

import numpy as np
import pytest
import torch

from kadam import KAdam
from kadam.vocabulary import Level
from tests.optimizer.reference import reference_kadam

try:
    import triton  # noqa: F401
except ImportError as error:  # CI installs it (make test: pip install -e '.[triton]'); never skip silently
    raise ImportError(
        "the Triton kernel's tests need triton (pip install -e '.[triton]', as `make test` does)"
    ) from error

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK = 2048  # kadam.optimizer._triton.BLOCK, checked in the child (the module is imported only there)


def _kernel_module():
    """kadam.optimizer._triton, imported in the child process, where its kernels are interpreted."""
    import kadam.optimizer._triton as module  # noqa: PLC0415 (only in the interpreter's process)

    assert module._is_interpreted(), "TRITON_INTERPRET=1 must be set before triton is imported"
    assert module.BLOCK == BLOCK
    return module


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


class _Kernel:
    """Attribute access to the interpreted module, resolved in the child at first use."""

    def __getattr__(self, name):
        return getattr(_kernel_module(), name)


kernel = _Kernel()

# Zero-size, one element, odd (2-D), one masked block, one full block plus a one-element tail.
SHAPES = [(0,), (1,), (3, 5), (1000,), (BLOCK + 1,)]


def Lvl(beta: float, gamma: float, eps: float, tensor_mode: bool) -> Level:
    """A :class:`kadam.vocabulary.Level` from (β, γ, ε, tensor mode)."""
    return Level(beta, gamma, eps, "tensor" if tensor_mode else "elementwise")


DEFAULT_2 = [Lvl(0.9, 0.999, 1e-8, False), Lvl(0.0, 0.999, 1e-8, True)]
CONFIGS = {
    "k1-adam": [Lvl(0.9, 0.999, 1e-8, False)],
    "k2-default": DEFAULT_2,
    "k3-default": DEFAULT_2 + [Lvl(0.0, 0.999, 1e-8, True)],
    # Tensor mode at level 1, a kept m at the tensor-mode level 2 (resumes from stored m).
    "k2-tensor-kept-m": [Lvl(0.9, 0.999, 1e-8, True), Lvl(0.5, 0.99, 1e-8, True)],
    # β = 0 tensor-mode level 1: the next pass replays its input from the gradient; eps = 0.
    "k2-replay-gradient": [Lvl(0.0, 0.99, 0.0, True), Lvl(0.9, 0.999, 1e-8, False)],
    # Replay through a β = 0 elementwise level and a β = 0 tensor-mode level down to a kept m.
    "k4-replay-chain": [
        Lvl(0.9, 0.999, 1e-8, False),
        Lvl(0.0, 0.99, 1e-6, False),
        Lvl(0.0, 0.999, 1e-8, True),
        Lvl(0.0, 0.9, 1e-8, True),
    ],
    "k2-elementwise": [Lvl(0.9, 0.999, 1e-8, False), Lvl(0.8, 0.99, 1e-8, False)],
}
DECAYS = {
    "adamw": {"weight_decay": 0.1, "decoupled": True, "maximize": False},
    "adam-l2-maximize": {"weight_decay": 0.1, "decoupled": False, "maximize": True},
    "none-maximize": {"weight_decay": 0.0, "decoupled": True, "maximize": True},
}


def _state_keys(level: int) -> tuple[str, str]:
    return ("exp_avg", "exp_avg_sq") if level == 1 else (f"exp_avg_{level}", f"exp_avg_sq_{level}")


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().clamp_min(1e-30)
    return ((actual - expected).abs().max() / scale).item()


def _initial(shapes, dtype=torch.float32, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for shape in shapes]


def _gradients(shapes, steps, dtype=torch.float32, seed=1) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes] for _ in range(steps)]


class KernelRun:
    """Parameters and state stepped by the kernel (β = 0 levels keep no first moment)."""

    def __init__(self, params, levels, state_dtype=None):
        self.params = [p.clone() for p in params]
        self.levels = levels

        def zeros(p, scalar=False):
            dtype = state_dtype or (p.real.dtype if scalar else p.dtype)
            return torch.zeros((), dtype=dtype) if scalar else torch.zeros_like(p, dtype=state_dtype or p.dtype)

        self.exp_avgs = [None if lv.beta == 0.0 else [zeros(p) for p in self.params] for lv in levels]
        self.exp_avg_sqs = [[zeros(p, lv.tensor_mode) for p in self.params] for lv in levels]
        self.steps = [torch.tensor(0.0) for _ in self.params]

    def step(self, grads, lr=1e-2, **options):
        kernel.triton_fused_kadam_(
            self.params,
            grads,
            self.exp_avgs,
            self.exp_avg_sqs,
            self.steps,
            levels=self.levels,
            lr=lr,
            **{"weight_decay": 0.0, "decoupled": True, "maximize": False, **options},
        )

    def snapshot(self) -> list[torch.Tensor]:
        tensors = [*self.params, *self.steps]
        for ms, vs in zip(self.exp_avgs, self.exp_avg_sqs):
            tensors += [*(ms or []), *vs]
        return [t.clone() for t in tensors]


def _loop(params, levels, lr=1e-2, weight_decay=0.0, decoupled=True, maximize=False):
    torch_params = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = KAdam(
        torch_params,
        lr=lr,
        k=len(levels),
        betas=[(lv.beta, lv.gamma) for lv in levels],
        eps=[lv.eps for lv in levels],
        norm=["tensor" if lv.tensor_mode else "elementwise" for lv in levels],
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled,
        maximize=maximize,
        foreach=False,
    )
    return torch_params, optimizer


def _assert_matches_loop(run: KernelRun, torch_params, optimizer, tolerance: float) -> None:
    """θ per tensor; each state relative to its largest magnitude over all tensors (a one-element
    tensor's m can cancel to a few ulps of its inputs, where the two roundings differ by an ulp)."""
    for j, (actual, expected) in enumerate(zip(run.params, torch_params)):
        assert _relative_error(actual, expected) <= tolerance, f"parameter {j}"
        assert run.steps[j].item() == optimizer.state[expected]["step"].item()
    nonempty = [j for j, p in enumerate(torch_params) if p.numel() > 0]
    for i in range(len(run.levels)):
        for key, kernel_states in zip(_state_keys(i + 1), (run.exp_avgs[i], run.exp_avg_sqs[i])):
            if kernel_states is None:  # β = 0: no first moment
                continue
            actual = torch.cat([kernel_states[j].reshape(-1) for j in nonempty])
            expected = torch.cat([optimizer.state[torch_params[j]][key].reshape(-1) for j in nonempty])
            assert _relative_error(actual, expected) <= tolerance, key


def _case_float32_matches_loop(config, decay):
    levels, options = CONFIGS[config], DECAYS[decay]
    initial = _initial(SHAPES)
    run = KernelRun(initial, levels)
    torch_params, optimizer = _loop(initial, levels, **options)
    for grads in _gradients(SHAPES, 2):
        for param, grad in zip(torch_params, grads):
            param.grad = grad.clone()
        optimizer.step()
        run.step([g.clone() for g in grads], **options)
    _assert_matches_loop(run, torch_params, optimizer, 1e-6)


def _case_matches_float64_reference_with_resumed_level():
    """Level 2 added at a resume after 4 steps: its bias correction counts from there (step offsets)."""
    shapes = [(7,), (1000,)]
    levels = [Lvl(0.9, 0.999, 1e-8, False), Lvl(0.5, 0.99, 1e-8, True)]
    initial = _initial(shapes)
    run = KernelRun(initial, levels)
    generator = torch.Generator().manual_seed(3)
    level1 = [(torch.randn(s, generator=generator) * 0.1, torch.rand(s, generator=generator) * 0.01) for s in shapes]
    for j, (m, v) in enumerate(level1):
        run.exp_avgs[0][j].copy_(m)
        run.exp_avg_sqs[0][j].copy_(v)
        run.steps[j].fill_(4.0)
    grads = _gradients(shapes, 4, seed=5)
    for step_grads in grads:
        kernel.triton_fused_kadam_(
            run.params,
            [g.clone() for g in step_grads],
            run.exp_avgs,
            run.exp_avg_sqs,
            run.steps,
            levels=levels,
            lr=1e-2,
            weight_decay=0.1,
            decoupled=True,
            maximize=False,
            step_offsets=[[0.0, 0.0], [4.0, 4.0]],
        )
    expected = reference_kadam(
        [t.double().numpy() for t in initial],
        lambda n, thetas: [g.double().numpy() for g in grads[n - 1]],
        4,
        lr=1e-2,
        levels=[(lv.beta, lv.gamma, lv.eps, "tensor" if lv.tensor_mode else "elementwise") for lv in levels],
        weight_decay=0.1,
        decoupled=True,
        start_steps=[-4, 0],  # level 1 had run 4 steps before the reference's step 1
        initial_state=[
            [(m.double().numpy(), v.double().numpy()), (np.zeros(s), np.zeros(()))] for (m, v), s in zip(level1, shapes)
        ],
    )
    for actual, reference in zip(run.params, expected):
        assert _relative_error(actual, torch.from_numpy(reference)) <= 1e-6
    assert [s.item() for s in run.steps] == [8.0, 8.0]


def _case_zero_size_tensor_keeps_its_scalar_state_finite():
    """mean(x²) over no elements is taken as 0: a tensor-mode v decays by γ, nothing becomes NaN."""
    run = KernelRun([torch.zeros(0), torch.ones(3)], DEFAULT_2)
    run.exp_avg_sqs[1][0].fill_(2.0)
    run.step([torch.zeros(0), torch.ones(3)])
    assert run.exp_avg_sqs[1][0].item() == pytest.approx(2.0 * 0.999, rel=1e-6)
    assert run.steps[0].item() == 1.0
    assert torch.isfinite(run.params[1]).all()


def _case_low_precision_parameters_with_float32_state(dtype):
    """Each step equals the float32 loop's step from the same θ, rounded once to the parameter dtype."""
    shapes = [(7,), (BLOCK + 1,)]
    levels = DEFAULT_2
    initial = _initial(shapes, dtype)
    run = KernelRun(initial, levels, state_dtype=torch.float32)
    torch_params, optimizer = _loop([p.float() for p in initial], levels, weight_decay=0.1)
    ulp = torch.finfo(dtype).eps
    for grads in _gradients(shapes, 3, dtype):
        for param, low, grad in zip(torch_params, run.params, grads):
            param.data.copy_(low.float())
            param.grad = grad.float()
        optimizer.step()
        run.step([g.clone() for g in grads], weight_decay=0.1)
        for low, param in zip(run.params, torch_params):
            assert low.dtype == dtype
            expected = param.detach()
            assert ((low.float() - expected).abs() <= ulp * expected.abs() + torch.finfo(dtype).tiny).all()
    for j, param in enumerate(torch_params):
        state = optimizer.state[param]
        assert _relative_error(run.exp_avgs[0][j], state["exp_avg"]) <= 1e-6
        assert _relative_error(run.exp_avg_sqs[0][j], state["exp_avg_sq"]) <= 1e-6
        assert _relative_error(run.exp_avg_sqs[1][j], state["exp_avg_sq_2"]) <= 1e-6


def _case_low_precision_state_in_parameter_dtype(dtype):
    """States kept in the parameter's dtype stay in it; the trajectory follows float32 math closely.

    (bfloat16 only: float16 storage of v = (1 - γ) g² falls into float16's subnormals, a loss that
    the loop with float16 state has as well; float16 parameters are tested with float32 state.)
    """
    shapes = [(7,), (1000,)]
    initial = _initial(shapes, dtype)
    run = KernelRun(initial, DEFAULT_2)
    torch_params, optimizer = _loop([p.float() for p in initial], DEFAULT_2)
    for grads in _gradients(shapes, 3, dtype):
        for param, grad in zip(torch_params, grads):
            param.grad = grad.float()
        optimizer.step()
        run.step([g.clone() for g in grads])
    assert all(t.dtype == dtype for t in run.exp_avgs[0] + run.exp_avg_sqs[0] + run.exp_avg_sqs[1])
    ulp = torch.finfo(dtype).eps
    for low, param in zip(run.params, torch_params):
        assert _relative_error(low.float(), param) <= 4 * ulp


def _case_grad_scale_unscales_in_place_and_found_inf_skips_everything(levels):
    shapes = [(7,), (BLOCK + 3,)]
    initial = _initial(shapes)
    run = KernelRun(initial, levels)
    torch_params, optimizer = _loop(initial, levels)
    scale = torch.tensor(4.0)  # a power of two: unscaling is exact
    for step, grads in enumerate(_gradients(shapes, 3)):
        scaled = [g * 4.0 for g in grads]
        if step == 1:
            before = run.snapshot()
            grads_before = [g.clone() for g in scaled]
            run.step(scaled, grad_scale=scale, found_inf=torch.tensor(1.0))
            assert all(torch.equal(a, b) for a, b in zip(before, run.snapshot()))
            assert all(torch.equal(a, b) for a, b in zip(grads_before, scaled))  # not unscaled either
            continue
        run.step(scaled, grad_scale=scale, found_inf=torch.tensor(0.0))
        assert all(torch.equal(s, g) for s, g in zip(scaled, grads))  # the unscaled gradient stored back
        for param, grad in zip(torch_params, grads):
            param.grad = grad.clone()
        optimizer.step()
    _assert_matches_loop(run, torch_params, optimizer, 1e-6)
    assert [s.item() for s in run.steps] == [2.0, 2.0]


def _case_tensor_lr_equals_float_lr():
    shapes = [(7,), (1000,)]
    initial = _initial(shapes)
    with_float, with_tensor = KernelRun(initial, DEFAULT_2), KernelRun(initial, DEFAULT_2)
    for lr, grads in zip((1e-2, 3e-3), _gradients(shapes, 2)):
        with_float.step([g.clone() for g in grads], lr=lr, weight_decay=0.1)
        with_tensor.step([g.clone() for g in grads], lr=torch.tensor(lr), weight_decay=0.1)
    assert all(torch.equal(a, b) for a, b in zip(with_float.snapshot(), with_tensor.snapshot()))


def _case_many_tensors_several_launches_and_dtypes():
    """More tensors than one launch takes, in two dtypes; packing does not change a single bit."""
    shapes = [(n,) for n in range(1, 17)] + [(0,), (BLOCK + 5,)]
    levels = DEFAULT_2
    initial = _initial(shapes)
    mixed = [p if j % 3 else p.to(torch.bfloat16) for j, p in enumerate(initial)]
    grads = _gradients(shapes, 2)
    runs = []
    module = _kernel_module()
    default = module.TENSORS_PER_LAUNCH
    try:
        for per_launch in (default, 3):
            module.TENSORS_PER_LAUNCH = per_launch
            run = KernelRun(mixed, levels)
            for step_grads in grads:
                run.step([g.to(p.dtype) for g, p in zip(step_grads, mixed)])
            runs.append(run)
    finally:
        module.TENSORS_PER_LAUNCH = default
    assert all(torch.equal(a, b) for a, b in zip(runs[0].snapshot(), runs[1].snapshot()))
    float32 = [j for j, p in enumerate(mixed) if p.dtype == torch.float32]
    torch_params, optimizer = _loop([initial[j] for j in float32], levels)
    for step_grads in grads:
        for param, j in zip(torch_params, float32):
            param.grad = step_grads[j].clone()
        optimizer.step()
    for param, j in zip(torch_params, float32):
        assert _relative_error(runs[0].params[j], param) <= 1e-6


def _case_complex_and_non_contiguous_tensors():
    generator = torch.Generator().manual_seed(3)
    initial = [
        torch.randn(5, 7, dtype=torch.complex64, generator=generator),
        torch.randn(30, 40, generator=generator).t(),
    ]
    run = KernelRun(initial, DEFAULT_2)
    run.params[1] = initial[1].clone().t().contiguous().t()  # non-contiguous, as its state
    run.exp_avgs[0][1] = torch.zeros_like(run.params[1])
    run.exp_avg_sqs[0][1] = torch.zeros_like(run.params[1])
    assert not run.params[1].is_contiguous()
    torch_params, optimizer = _loop(initial, DEFAULT_2)
    for step in range(3):
        grads = [p.detach() * 0.5 + 0.1 * (step + 1) for p in torch_params]
        for param, grad in zip(torch_params, grads):
            param.grad = grad.clone()
        run.step([g.clone() for g in grads])
        optimizer.step()
    for actual, expected in zip(run.params, torch_params):
        if actual.is_complex():
            actual, expected = torch.view_as_real(actual), torch.view_as_real(expected.detach())
        assert _relative_error(actual, expected) <= 1e-6


def _case_bad_arguments_raise():
    params, grads = [torch.zeros(3)], [torch.zeros(3)]
    run = KernelRun(params, DEFAULT_2)
    with pytest.raises(ValueError, match="must be None exactly when the level's beta is 0"):
        kernel.triton_fused_kadam_(
            params,
            grads,
            [run.exp_avgs[0], [torch.zeros(3)]],
            run.exp_avg_sqs,
            run.steps,
            levels=DEFAULT_2,
            lr=1e-3,
            weight_decay=0.0,
            decoupled=True,
            maximize=False,
        )
    with pytest.raises(ValueError, match="one list per level"):
        kernel.triton_fused_kadam_(
            params,
            grads,
            run.exp_avgs[:1],
            run.exp_avg_sqs,
            run.steps,
            levels=DEFAULT_2,
            lr=1e-3,
            weight_decay=0.0,
            decoupled=True,
            maximize=False,
        )
    with pytest.raises(ValueError, match="lr must be"):
        kernel.triton_fused_kadam_(
            params,
            grads,
            run.exp_avgs,
            run.exp_avg_sqs,
            run.steps,
            levels=DEFAULT_2,
            lr=-1.0,
            weight_decay=0.0,
            decoupled=True,
            maximize=False,
        )
    with pytest.raises(RuntimeError, match="steps parameters of dtype"):
        kernel.triton_fused_kadam_(
            [torch.zeros(3, dtype=torch.float64)],
            [torch.zeros(3, dtype=torch.float64)],
            [[torch.zeros(3, dtype=torch.float64)], None],
            [[torch.zeros(3, dtype=torch.float64)], [torch.zeros((), dtype=torch.float64)]],
            run.steps,
            levels=DEFAULT_2,
            lr=1e-3,
            weight_decay=0.0,
            decoupled=True,
            maximize=False,
        )


def _case_stream_counts_match_the_documented_table():
    """Reads and writes per parameter element (module docstring), against torch's fused AdamW's 7."""
    assert kernel.stream_counts(CONFIGS["k1-adam"]) == (4, 3)
    assert kernel.stream_counts(DEFAULT_2) == (6, 3)
    assert kernel.stream_counts([DEFAULT_2[0], Lvl(0.5, 0.999, 1e-8, True)]) == (6, 4)
    assert kernel.stream_counts(CONFIGS["k2-elementwise"]) == (6, 5)
    assert kernel.stream_counts(CONFIGS["k3-default"]) == (8, 3)
    assert kernel.stream_counts(DEFAULT_2, weight_decay=0.1, decoupled=False, grad_scale=True) == (7, 4)


# The tests: each runs its case in the interpreter's process.


@pytest.mark.parametrize(
    "config,decay",
    [
        ("k1-adam", "adamw"),
        ("k1-adam", "adam-l2-maximize"),
        ("k2-default", "adamw"),
        ("k2-default", "adam-l2-maximize"),
        ("k2-default", "none-maximize"),
        ("k3-default", "adamw"),
        ("k2-tensor-kept-m", "adam-l2-maximize"),
        ("k2-replay-gradient", "adam-l2-maximize"),
        ("k2-replay-gradient", "adamw"),
        ("k4-replay-chain", "adamw"),
        ("k2-elementwise", "none-maximize"),
    ],
)
def test_float32_matches_loop(interpreter, config, decay):
    interpreter(_case_float32_matches_loop, config, decay)


def test_matches_float64_reference_with_resumed_level(interpreter):
    interpreter(_case_matches_float64_reference_with_resumed_level)


def test_zero_size_tensor_keeps_its_scalar_state_finite(interpreter):
    interpreter(_case_zero_size_tensor_keeps_its_scalar_state_finite)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_with_float32_state(interpreter, dtype):
    interpreter(_case_low_precision_parameters_with_float32_state, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision_state_in_parameter_dtype(interpreter, dtype):
    interpreter(_case_low_precision_state_in_parameter_dtype, dtype)


@pytest.mark.parametrize("config", ["k2-default", "k2-replay-gradient"])
def test_grad_scale_unscales_in_place_and_found_inf_skips_everything(interpreter, config):
    """k2-replay-gradient: the second pass re-reads the gradient the first pass stored unscaled."""
    interpreter(_case_grad_scale_unscales_in_place_and_found_inf_skips_everything, CONFIGS[config])


def test_tensor_lr_equals_float_lr(interpreter):
    interpreter(_case_tensor_lr_equals_float_lr)


def test_many_tensors_several_launches_and_dtypes(interpreter):
    interpreter(_case_many_tensors_several_launches_and_dtypes)


def test_complex_and_non_contiguous_tensors(interpreter):
    interpreter(_case_complex_and_non_contiguous_tensors)


def test_bad_arguments_raise(interpreter):
    interpreter(_case_bad_arguments_raise)


def test_stream_counts_match_the_documented_table(interpreter):
    interpreter(_case_stream_counts_match_the_documented_table)
