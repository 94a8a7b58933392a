r"""Fused k-Adam step (THEORY §1): every level of every tensor in as few passes over memory as possible.

An optimizer step is bound by memory bandwidth: with all levels elementwise it must read θ, g and the
2k moments and write θ and the 2k moments, 4·(3 + 4k) bytes per float32 parameter. A *tensor-mode*
level i needs :math:`\mathrm{mean}((x^{(i-1)})^2)` over the whole tensor before it can normalize, so
the CPU kernel (``csrc/fused_kadam_cpu.cpp``) splits the step into passes over all tensors:

* pass 1 reads g (and θ for coupled decay), runs the elementwise levels in registers up to the first
  tensor-mode level i, updates that level's :math:`m_i` (which needs only its input) and accumulates
  :math:`\sum (x^{(i-1)})^2`; the scalar :math:`v_i` and its denominator follow from the sum;
* the next pass re-reads :math:`m_i`, forms :math:`x^{(i)} = m_i/(\sqrt{v_i/(1-\gamma_i^n)}+\epsilon_i)
  /(1-\beta_i^n)` and carries on to the next tensor-mode level or to θ.

So the default 2-Adam (level 2 in tensor mode) streams 10 floats per parameter against AdamW's 7 (its
floor is 9), and an elementwise chain streams exactly the floor. The arithmetic follows the loop
implementation's operation order (float32 agrees with it to rounding); float16 and bfloat16 parameters
run float32 math and store each state once, rounded (a level after a tensor-mode level reads back that
rounded m), float64 runs double. Each pass splits the blocks of all tensors statically over
``torch.get_num_threads()`` OpenMP threads (the same libgomp torch loads), with one barrier per
tensor-mode level and none otherwise. The kernel allocates nothing proportional to the parameters: a few
scalars per tensor and one 1024-element buffer per thread.

The kernel is plain C++ built with the system compiler (``$CXX``, default ``c++``, with OpenMP) on the
first fused CPU step and cached under ``$KADAM_CACHE_DIR`` (default ``~/.cache/kadam``), keyed by a
hash of the source, flags, compiler and CPU; nothing compiles at import and a cached build loads in
milliseconds. It includes no torch headers, so the build takes about a second.

Off the CPU, the step runs torch's own fused Adam/AdamW kernel when it is exactly Adam (k = 1,
elementwise); any other configuration runs the foreach implementation after unscaling the gradients,
which is correct but not a fused kernel (and synchronizes once to read ``found_inf``).

GradScaler: as torch's fused optimizers do, gradients are divided by ``grad_scale`` (the unscaled
values are written back into ``.grad``) and a nonzero ``found_inf`` skips the step without touching
parameters, moments or step counts.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _view_as_real

if TYPE_CHECKING:
    from kadam.optimizer.kadam import Level

__all__ = ["FUSED_DTYPES", "check_fused_support", "fused_kernel_library"]

FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_SOURCE = Path(__file__).with_name("csrc") / "fused_kadam_cpu.cpp"
_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
_NATIVE_FLAGS = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else ["-mcpu=native"]


class _KernelArgs(ctypes.Structure):
    """Mirror of ``struct KAdamArgs`` in csrc/fused_kadam_cpu.cpp."""

    _fields_ = [
        ("n_tensors", ctypes.c_int64),
        ("n_levels", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("n_threads", ctypes.c_int32),
        ("decoupled_weight_decay", ctypes.c_int32),
        ("maximize", ctypes.c_int32),
        ("store_unscaled_grad", ctypes.c_int32),
        ("params", ctypes.POINTER(ctypes.c_void_p)),
        ("grads", ctypes.POINTER(ctypes.c_void_p)),
        ("exp_avgs", ctypes.POINTER(ctypes.c_void_p)),
        ("exp_avg_sqs", ctypes.POINTER(ctypes.c_void_p)),
        ("numels", ctypes.POINTER(ctypes.c_int64)),
        ("bias_correction1", ctypes.POINTER(ctypes.c_double)),
        ("bias_correction2_sqrt", ctypes.POINTER(ctypes.c_double)),
        ("betas", ctypes.POINTER(ctypes.c_double)),
        ("gammas", ctypes.POINTER(ctypes.c_double)),
        ("eps", ctypes.POINTER(ctypes.c_double)),
        ("tensor_modes", ctypes.POINTER(ctypes.c_int32)),
        ("lr", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("grad_scale", ctypes.POINTER(ctypes.c_float)),
    ]


_library: ctypes.CDLL | None = None
_library_lock = threading.Lock()


def _cache_dir() -> Path:
    if "KADAM_CACHE_DIR" in os.environ:
        return Path(os.environ["KADAM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kadam"


def _cpu_signature() -> str:
    """The CPU's feature flags (``-march=native`` code must not run on another CPU from a shared cache)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def _compiler() -> str:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(
            f"KAdam(fused=True) on CPU builds a small C++ kernel once, but no compiler {compiler!r} was "
            "found; install g++ (with OpenMP) or set $CXX, or use fused=False / foreach=True"
        )
    return compiler


