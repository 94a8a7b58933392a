"""The Triton kernel compiles for an H100/H200 (sm_90) without a GPU.

The interpreter (test_triton_kernel.py) checks the arithmetic but not Triton's compiler, which rejects
programs the interpreter runs (types, constexpr use, tuple arguments). Triton compiles to a cubin with
its bundled ptxas on any machine; here its driver is replaced, for the duration of each test, by one
that names the target, and every kernel variant a configuration launches is compiled instead of run.
Checked: each compiles, uses no local memory (no register spills), and its full-block path loads and
stores 128 bits per instruction.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from kadam.vocabulary import Level

try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
except ImportError as error:  # CI installs it (make test: pip install -e '.[triton]'); never skip silently
    raise ImportError(
        "the Triton kernel's tests need triton (pip install -e '.[triton]', as `make test` does)"
    ) from error

import kadam.optimizer._triton as kernel_module

if kernel_module._is_interpreted():  # TRITON_INTERPRET=1 in this whole session: nothing to compile
    pytest.skip(
        "TRITON_INTERPRET=1 is set for this session: the kernels are interpreted, not compiled", allow_module_level=True
    )


def Lvl(beta: float, gamma: float, eps: float, tensor_mode: bool) -> Level:
    """A :class:`kadam.vocabulary.Level` from (β, γ, ε, tensor mode)."""
    return Level(beta, gamma, eps, "tensor" if tensor_mode else "elementwise")


class _TargetDriver:
    """Just enough of a Triton driver to compile for ``target`` (nothing is launched)."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


class _Compiler:
    """Stands in for a kernel: ``kernel[grid](*args)`` compiles that variant and records it."""

    def __init__(self, kernel, compiled: list) -> None:
        self.kernel = kernel
        self.compiled = compiled

    def __getitem__(self, grid):
        def compile_variant(*args, **kwargs):
            self.compiled.append((self.kernel.fn.__name__, kwargs, self.kernel.warmup(*args, grid=grid, **kwargs)))

        return compile_variant


@pytest.fixture
def compile_for_sm90(monkeypatch):
    compiled: list = []
    kernels = (kernel_module._level_pass_kernel, kernel_module._tensor_level_finish_kernel)
    previous = getattr(driver, "_active", None)
    driver.set_active(_TargetDriver(GPUTarget("cuda", 90, 32)))
    monkeypatch.setattr(kernel_module, "_level_pass_kernel", _Compiler(kernels[0], compiled))
    monkeypatch.setattr(kernel_module, "_tensor_level_finish_kernel", _Compiler(kernels[1], compiled))
    monkeypatch.setattr(kernel_module, "_is_interpreted", lambda: True)  # let CPU tensors through
    try:
        yield compiled
    finally:
        driver._active = previous
        for kernel in kernels:
            kernel.device_caches.clear()  # compiled for a fake device 0: never reuse for a real one


def _resources(cubin: bytes) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "kernel.cubin")
        Path(path).write_bytes(cubin)
        return subprocess.run([str(tool), "-res-usage", path], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    "levels,options",
    [
        # The default 2-Adam with AdamW decay, float lr: pass 1, finish, pass 2 (replay).
        ([Lvl(0.9, 0.999, 1e-8, False), Lvl(0.0, 0.999, 1e-8, True)], {"weight_decay": 0.01, "decoupled": True}),
        # Every code path at once: L2 decay, maximize, GradScaler, tensor lr, resumed level, replay from
        # the gradient through a β = 0 elementwise level, a kept tensor-mode m.
        (
            [
                Lvl(0.0, 0.99, 1e-8, True),
                Lvl(0.0, 0.99, 1e-8, False),
                Lvl(0.5, 0.999, 1e-8, True),
                Lvl(0.0, 0.999, 1e-8, True),
            ],
            {
                "weight_decay": 0.01,
                "decoupled": False,
                "maximize": True,
                "grad_scale": torch.tensor(2.0),
                "found_inf": torch.tensor(0.0),
                "lr": torch.tensor(1e-3),
                "step_offsets": [[0.0], [0.0], [1.0], [0.0]],
            },
        ),
    ],
    ids=["k2-default", "k4-every-path"],
)
def test_kernels_compile_for_sm90_without_spills(compile_for_sm90, levels, options):
    size = 3 * kernel_module.BLOCK + 5
    options = {"lr": 1e-3, "maximize": False, **options}
    kernel_module.triton_fused_kadam_(
        [torch.zeros(size)],
        [torch.ones(size)],
        [None if level.beta == 0.0 else [torch.zeros(size)] for level in levels],
        [[torch.zeros(()) if level.tensor_mode else torch.zeros(size)] for level in levels],
        [torch.tensor(1.0)],
        levels=levels,
        **options,
    )
    passes = sum(1 for level in levels if level.tensor_mode) + 1
    names = [name for name, _, _ in compile_for_sm90]
    assert names.count("_level_pass_kernel") == passes
    assert names.count("_tensor_level_finish_kernel") == passes - 1
    for name, arguments, compiled in compile_for_sm90:
        assert compiled.asm["cubin"], name
        usage = _resources(compiled.asm["cubin"])
        assert re.search(r"LOCAL:0\b", usage) and re.search(r"STACK:0\b", usage), (name, usage)
        if name == "_level_pass_kernel":
            ptx = compiled.asm["ptx"]
            first, end = arguments["FIRST"], arguments["END"]
            # A pass stores elements unless it only sums squares for a tensor-mode level with β = 0
            # (and, being the first, has no unscaled gradient to store).
            stores_elements = (
                end == len(levels) or first < end or levels[end].beta != 0.0 or (first == 0 and "grad_scale" in options)
            )
            assert "ld.global.v4.b32" in ptx, (first, end)
            assert ("st.global.v4.b32" in ptx) == stores_elements, (first, end)
