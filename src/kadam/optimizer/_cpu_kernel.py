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
level with β = 0 keeps no m (m = x), which a per-level flag tells the kernel (never a tensor's pointer:
the data pointer of a zero-size tensor is null whatever its level keeps): an elementwise one skips it, and
the pass after such a tensor-mode level recomputes its input from the state the step already wrote (for the
default k = 2, level 1's m and v), so no buffer is kept, read or written for it; for the default levels
that replay, and the sum of squares of a tensor-mode level without m, run in the same loop as the rest of
their pass, so each pass is one loop over every stream it touches. The arithmetic follows the loop
implementation's operation order, except that a level feeding another level multiplies by reciprocals of
its bias corrections and of a tensor-mode denominator (float32 agrees with the loop to a few ulp);
float16 and bfloat16 parameters run float32 math and store each state once, rounded; float64 runs
double. The moments may also be float32 or bfloat16 whatever the parameters' dtype (``state_dtype``): then
each is rounded once when stored (to nearest, or stochastically with the keys of
:mod:`kadam.optimizer.precision`) and the levels read it as stored. Each pass splits the blocks of all tensors over ``torch.get_num_threads()`` OpenMP threads
(the libgomp torch loads), with one barrier per tensor-mode level; the per-chunk sums are added in a
fixed order, so the result does not depend on the thread count. The kernel allocates nothing
proportional to the parameters.

The kernel is plain C++ (no torch headers) built with the system compiler (``$CXX``, default ``c++``,
with OpenMP) on the first fused CPU step and cached under ``$KADAM_CACHE_DIR`` (default
``~/.cache/kadam``), keyed by a hash of the source, flags, compiler and CPU; nothing compiles at import.
On load, the size and field offsets of ``struct KAdamArgs`` reported by the library are compared with
:class:`KernelArgs`, so a stale or mismatched build fails loudly instead of reading garbage. The kernel
trusts the pointers it is given; :func:`fused_step` hands it none that :func:`check_inputs` has not
checked (device, dtype, shape of every tensor, and the state each level needs), so a mis-shaped state
raises ``RuntimeError`` instead of writing past the end of a tensor.

This module knows tensors and the C ABI only; it imports nothing from the rest of the optimizer.
"""

from __future__ import annotations

import array
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FUSED_DTYPES",
    "KernelArgs",
    "available",
    "check_inputs",
    "check_layout",
    "fused_kernel_library",
    "fused_step",
]

FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_SOURCE = Path(__file__).with_name("csrc") / "fused_kadam_cpu.cpp"
_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
# On x86, 512-bit vectors where the CPU has them (GCC and Clang otherwise prefer 256 bits on AVX-512 CPUs; torch's
# own CPU kernels use 512): the step's loops are faster at 512 (benchmarks/step_time.py).
_NATIVE_FLAGS = (
    ["-march=native", "-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else ["-mcpu=native"]
)


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
        ("keeps_first_moment", ctypes.POINTER(ctypes.c_int32)),
        ("lr", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("grad_scale", ctypes.POINTER(ctypes.c_float)),
        ("steps", ctypes.POINTER(ctypes.c_void_p)),
        ("step_dtype", ctypes.c_int32),
        ("state_dtype", ctypes.c_int32),
        ("stochastic_rounding", ctypes.c_int32),
        ("rounding_keys", ctypes.POINTER(ctypes.c_uint32)),
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


# array.array type codes of the ctypes element types the kernel's arguments use (pointers as unsigned 64-bit
# integers, 0 for null), so that a list becomes a C array in one copy instead of one conversion per element.
_ARRAY_CODES = {
    ctypes.c_void_p: "Q",
    ctypes.c_int64: "q",
    ctypes.c_double: "d",
    ctypes.c_int32: "i",
    ctypes.c_uint32: "I",
}


def _array(ctype: type, values: Sequence) -> ctypes.Array:
    """A C array of ``ctype`` holding ``values`` (None: a null pointer), viewing an array.array that it keeps
    alive (ctypes holds the buffer it was made from)."""
    code = _ARRAY_CODES[ctype]
    if not values or ctypes.sizeof(ctype) != array.array(code).itemsize:  # another layout: one by one
        return (ctype * len(values))(*values)
    if code == "Q":
        values = [0 if value is None else value for value in values]
    return (ctype * len(values)).from_buffer(array.array(code, values))


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


_DTYPE, _DEVICE, _LAYOUT, _SHAPE = attrgetter("dtype"), attrgetter("device"), attrgetter("layout"), attrgetter("shape")


def _all_fit(
    params: Sequence[Any],
    grads: Sequence[Any],
    exp_avgs: Sequence[Sequence[Any]],
    exp_avg_sqs: Sequence[Sequence[Any]],
    tensor_modes: Sequence[bool],
    keeps_first_moment: Sequence[bool],
    dtype: torch.dtype,
    state_dtype: torch.dtype | None,
    device: torch.device,
) -> bool:
    """Whether every tensor passes :func:`check_inputs`'s per-tensor checks (type, dtype, device, layout, shape),
    tested list by list."""
    if not all(isinstance(p, Tensor) for p in params):
        return False
    shapes = list(map(_SHAPE, params))
    # (tensors, their dtype, their shapes: None for one element each, the parameters' own for the parameters)
    lists: list[tuple[Sequence[Any], torch.dtype | None, list[torch.Size] | None]] = [
        (params, dtype, shapes),
        (grads, dtype, shapes),
    ]
    for keeps, tensor_mode, m, v in zip(keeps_first_moment, tensor_modes, exp_avgs, exp_avg_sqs):
        if keeps:
            lists.append((m, state_dtype, shapes))
        lists.append((v, state_dtype, None if tensor_mode else shapes))
    for tensors, expected, expected_shapes in lists:
        if not all(isinstance(t, Tensor) for t in tensors):
            return False
        if set(map(_DTYPE, tensors)) != {expected} or set(map(_DEVICE, tensors)) != {device}:
            return False
        if set(map(_LAYOUT, tensors)) != {torch.strided}:
            return False
        if expected_shapes is None:
            if set(map(Tensor.numel, tensors)) != {1}:
                return False
        elif tensors is not params and list(map(_SHAPE, tensors)) != expected_shapes:
            return False
    return True


def check_inputs(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Sequence[Tensor | None]],
    exp_avg_sqs: Sequence[Sequence[Tensor]],
    steps: Sequence[Tensor] | None,
    *,
    tensor_modes: Sequence[bool],
    keeps_first_moment: Sequence[bool],
    state_names: Sequence[tuple[str, str]] | None = None,
    param_name: Callable[[int], str] | None = None,
    dtypes: Sequence[torch.dtype] = FUSED_DTYPES,
    state_dtypes: Sequence[torch.dtype] | None = None,
) -> None:
    """``RuntimeError`` unless every tensor of a fused step is one that a kernel reading raw pointers can step.

    For each parameter θ (a plain strided tensor of one of ``dtypes``, all of one dtype and device): its
    gradient has θ's shape, dtype and device; each level i has its second moment ``exp_avg_sqs[i]`` of θ's
    shape (elementwise) or of one element (``tensor_modes[i]``), and, where ``keeps_first_moment[i]``, its
    first moment ``exp_avgs[i]`` of θ's shape, both on θ's device and of one state dtype for the whole call:
    θ's dtype, or one of ``state_dtypes`` (default: none other); each step count in ``steps`` has one
    element. Per-level lists are indexed [level][tensor]. ``state_names[i]`` names level i's
    (m, v) in the errors (default ``exp_avgs[i]``/``exp_avg_sqs[i]``), ``param_name(t)`` names tensor t
    (default ``tensor t``).
    """
    n_tensors, n_levels = len(params), len(tensor_modes)
    if n_tensors == 0:
        return
    if len(keeps_first_moment) != n_levels or len(exp_avgs) != n_levels or len(exp_avg_sqs) != n_levels:
        raise RuntimeError(
            f"KAdam(fused=True): {n_levels} levels need {n_levels} lists of first and second moments and "
            f"{n_levels} keeps_first_moment flags, got {len(exp_avgs)}, {len(exp_avg_sqs)} and {len(keeps_first_moment)}"
        )
    if len(grads) != n_tensors or (steps is not None and len(steps) != n_tensors):
        raise RuntimeError(
            f"KAdam(fused=True): {n_tensors} parameters need as many gradients and step counts, got {len(grads)} "
            f"and {'none' if steps is None else len(steps)}"
        )
    for level, (keeps, m, v) in enumerate(zip(keeps_first_moment, exp_avgs, exp_avg_sqs)):
        if len(v) != n_tensors or (keeps and len(m) != n_tensors):
            raise RuntimeError(
                f"KAdam(fused=True): level {level + 1} needs one second moment{' and one first moment' if keeps else ''} "
                f"per parameter ({n_tensors}), got {len(v)}{f' and {len(m)}' if keeps else ''}"
            )

    def name_of(t: int) -> str:
        return param_name(t) if param_name is not None else f"tensor {t}"

    def key_of(level: int, which: int) -> str:
        return (
            state_names[level][which] if state_names is not None else f"{('exp_avgs', 'exp_avg_sqs')[which]}[{level}]"
        )

    first = params[0]
    if not isinstance(first, Tensor):
        raise RuntimeError(f"KAdam(fused=True): {name_of(0)} is a {type(first).__name__}, not a tensor")
    dtype, device = first.dtype, first.device
    if dtype not in dtypes:
        raise RuntimeError(
            f"KAdam(fused=True) supports parameters of dtype {', '.join(map(str, dtypes))}, got {dtype} ({name_of(0)})"
        )

    allowed_states = {dtype, *(state_dtypes or ())}
    state_dtype = state_dtype_of(exp_avg_sqs)
    if state_dtype is not None and state_dtype not in allowed_states:
        raise RuntimeError(
            f"KAdam(fused=True): the state of {name_of(0)} has dtype {state_dtype}; the kernel keeps the state of "
            f"{dtype} parameters in {', '.join(sorted(map(str, allowed_states)))}"
        )

    def check(tensor: Any, what: str | None, t: int, shape: tuple[int, ...] | None) -> None:
        """``tensor`` (``what`` of parameter t, or the parameter for None): a strided tensor on the parameters'
        device, of their dtype (a gradient) or of the call's state dtype (a moment), of ``shape`` (None: one
        element)."""
        subject = name_of(t) if what is None else f"{what} of {name_of(t)}"
        if not isinstance(tensor, Tensor):
            raise RuntimeError(f"KAdam(fused=True): {subject} is {type(tensor).__name__}, not a tensor")
        expected = dtype if what is None or what == "the gradient" else state_dtype
        if tensor.dtype != expected:
            raise RuntimeError(
                f"KAdam(fused=True): {subject} has dtype {tensor.dtype}; parameters and gradients of one kernel "
                f"call must have the parameters' dtype {dtype}, and every moment one state dtype ({state_dtype})"
            )
        if tensor.device != device:
            raise RuntimeError(
                f"KAdam(fused=True): {subject} is on {tensor.device}; parameters, gradients and state of one "
                f"kernel call must be on the parameters' device {device}"
            )
        if tensor.layout != torch.strided:
            raise RuntimeError(f"KAdam(fused=True): {subject} has layout {tensor.layout}, not torch.strided")
        if shape is None:
            if tensor.numel() != 1:
                raise RuntimeError(
                    f"The size of {what} {_shape(tensor)} of {name_of(t)} must be one element: a tensor-mode "
                    "level keeps one second moment per tensor"
                )
        elif tensor.shape != shape:
            raise RuntimeError(
                f"The size of {what} {_shape(tensor)} must match the size of {name_of(t)} {shape}: "
                "gradients and elementwise state have their parameter's shape"
            )

    # The every-step path checks list by list and builds no names; a miss is found and named tensor by tensor.
    if not _all_fit(params, grads, exp_avgs, exp_avg_sqs, tensor_modes, keeps_first_moment, dtype, state_dtype, device):
        for t, param in enumerate(params):
            if not isinstance(param, Tensor):
                raise RuntimeError(f"KAdam(fused=True): {name_of(t)} is a {type(param).__name__}, not a tensor")
            shape = _shape(param)
            check(param, None, t, shape)
            check(grads[t], "the gradient", t, shape)
            for level in range(n_levels):
                if keeps_first_moment[level]:
                    check(exp_avgs[level][t], f"state {key_of(level, 0)!r}", t, shape)
                check(exp_avg_sqs[level][t], f"state {key_of(level, 1)!r}", t, None if tensor_modes[level] else shape)
    if steps is not None and not all(isinstance(step, Tensor) and step.numel() == 1 for step in steps):
        for t, step in enumerate(steps):
            if not isinstance(step, Tensor) or step.numel() != 1:
                raise RuntimeError(
                    f"KAdam(fused=True): state 'step' of {name_of(t)} must be a one-element tensor, got "
                    f"{_shape(step) if isinstance(step, Tensor) else type(step).__name__}"
                )


def state_dtype_of(exp_avg_sqs: Sequence[Sequence[Any]]) -> torch.dtype | None:
    """The dtype of the first second moment of a call (every moment of the call must have it), or None."""
    for tensors in exp_avg_sqs:
        for tensor in tensors:
            return tensor.dtype if isinstance(tensor, Tensor) else None
    return None


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
    keeps_first_moment: Sequence[bool] | None = None,
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    steps: list[Tensor] | None = None,
    state_names: Sequence[tuple[str, str]] | None = None,
    param_name: Callable[[int], str] | None = None,
    rounding_keys: Sequence[int] | None = None,
) -> None:
    """One kernel call for real tensors of one dtype on the CPU; per-level lists are indexed [level][tensor].

    The moments are of one dtype: the parameters', float32 or bfloat16 (math in float32, float64 for float64
    parameters; each moment rounded once when stored, and read as stored). ``rounding_keys`` (one per tensor,
    :func:`kadam.optimizer.precision.tensor_base_key`) rounds bfloat16 moments stochastically; None rounds to
    nearest.

    ``keeps_first_moment[i]`` says whether level i stores m (default: whether ``exp_avgs[i]`` holds
    tensors); a level that does not (β = 0, m = x) may give ``None`` entries or an empty list. Every tensor
    is checked by :func:`check_inputs` first (``state_names``/``param_name`` name them in its errors).

    ``steps`` (one 0-dim step count per tensor) are incremented by 1 before the update, in the kernel when
    they are float32 or float64 CPU tensors of one dtype (torch's ``_foreach_add_`` otherwise).

    ``grad_scale`` (GradScaler's) divides the gradients, and the unscaled values are written back into
    them as torch's fused Adam does. Non-contiguous tensors are stepped in contiguous copies written back.
    """
    if keeps_first_moment is None:
        keeps_first_moment = [any(t is not None for t in tensors) for tensors in exp_avgs]
    check_inputs(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        steps,
        tensor_modes=tensor_modes,
        keeps_first_moment=keeps_first_moment,
        state_names=state_names,
        param_name=param_name,
        state_dtypes=(torch.float32, torch.bfloat16),
    )
    state_dtype = state_dtype_of(exp_avg_sqs) or params[0].dtype
    if rounding_keys is not None and (state_dtype != torch.bfloat16 or len(rounding_keys) != len(params)):
        raise RuntimeError(
            f"stochastic rounding needs bfloat16 moments and one key per tensor ({len(params)}), got {state_dtype} "
            f"and {len(rounding_keys)} keys"
        )
    n_levels = len(tensor_modes)
    for name, values in (("bias_correction1", bias_correction1), ("bias_correction2_sqrt", bias_correction2_sqrt)):
        if len(values) != n_levels or any(len(per_level) != len(params) for per_level in values):
            raise RuntimeError(f"{name} must hold one value per level ({n_levels}) and tensor ({len(params)})")
    for name, values in (("beta1s", beta1s), ("beta2s", beta2s), ("eps", eps)):
        if len(values) != n_levels:
            raise RuntimeError(f"{name} must hold one value per level ({n_levels}), got {len(values)}")
    dtype = params[0].dtype
    library = fused_kernel_library()
    write_back: list[tuple[Tensor, Tensor]] = []
    copies: list[Tensor] = []  # contiguous copies, alive until the kernel returns

    def addresses(tensors: Sequence[Tensor | None], writable: bool) -> list[int | None]:
        """Data pointers of checked tensors; a non-contiguous one is stepped in a contiguous copy, written back
        after the kernel when ``writable``."""
        if all(map(Tensor.is_contiguous, tensors)):
            return list(map(Tensor.data_ptr, tensors))
        result: list[int | None] = []
        for tensor in tensors:
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
    exp_avg_addresses = [
        address
        for tensors, keeps in zip(exp_avgs, keeps_first_moment)
        for address in (addresses(tensors, True) if keeps else [None] * len(params))
    ]
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
        keeps_first_moment=_array(ctypes.c_int32, [int(keeps) for keeps in keeps_first_moment]),
        lr=float(lr),
        weight_decay=float(weight_decay),
        grad_scale=None if scale is None else ctypes.cast(scale.data_ptr(), ctypes.POINTER(ctypes.c_float)),
        steps=_array(pointers, step_addresses) if in_kernel else None,
        step_dtype=_STEP_DTYPE_CODES.get(step_dtype, 0),
        state_dtype=_DTYPE_CODES[state_dtype],
        stochastic_rounding=int(rounding_keys is not None),
        rounding_keys=None if rounding_keys is None else _array(ctypes.c_uint32, [int(key) for key in rounding_keys]),
    )
    if library.kadam_fused_step(ctypes.byref(args)) != 0:
        raise RuntimeError(f"the fused KAdam kernel rejected dtype {dtype} with state dtype {state_dtype}")
    for original, copy in write_back:
        original.copy_(copy)