def fused_kernel_library() -> ctypes.CDLL:
    """The compiled CPU kernel, built on first use into the cache directory (about 1 s) and reused."""
    global _library
    with _library_lock:
        if _library is not None:
            return _library
        compiler = _compiler()
        flags = _FLAGS + _NATIVE_FLAGS
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
        key = hashlib.sha256(
            "\0".join([_SOURCE.read_text(encoding="utf-8"), " ".join(flags), version, _cpu_signature()]).encode()
        ).hexdigest()[:16]
        path = _cache_dir() / f"fused_kadam_cpu-{key}.so"
        if not path.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:  # read-only home: build per user in the temporary directory
                path = Path(tempfile.gettempdir()) / f"kadam-{os.getuid()}" / path.name
                path.parent.mkdir(parents=True, exist_ok=True)
            # Build beside the target and rename, so concurrent processes never load a partial file.
            handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".so.partial")
            os.close(handle)
            result = subprocess.run(
                [compiler, *flags, str(_SOURCE), "-o", partial], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:  # e.g. a compiler without OpenMP: build the one-thread kernel
                serial = [flag for flag in flags if flag != "-fopenmp"]
                retry = subprocess.run(
                    [compiler, *serial, str(_SOURCE), "-o", partial], capture_output=True, text=True, check=False
                )
                if retry.returncode != 0:
                    os.unlink(partial)
                    raise RuntimeError(f"building the fused KAdam CPU kernel failed:\n{result.stderr}")
                warnings.warn(
                    f"the fused KAdam CPU kernel was built without OpenMP and runs on one thread:\n{result.stderr}",
                    UserWarning,
                    stacklevel=2,
                )
            os.replace(partial, path)
        library = ctypes.CDLL(str(path))
        library.kadam_fused_step.argtypes = [ctypes.POINTER(_KernelArgs)]
        library.kadam_fused_step.restype = ctypes.c_int
        _library = library
        return library


def check_fused_support(param_groups: list[dict]) -> None:
    """RuntimeError, as torch's ``fused=True`` raises, for parameters the fused step cannot take."""
    for group in param_groups:
        for param in group["params"]:
            if type(param.data) is not Tensor:  # a tensor subclass under the Parameter
                raise RuntimeError(
                    f"KAdam(fused=True) steps plain tensors; got a {type(param.data).__name__} parameter "
                    "(e.g. FSDP2's DTensor, whose tensor-mode levels need a global mean): use foreach=True"
                )
            dtype = param.real.dtype if param.is_complex() else param.dtype
            if dtype not in FUSED_DTYPES:
                raise RuntimeError(
                    f"KAdam(fused=True) supports parameters of dtype {', '.join(map(str, FUSED_DTYPES))} "
                    f"(and their complex types), got {param.dtype}"
                )


def _array(ctype: type, values: list) -> ctypes.Array:
    return (ctype * len(values))(*values)


def _fused_kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[tuple[list[Tensor], list[Tensor]]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: list[Level],
    lr: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    has_complex: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """Fused k-Adam (see the module docstring); arguments as :func:`kadam.optimizer.kadam.kadam`.

    ``grad_scale``/``found_inf`` are GradScaler's: gradients are divided by ``grad_scale`` and a
    nonzero ``found_inf`` skips the step without touching any state.
    """
    if not params:
        return
    flat_moments = [tensors for pair in moments for tensors in pair]
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, *flat_moments, steps], with_indices=True  # type: ignore[list-item]
    )
    for (device, _), ((device_params, device_grads, *device_moments, device_steps), indices) in grouped.items():
        group_params = cast(list[Tensor], device_params)
        group_grads = cast(list[Tensor], device_grads)
        group_moments = [cast(list[Tensor], tensors) for tensors in device_moments]
        group_steps = cast(list[Tensor], device_steps)
        group_level_steps = [[counts[j] for j in indices] for counts in level_steps]
        if has_complex:
            _view_as_real(group_params, group_grads)
            for i, level in enumerate(levels):
                _view_as_real(group_moments[2 * i], *([] if level.tensor_mode else [group_moments[2 * i + 1]]))
        device_scale = None if grad_scale is None else grad_scale.to(device, non_blocking=True)
        device_inf = None if found_inf is None else found_inf.to(device, non_blocking=True)
        arguments = (group_params, group_grads, group_moments, group_steps, group_level_steps)
        options = {
            "levels": levels,
            "lr": lr,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "grad_scale": device_scale,
            "found_inf": device_inf,
        }
        if device.type == "cpu":
            _cpu_fused_kadam(*arguments, **options)
        else:
            _torch_kernels_kadam(*arguments, **options)


