r"""The fused k-Adam CPU kernel (``csrc/fused_kadam_cpu.cpp``): build, cache, and the ctypes call.

An optimizer step is bound by memory bandwidth: with all levels elementwise it must read θ, g and the
moments and write θ and the moments. A *tensor-mode* level i needs :math:`\mathrm{mean}((x^{(i-1)})^2)`
over the whole tensor before it can normalize, so the kernel splits the step into passes over all
tensors:

* pass 1 reads g (and θ for coupled decay), runs the elementwise levels in registers up to the first
  tensor-mode level i, updates that level's :math:`m_i` (which needs only its input) and accumulates
  :math:`\sum (x^{(i-1)})^2`; the scalar :math:`v_i` and its denominator follow from the sum;
* the next pass re-reads :math:`m_i`, forms :math:`x^{(i)} = m_i/(\sqrt{v_i/(1-\gamma_i^n)}+\epsilon_i)
  /(1-\beta_i^n)` and carries on to the next tensor-mode level or to θ.

Passes = 1 + number of tensor-mode levels, except that a tensor-mode level without m (β = 0) outputs its
input times a per-tensor scalar s, so when another such level follows, that level's sum of squares is s²
times this one's and needs no pass: the default k-Adam takes two passes for every k. An elementwise chain
moves exactly the bytes it must. A
level with β = 0 keeps no m (m = x) and gets a null pointer: an elementwise one skips it, and the pass
after such a tensor-mode level recomputes its input from the state the step already wrote (for the
default k = 2, level 1's m and v), so no buffer is kept, read or written for it; for the default levels
that replay, and the sum of squares of a tensor-mode level without m, run in the same loop as the rest of
their pass, so each pass is one loop over every stream it touches. The arithmetic follows the loop
implementation's operation order, except that a level feeding another level multiplies by reciprocals of
its bias corrections and of a tensor-mode denominator (float32 agrees with the loop to a few ulp);
float16 and bfloat16 parameters run float32 math and store each state once, rounded; float64 runs
double. Each pass splits the blocks of all tensors over ``torch.get_num_threads()`` OpenMP threads
(the libgomp torch loads), with one barrier per tensor-mode level; the per-chunk sums are added in a
fixed order, so the result does not depend on the thread count. The kernel allocates nothing
proportional to the parameters.

The kernel is plain C++ (no torch headers) built with the system compiler (``$CXX``, default ``c++``,
with OpenMP) on the first fused CPU step and cached under ``$KADAM_CACHE_DIR`` (default
``~/.cache/kadam``), keyed by a hash of the source, flags, compiler and CPU; nothing compiles at import.
On load, the size and field offsets of ``struct KAdamArgs`` reported by the library are compared with
:class:`KernelArgs`, so a stale or mismatched build fails loudly instead of reading garbage.

This module knows tensors and the C ABI only; it imports nothing from the rest of the optimizer.
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
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["FUSED_DTYPES", "KernelArgs", "available", "check_layout", "fused_kernel_library", "fused_step"]

FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_SOURCE = Path(__file__).with_name("csrc") / "fused_kadam_cpu.cpp"
_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
_NATIVE_FLAGS = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else ["-mcpu=native"]


_STEP_DTYPE_CODES = {torch.float32: 0, torch.float64: 1}


class KernelArgs(ctypes.Structure):
    """Mirror of ``struct KAdamArgs`` in csrc/fused_kadam_cpu.cpp (checked at load by :func:`check_layout`)."""

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
        ("steps", ctypes.POINTER(ctypes.c_void_p)),
        ("step_dtype", ctypes.c_int32),
    ]


_library: ctypes.CDLL | None = None
_library_error: RuntimeError | None = None
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


def check_layout(library: ctypes.CDLL, struct: type[ctypes.Structure] | None = None) -> None:
    """RuntimeError unless ``struct`` (default :class:`KernelArgs`) has the size and field offsets that the
    library reports for its ``struct KAdamArgs``."""
    struct = KernelArgs if struct is None else struct
    library.kadam_args_size.restype = ctypes.c_int64
    library.kadam_args_field_count.restype = ctypes.c_int64
    library.kadam_args_offset.restype = ctypes.c_int64
    library.kadam_args_offset.argtypes = [ctypes.c_int64]
    c_size, c_fields = library.kadam_args_size(), library.kadam_args_field_count()
    fields = [name for name, *_ in struct._fields_]
    c_offsets = [library.kadam_args_offset(i) for i in range(c_fields)]
    offsets = [getattr(struct, name).offset for name in fields]
    if c_size != ctypes.sizeof(struct) or c_offsets != offsets:
        raise RuntimeError(
            f"the fused KAdam CPU kernel's struct KAdamArgs (size {c_size}, offsets {c_offsets}) does not match "
            f"{struct.__name__} (size {ctypes.sizeof(struct)}, offsets {offsets}); csrc/fused_kadam_cpu.cpp "
            "and _cpu_kernel.py must change together"
        )


def _build(compiler: str, flags: list[str], path: Path) -> None:
    # Build beside the target and rename, so concurrent processes never load a partial file.
    handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".so.partial")
    os.close(handle)
    result = subprocess.run([compiler, *flags, str(_SOURCE), "-o", partial], capture_output=True, text=True, check=False)
    if result.returncode != 0:  # e.g. a compiler without OpenMP: build the one-thread kernel
        serial = [flag for flag in flags if flag != "-fopenmp"]
        retry = subprocess.run([compiler, *serial, str(_SOURCE), "-o", partial], capture_output=True, text=True, check=False)
        if retry.returncode != 0:
            os.unlink(partial)
            raise RuntimeError(f"building the fused KAdam CPU kernel failed:\n{result.stderr}")
        warnings.warn(
            f"the fused KAdam CPU kernel was built without OpenMP and runs on one thread:\n{result.stderr}",
            UserWarning,
            stacklevel=3,
        )
    os.replace(partial, path)


def fused_kernel_library() -> ctypes.CDLL:
    """The compiled CPU kernel, built on first use into the cache directory and reused; layout-checked."""
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
            _build(compiler, flags, path)
        library = ctypes.CDLL(str(path))
        check_layout(library, KernelArgs)
        library.kadam_fused_step.argtypes = [ctypes.POINTER(KernelArgs)]
        library.kadam_fused_step.restype = ctypes.c_int
        _library = library
        return library


def available() -> bool:
    """Whether the kernel can run here: built (or buildable) and loaded; a failure is remembered, not raised."""
    global _library_error
    if _library is not None:
        return True
    if _library_error is not None:
        return False
    try:
        fused_kernel_library()
    except (RuntimeError, OSError) as error:
        _library_error = RuntimeError(str(error))
        return False
    return True


def _array(ctype: type, values: Sequence) -> ctypes.Array:
    return (ctype * len(values))(*values)


def fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[list[Tensor | None]],
    exp_avg_sqs: list[list[Tensor]],
    bias_correction1: list[list[float]],
    bias_correction2_sqrt: list[list[float]],
    *,
    beta1s: Sequence[float],
    beta2s: Sequence[float],
    eps: Sequence[float],
    tensor_modes: Sequence[bool],
    lr: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    steps: list[Tensor] | None = None,
) -> None:
    """One kernel call for real tensors of one dtype on the CPU; per-level lists are indexed [level][tensor].

    ``steps`` (one 0-dim step count per tensor) are incremented by 1 before the update, in the kernel when
    they are float32 or float64 CPU tensors of one dtype (torch's ``_foreach_add_`` otherwise).

    ``grad_scale`` (GradScaler's) divides the gradients, and the unscaled values are written back into
    them as torch's fused Adam does. Non-contiguous tensors are stepped in contiguous copies written back.
    """
    dtype = params[0].dtype
    if dtype not in FUSED_DTYPES:
        raise RuntimeError(f"KAdam(fused=True) supports parameters of dtype {FUSED_DTYPES}, got {dtype}")
    library = fused_kernel_library()
    write_back: list[tuple[Tensor, Tensor]] = []
    copies: list[Tensor] = []  # contiguous copies, alive until the kernel returns

    def addresses(tensors: Sequence[Tensor | None], writable: bool) -> list[int | None]:
        """Data pointers (None stays None), each tensor checked for dtype; a non-contiguous one is stepped in a
        contiguous copy, written back after the kernel when ``writable``."""
        result: list[int | None] = []
        for tensor in tensors:
            if tensor is None:
                result.append(None)
                continue
            if tensor.dtype != dtype:
                raise RuntimeError(
                    f"KAdam(fused=True) needs gradients and state in the parameter's dtype {dtype}, got {tensor.dtype}"
                )
            if not tensor.is_contiguous():
                copy = tensor.contiguous()
                copies.append(copy)
                if writable:
                    write_back.append((tensor, copy))
                tensor = copy
            result.append(tensor.data_ptr())
        return result

    param_addresses = addresses(params, True)
    grad_addresses = addresses(grads, grad_scale is not None)
    exp_avg_addresses = [address for tensors in exp_avgs for address in addresses(tensors, True)]
    exp_avg_sq_addresses = [address for tensors in exp_avg_sqs for address in addresses(tensors, True)]
    scale = None if grad_scale is None else grad_scale.to(torch.float32).contiguous()
    step_dtype = steps[0].dtype if steps else None
    step_addresses = [s.data_ptr() for s in steps if s.is_cpu and s.dtype == step_dtype] if steps else []
    in_kernel = bool(steps) and step_dtype in _STEP_DTYPE_CODES and len(step_addresses) == len(steps)
    if steps and not in_kernel:
        torch._foreach_add_(steps, 1)
    pointers = ctypes.c_void_p
    args = KernelArgs(
        n_tensors=len(params),
        n_levels=len(beta1s),
        dtype=_DTYPE_CODES[dtype],
        n_threads=max(1, torch.get_num_threads()),
        decoupled_weight_decay=int(decoupled_weight_decay),
        maximize=int(maximize),
        store_unscaled_grad=int(grad_scale is not None),
        params=_array(pointers, param_addresses),
        grads=_array(pointers, grad_addresses),
        exp_avgs=_array(pointers, exp_avg_addresses),
        exp_avg_sqs=_array(pointers, exp_avg_sq_addresses),
        numels=_array(ctypes.c_int64, [t.numel() for t in params]),
        bias_correction1=_array(ctypes.c_double, [bc for per_level in bias_correction1 for bc in per_level]),
        bias_correction2_sqrt=_array(ctypes.c_double, [bc for per_level in bias_correction2_sqrt for bc in per_level]),
        betas=_array(ctypes.c_double, [float(b) for b in beta1s]),
        gammas=_array(ctypes.c_double, [float(b) for b in beta2s]),
        eps=_array(ctypes.c_double, [float(e) for e in eps]),
        tensor_modes=_array(ctypes.c_int32, [int(mode) for mode in tensor_modes]),
        lr=float(lr),
        weight_decay=float(weight_decay),
        grad_scale=None if scale is None else ctypes.cast(scale.data_ptr(), ctypes.POINTER(ctypes.c_float)),
        steps=_array(pointers, step_addresses) if in_kernel else None,
        step_dtype=_STEP_DTYPE_CODES.get(step_dtype, 0),
    )
    if library.kadam_fused_step(ctypes.byref(args)) != 0:
        raise RuntimeError(f"the fused KAdam kernel rejected dtype {dtype}")
    for original, copy in write_back:
        original.copy_(copy)
