r"""The dtype the optimizer keeps its moments in, and stochastic rounding when it writes them (THEORY §1).

``state_dtype`` (a constructor argument of :class:`kadam.KAdam` and a parameter-group key) is the dtype of
every first and second moment of every level; ``None`` keeps each parameter's own dtype. With a state
dtype other than the parameter's (or with stochastic rounding), a step loads each moment into its
*math dtype* (float32, float64 for float64 parameters), updates it there, and rounds it once when storing
it; the level's output is computed from the moments as stored, so the state alone determines the step.

Rounding to nearest biases an exponential average kept in bfloat16: an increment :math:`(1-\gamma)(x^2 - v)`
smaller than half a unit in the last place of :math:`v` (:math:`2^{-9} v`; with γ = 0.999 every increment
under :math:`0.5 v`) is lost, so :math:`v` stalls. *Stochastic rounding* rounds a float32 value
:math:`a` between the adjacent bfloat16 values :math:`\lfloor a\rfloor < \lceil a\rceil` up with
probability :math:`(a - \lfloor a\rfloor)/(\lceil a\rceil - \lfloor a\rfloor)`, so that
:math:`\mathbb{E}[\mathrm{SR}(a)] = a` (Gupta et al. 2015, "Deep learning with limited numerical
precision"; Zamirai et al. 2020, "Revisiting BFloat16 training"; THEORY §1 "Low-precision state"). It is
done on the bit pattern: a random 16-bit integer :math:`r` is added to the low half of float32's bits, which
are then cut off (exactly the rule above, for finite values; NaN and ±inf round to nearest).

The random bits are a counter-based hash, no random generator, so a run is reproducible and no global RNG
state is touched: element ``j`` of moment ``moment`` (``2 (level - 1)`` for m, ``2 (level - 1) + 1`` for v)
of the parameter at position ``index`` in the optimizer (over all groups, in order) at step ``n`` (after
the step's increment) takes :math:`r = H(\mathrm{key} + j) \gg 16` with
:math:`\mathrm{key} = H(H(H(n) + \mathrm{index}) + \mathrm{moment})`, all modulo :math:`2^{32}`, where
:math:`H` is the ``lowbias32`` integer hash (C. Wellons, "Hash function prospector"). The fused CPU and
Triton kernels compute the same bits, so every path rounds alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "STATE_DTYPES",
    "check_state_options",
    "hash32",
    "math_dtype",
    "moment_dtype",
    "random_bits",
    "rounding_key",
    "stochastic_round",
    "store_rounded_",
    "tensor_base_key",
]

STATE_DTYPES = (torch.float32, torch.bfloat16)
"""The dtypes ``state_dtype`` may name (besides ``None``, the parameter's dtype)."""

_MASK32 = 0xFFFFFFFF


def check_state_options(state_dtype: Any, stochastic_rounding: Any, params: Any = ()) -> None:
    """ValueError unless ``state_dtype`` is None, torch.float32 or torch.bfloat16 and ``stochastic_rounding`` a
    bool that is True only where some parameter's moments are bfloat16 (``state_dtype`` bfloat16, or None
    with bfloat16 parameters); complex parameters keep their own state dtype."""
    if state_dtype == torch.float16:
        raise ValueError(
            "state_dtype=torch.float16 is not supported: float16's range (smallest subnormal 6e-8, largest "
            "65504) cannot hold a second moment v ~ g^2: gradients below about 2.4e-4 square to 0 (then the "
            "update divides by eps alone) and above 256 to inf. Use torch.bfloat16 (float32's range, 8 bits "
            "of precision) or torch.float32"
        )
    if state_dtype is not None and state_dtype not in STATE_DTYPES:
        raise ValueError(
            f"state_dtype must be None (the parameter's dtype), torch.float32 or torch.bfloat16, got {state_dtype!r}"
        )
    if not isinstance(stochastic_rounding, bool):
        raise ValueError(f"stochastic_rounding must be True or False, got {stochastic_rounding!r}")
    params = [p for p in params if isinstance(p, Tensor)]
    if state_dtype is not None and any(p.is_complex() for p in params):
        raise ValueError(
            f"state_dtype={state_dtype} applies to real parameters; a group with complex parameters keeps "
            "state_dtype=None (their own dtype)"
        )
    if stochastic_rounding:
        low = state_dtype == torch.bfloat16 or (state_dtype is None and any(p.dtype == torch.bfloat16 for p in params))
        if not low:
            raise ValueError(
                "stochastic_rounding=True rounds moments stored in bfloat16: it needs state_dtype=torch.bfloat16 "
                f"(or bfloat16 parameters with state_dtype=None), got state_dtype={state_dtype}"
                + ("" if params else " and no parameters")
            )


def moment_dtype(param: Tensor, state_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of ``param``'s moments: ``state_dtype``, or the parameter's own dtype for None."""
    return param.dtype if state_dtype is None else state_dtype


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a step computes in for parameters or state of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mul32(x: Any, c: int) -> Any:
    """``x * c mod 2**32`` for ``x < 2**32`` without leaving int64 (Python ints or int64 tensors)."""
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (high + x * (c & 0xFFFF)) & _MASK32


def hash32(x: Any) -> Any:
    """``lowbias32``: a 32-bit integer hash of ``x mod 2**32`` (Python int or int64 tensor, elementwise)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def tensor_base_key(step: Any, index: int) -> Any:
    """:math:`H(H(n) + \\mathrm{index})` for the parameter at position ``index`` at step ``n`` (an int, or an
    int64 tensor under torch.compile and capturable steps)."""
    return hash32(hash32(step) + index)


def rounding_key(step: Any, index: int, moment: int) -> Any:
    """The key of one moment's random bits (module docstring)."""
    return hash32(tensor_base_key(step, index) + moment)


def random_bits(key: Any, numel: int, device: torch.device | str = "cpu") -> Tensor:
    """The 16 random bits :math:`H(\\mathrm{key} + j) \\gg 16` of elements ``j = 0 .. numel - 1`` (int64)."""
    counter = torch.arange(numel, dtype=torch.int64, device=device)
    return hash32(counter + key) >> 16


def stochastic_round(values: Tensor, key: Any) -> Tensor:
    """``values`` (float32) stochastically rounded to bfloat16 with the bits of ``key`` (module docstring)."""
    values = values.contiguous()
    bits = values.view(torch.int32)
    # Finite float32 bit patterns plus r < 2**16 stay within int32 (the largest finite magnitude is 0x7F7FFFFF).
    noise = random_bits(key, values.numel(), values.device).to(torch.int32).view(values.shape)
    rounded = ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)
    return torch.where(torch.isfinite(values), rounded, values.to(torch.bfloat16))


def store_rounded_(target: Tensor, values: Tensor, key: Any | None) -> Tensor:
    """Write ``values`` (the math dtype) into ``target`` (its state dtype), rounded to nearest, or stochastically
    with the bits of ``key`` for a bfloat16 target; returns the stored values in the math dtype."""
    if key is not None and target.dtype == torch.bfloat16:
        target.copy_(stochastic_round(values.to(torch.float32), key).view(target.shape))
    else:
        target.copy_(values)
    return target.to(values.dtype)