def _check_dtypes(tensor_lists: list[list[Tensor]], dtype: torch.dtype) -> None:
    if dtype not in FUSED_DTYPES:
        raise RuntimeError(f"KAdam(fused=True) supports parameters of dtype {FUSED_DTYPES}, got {dtype}")
    for tensors in tensor_lists:
        for tensor in tensors:
            if tensor.dtype != dtype:
                raise RuntimeError(
                    f"KAdam(fused=True) needs gradients and state in the parameter's dtype {dtype}, got {tensor.dtype}"
                )


def _cpu_fused_kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[list[Tensor]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: list[Level],
    lr: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """One call of the C++ kernel for tensors of one dtype on the CPU."""
    if found_inf is not None and bool(found_inf):
        return
    dtype = params[0].dtype
    _check_dtypes([grads, *moments], dtype)
    library = fused_kernel_library()
    # The kernel walks flat memory; a non-contiguous tensor is stepped in a contiguous copy.
    write_back: list[tuple[Tensor, Tensor]] = []

    def contiguous(tensors: list[Tensor], writable: bool) -> list[Tensor]:
        result = []
        for tensor in tensors:
            if not tensor.is_contiguous():
                copy = tensor.contiguous()
                if writable:
                    write_back.append((tensor, copy))
                tensor = copy
            result.append(tensor)
        return result

    params = contiguous(params, True)
    grads = contiguous(grads, grad_scale is not None)
    moments = [contiguous(tensors, True) for tensors in moments]
    torch._foreach_add_(steps, 1)
    bias_correction1 = [1 - level.beta**n for level, counts in zip(levels, level_steps) for n in counts]
    bias_correction2_sqrt = [
        (1 - level.gamma**n) ** 0.5 for level, counts in zip(levels, level_steps) for n in counts
    ]
    scale = None if grad_scale is None else grad_scale.to(torch.float32).contiguous()
    pointers = ctypes.c_void_p
    args = _KernelArgs(
        n_tensors=len(params),
        n_levels=len(levels),
        dtype=_DTYPE_CODES[dtype],
        n_threads=max(1, torch.get_num_threads()),
        decoupled_weight_decay=int(decoupled_weight_decay),
        maximize=int(maximize),
        store_unscaled_grad=int(grad_scale is not None),
        params=_array(pointers, [t.data_ptr() for t in params]),
        grads=_array(pointers, [t.data_ptr() for t in grads]),
        exp_avgs=_array(pointers, [t.data_ptr() for tensors in moments[0::2] for t in tensors]),
        exp_avg_sqs=_array(pointers, [t.data_ptr() for tensors in moments[1::2] for t in tensors]),
        numels=_array(ctypes.c_int64, [t.numel() for t in params]),
        bias_correction1=_array(ctypes.c_double, bias_correction1),
        bias_correction2_sqrt=_array(ctypes.c_double, bias_correction2_sqrt),
        betas=_array(ctypes.c_double, [level.beta for level in levels]),
        gammas=_array(ctypes.c_double, [level.gamma for level in levels]),
        eps=_array(ctypes.c_double, [level.eps for level in levels]),
        tensor_modes=_array(ctypes.c_int32, [int(level.tensor_mode) for level in levels]),
        lr=float(lr),
        weight_decay=float(weight_decay),
        grad_scale=None if scale is None else ctypes.cast(scale.data_ptr(), ctypes.POINTER(ctypes.c_float)),
    )
    if library.kadam_fused_step(ctypes.byref(args)) != 0:
        raise RuntimeError(f"the fused KAdam kernel rejected dtype {dtype}")
    for original, copy in write_back:
        original.copy_(copy)


def _torch_kernels_kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[list[Tensor]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: list[Level],
    lr: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """Off the CPU: torch's fused Adam kernel for k = 1 elementwise, else foreach after unscaling."""
    if len(levels) == 1 and not levels[0].tensor_mode:
        level = levels[0]
        # torch's kernel wants the step counts on the parameters' device; KAdam keeps them on the CPU.
        device_steps = [step.to(params[0].device) for step in steps]
        torch._foreach_add_(device_steps, 1)
        kernel = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
        kernel(
            params,
            grads,
            moments[0],
            moments[1],
            [],
            device_steps,
            amsgrad=False,
            lr=lr,
            beta1=level.beta,
            beta2=level.gamma,
            weight_decay=weight_decay,
            eps=level.eps,
            maximize=maximize,
            grad_scale=grad_scale,
            found_inf=found_inf,
        )
        if found_inf is not None:
            torch._foreach_sub_(device_steps, [found_inf] * len(device_steps))
        for step, device_step in zip(steps, device_steps):
            if device_step is not step:
                step.copy_(device_step)
        return
    from kadam.optimizer.kadam import _multi_tensor_kadam  # noqa: PLC0415 (kadam.py imports this module)

    if found_inf is not None and bool(found_inf):
        return
    if grad_scale is not None:
        torch._foreach_div_(grads, grad_scale)
    _multi_tensor_kadam(
        params,
        grads,
        [(moments[2 * i], moments[2 * i + 1]) for i in range(len(levels))],
        steps,
        level_steps,
        levels=levels,
        lr=lr,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
        has_complex=False,
    )
