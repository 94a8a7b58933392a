r"""Fused k-Adam step for GPUs, written in Triton (THEORY §1).

One call steps many tensors through all k levels:

.. math::
    x^{(0)} = \pm g / s \;(+\lambda\theta \text{ coupled}),\quad
    m_i \leftarrow \beta_i m_i + (1-\beta_i) x^{(i-1)},\quad
    v_i \leftarrow \gamma_i v_i + (1-\gamma_i)\, q_i(x^{(i-1)}),\quad
    x^{(i)} = \frac{m_i}{\sqrt{v_i}/\sqrt{1-\gamma_i^{n_i}} + \epsilon_i} \Big/ (1-\beta_i^{n_i}),

then :math:`\theta \leftarrow (1-\eta\lambda)\theta - \eta x^{(k)}` (decoupled decay) or
:math:`\theta - \eta x^{(k)}`, where :math:`q_i(x) = x^2` elementwise or :math:`\mathrm{mean}(x^2)` over the
tensor in tensor mode, :math:`s` is GradScaler's scale and :math:`n_i` is the tensor's step count minus
the level's step offset (a level added when a run was resumed counts from the resume).

Passes. An elementwise level needs nothing but its own state, so a chain of elementwise levels runs in
one pass over memory with every intermediate :math:`x^{(i)}` in registers. A tensor-mode level i needs
:math:`\sum (x^{(i-1)})^2` over the whole tensor before any element can be normalized, so the step is
split into ``1 + T`` passes (T: the number of tensor-mode levels), each a single launch over the blocks
of up to :data:`TENSORS_PER_LAUNCH` tensors:

1. a *pass* runs levels ``first..end-1`` (elementwise) and stops at the tensor-mode level ``end``: it
   updates that level's :math:`m` (when :math:`\beta \ne 0`) and writes one float32 partial sum of
   :math:`(x^{(end-1)})^2` per block of ``BLOCK`` elements into a workspace, at the block's own index;
2. a small *finish* launch (one program per tensor) adds that tensor's partial sums in block order
   (float64 accumulator, fixed order: the result does not depend on scheduling, no atomics), updates the
   scalar :math:`v`, and writes the level's denominator :math:`\sqrt{v}/\sqrt{1-\gamma^n}+\epsilon`;
3. the next pass resumes from that level: :math:`x^{(end)} = (m/\text{denominator})/(1-\beta^n)`.

A level with :math:`\beta = 0` keeps no first moment (:math:`m = x` exactly). When such a level is a
tensor-mode level that ends a pass, the next pass recomputes its input :math:`x^{(end-1)}` from the
already updated state of the levels before it ("replay": from the stored :math:`m` of the nearest level
below with :math:`\beta \ne 0`, through the :math:`v` of the :math:`\beta = 0` levels in between, or from
the gradient when there is none) instead of storing it: re-reading :math:`(m_r, v_r)` costs two
reads where storing a first moment would cost a write now and a read later, and it keeps no state.

Memory traffic per parameter element, in elements of the tensors' dtypes (float32: 4 bytes each;
:func:`stream_counts` computes it for any configuration):

=====================================================  =========  ==========  ======
configuration (decoupled decay, no GradScaler)         reads      writes      total
=====================================================  =========  ==========  ======
torch's fused AdamW: g, m, v, θ / m, v, θ               4          3           7
k = 1 elementwise (Adam/AdamW)                          4          3           7
k = 2 default (level 2: β = 0, tensor mode)             3 + 3      2 + 1       9
k = 2, level 2 tensor mode with β ≠ 0                   4 + 2      3 + 1       10
k = 2, both levels elementwise                          6          5           11
k = 3 default (levels 2, 3: β = 0, tensor mode)         3 + 2 + 3  2 + 0 + 1   11
=====================================================  =========  ==========  ======

Passes are separated by "+". In the default 2-Adam, pass 1 reads g, m₁, v₁ and writes m₁, v₁; pass 2
re-reads m₁, v₁ to rebuild x⁽¹⁾ and reads and writes θ. Coupled decay adds a read of θ in the first
pass (and in a pass that replays from the gradient); GradScaler adds one write of g (the unscaled
gradient is stored back, as torch's fused Adam does). The workspace adds 4 bytes per ``BLOCK``
elements per tensor-mode level (under 0.1% of a float32 stream). Each tensor-mode level also adds one
launch of the finish kernel, which reads only the workspace.

Launches. The tensors of a call are grouped by device and dtypes and passed to each kernel as tuples
of up to :data:`TENSORS_PER_LAUNCH` tensors (by value, as torch's ``multi_tensor_apply`` passes its
addresses): no table of addresses is built on the host, so a step is safe inside a CUDA graph and
allocates nothing but the small workspace. Each program finds its tensor by comparing its block index
with the tensors' first blocks (a chain of selects over the tuple) and processes one block of
``BLOCK`` elements: full blocks without masks (vectorized loads), the tensor's last block masked.
Shorter groups are padded with empty slots, so one compiled kernel serves every group.

Arithmetic is float32 for every parameter dtype (float32, bfloat16, float16); states may be stored in
the parameter's dtype, in float32 or in bfloat16, and are rounded once when stored (bfloat16 on the bits, to
nearest even or stochastically with the hash of :mod:`kadam.optimizer.precision`); a state in a dtype other
than the parameter's, or stochastically rounded, is read as stored. The operations follow the loop
implementation (:func:`kadam.optimizer.kadam._single_tensor_kadam`): torch's lerp for m, m/denominator
then /(1-βⁿ), IEEE-rounded division and square root. Bias corrections are computed on the device in
float64 from the step counts, βⁿ = exp2(n log2 β) with log2 β passed as a float32 pair hi + lo (exact to
about 2⁻⁴⁸: float arguments of a Triton kernel are float32), so ``lr``
may be a Python float or a 0-dim tensor on the device and the step needs no host synchronization.

GradScaler: gradients are divided by ``grad_scale`` and the unscaled values stored back into the
gradients; a nonzero ``found_inf`` leaves parameters, state, gradients and step counts untouched (each
kernel reads it on the device and does nothing; the step increment is undone on the device).

A zero-size tensor takes :math:`\mathrm{mean}(x^2) = 0` in tensor mode: its scalar :math:`v` decays by γ.

Under ``torch.compile`` the call runs eagerly (a graph break, as for the CPU kernel).

``TRITON_INTERPRET=1`` set before this module is imported makes the kernels run in Triton's
interpreter, on CPU tensors: that is how the tests check them without a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from kadam.vocabulary import Level

__all__ = ["BLOCK", "TENSORS_PER_LAUNCH", "TRITON_DTYPES", "stream_counts", "triton_fused_kadam_"]

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Parameter dtypes the kernel steps (float32 math for all of them)."""

BLOCK = 2048
"""Elements per program: 8 per thread at 8 warps, two 128-bit loads per thread and stream."""

TENSORS_PER_LAUNCH = 16
"""Tensors per launch; more tensors take more launches (each tensor costs about 3 + 2k kernel arguments)."""

_NUM_WARPS = 8
_FINISH_TILE = 1024  # partial sums added per vector step in the finish kernel


# ----------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _select(values, slot, OFFSET: tl.constexpr, N: tl.constexpr):
    """``values[OFFSET + slot]`` for a slot known only at run time: a chain of selects over the tuple."""
    result = values[OFFSET]
    for s in tl.static_range(1, N):
        result = tl.where(slot == s, values[OFFSET + s], result)
    return result


@triton.jit
def _power(log2_base_hi, log2_base_lo, exponent):
    """``base ** exponent`` in float64 as exp2(exponent · log2(base)), log2(base) = hi + lo (float32 pair)."""
    log2_base = tl.cast(log2_base_hi, tl.float64) + tl.cast(log2_base_lo, tl.float64)
    return tl.exp2(exponent * log2_base)


@triton.jit
def _level_count(step, step_offsets, slot, LEVEL: tl.constexpr, N: tl.constexpr, HAS_OFFSETS: tl.constexpr):
    """The level's step count n_i = step - offset (float64)."""
    if HAS_OFFSETS:
        step = step - tl.cast(_select(step_offsets, slot, LEVEL * N, N), tl.float64)
    return step


@triton.jit
def _hash32(x):
    """``lowbias32`` of uint32 ``x`` (:func:`kadam.optimizer.precision.hash32`)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _moment_key(step, rounding_indices, slot, MOMENT: tl.constexpr, N: tl.constexpr):
    """H(H(H(n) + index) + moment): the stochastic-rounding key of one moment of the tensor in ``slot``."""
    index = _select(rounding_indices, slot, 0, N).to(tl.uint32)
    return _hash32(_hash32(_hash32(step.to(tl.uint32)) + index) + MOMENT)


@triton.jit
def _store_moment(
    ptrs,
    value,
    mask,
    step,
    rounding_indices,
    slot,
    offsets,
    MOMENT: tl.constexpr,
    N: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    READ_STORED: tl.constexpr,
):
    """Store a moment (float32 ``value``) rounded once to its dtype and return the stored value in float32, which
    the step reads where READ_STORED (a state dtype other than the parameters', or STOCHASTIC; else ``value``:
    the parameters' own 16-bit state feeds the level unrounded, as it always has). bfloat16 is rounded on float32's bits: r is added and the
    low half cut off, r = 0x7FFF plus the lowest kept bit (to nearest even, as torch rounds; also in Triton's
    interpreter, whose cast truncates) or, STOCHASTIC, r = H(key + element) >> 16; NaN and inf are cast."""
    if ptrs.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        if STOCHASTIC:
            noise = _hash32(_moment_key(step, rounding_indices, slot, MOMENT, N) + offsets.to(tl.uint32)) >> 16
        else:
            noise = 0x7FFF + ((bits >> 16) & 1)
        cut = ((bits + noise) & 0xFFFF0000).to(tl.float32, bitcast=True)
        stored = tl.where(tl.abs(value) < float("inf"), cut, value).to(tl.bfloat16)
    else:
        stored = value.to(ptrs.dtype.element_ty)
    tl.store(ptrs, stored, mask=mask)
    if READ_STORED:
        value = stored.to(tl.float32)
    return value


@triton.jit
def _elementwise_denominator(v, bias_correction2_sqrt, eps):
    """sqrt(v) / sqrt(1 - γⁿ) + ε, as the loop's ``(v.sqrt() / bc2_sqrt).add_(eps)``."""
    return tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + tl.cast(eps, tl.float32)


@triton.jit
def _gradient_input(
    grad_ptrs,
    theta,
    mask,
    grad_scale,
    weight_decay,
    UNSCALE: tl.constexpr,
    STORE_UNSCALED: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    COUPLED: tl.constexpr,
):
    """x⁽⁰⁾: the gradient (divided by GradScaler's scale), negated to maximize, plus λθ for L2 decay."""
    g = tl.load(grad_ptrs, mask=mask).to(tl.float32)
    if UNSCALE:
        g = tl.div_rn(g, grad_scale)
        if STORE_UNSCALED:
            tl.store(grad_ptrs, g.to(grad_ptrs.dtype.element_ty), mask=mask)
    if MAXIMIZE:
        g = -g
    if COUPLED:
        g = tl.fma(theta, tl.cast(weight_decay, tl.float32), g)
    return g


@triton.jit
def _pass_block(
    thetas,
    grads,
    exp_avgs,
    exp_avg_sqs,
    steps,
    step_offsets,
    rounding_indices,
    partial_sums,
    denominators,
    grad_scale_ptr,
    lr_tensor,
    lr_value,
    weight_decay,
    lerp_coefficients,
    gammas,
    one_minus_gammas,
    epsilons,
    log2_beta_his,
    log2_beta_los,
    log2_gamma_his,
    log2_gamma_los,
    n_chunks,
    pid,
    slot,
    base,
    numel,
    N: tl.constexpr,
    K: tl.constexpr,
    FIRST: tl.constexpr,
    END: tl.constexpr,
    REPLAY_FROM: tl.constexpr,
    TENSOR_MODES: tl.constexpr,
    KEEPS_M: tl.constexpr,
    LERP_FROM_START: tl.constexpr,
    DECAY: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    HAS_OFFSETS: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    READ_STORED: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One block of one tensor through levels FIRST..END (see the module docstring)."""
    offsets = base + tl.arange(0, BLOCK_SIZE)
    if MASKED:
        mask = offsets < numel
    else:
        mask = None
    step = tl.load(_select(steps, slot, 0, N)).to(tl.float64)
    FINAL: tl.constexpr = END == K
    COUPLED: tl.constexpr = DECAY == 2
    # Does this pass read the gradient (first pass, or replaying a β = 0 tensor-mode level from it)?
    RESUMES_STORED_M: tl.constexpr = (((KEEPS_M << 1) >> FIRST) & 1) == 1  # level FIRST - 1 keeps m
    READS_GRADIENT: tl.constexpr = FIRST == 0 or (not RESUMES_STORED_M and REPLAY_FROM < 0)
    param_ptrs = _select(thetas, slot, 0, N) + offsets
    grad_ptrs = _select(grads, slot, 0, N) + offsets
    theta = None
    if FINAL or (COUPLED and READS_GRADIENT):
        theta = tl.load(param_ptrs, mask=mask).to(tl.float32)
    grad_scale = 1.0
    if HAS_GRAD_SCALE:
        grad_scale = tl.load(grad_scale_ptr).to(tl.float32)
    if LR_IS_TENSOR:
        lr = tl.load(lr_tensor).to(tl.float64)
    else:
        lr = tl.cast(lr_value, tl.float64)
    update = None  # -lr * x^(k), once known

    if FIRST == 0:
        x = _gradient_input(
            grad_ptrs, theta, mask, grad_scale, weight_decay, HAS_GRAD_SCALE, HAS_GRAD_SCALE, MAXIMIZE, COUPLED
        )
    else:
        # Resume after the tensor-mode level t = FIRST - 1, whose denominator the finish kernel wrote.
        t: tl.constexpr = FIRST - 1
        if RESUMES_STORED_M:
            m = tl.load(_select(exp_avgs, slot, t * N, N) + offsets, mask=mask).to(tl.float32)
        else:
            # β_t = 0: m_t = x^(t-1), rebuilt from the updated state below level t.
            if REPLAY_FROM >= 0:
                r: tl.constexpr = REPLAY_FROM
                n_r = _level_count(step, step_offsets, slot, r, N, HAS_OFFSETS)
                m = tl.load(_select(exp_avgs, slot, r * N, N) + offsets, mask=mask).to(tl.float32)
                if ((TENSOR_MODES >> r) & 1) == 1:
                    denominator = tl.load(denominators + r * N + slot)
                else:
                    bias_correction2_sqrt = tl.sqrt(1.0 - _power(log2_gamma_his[r], log2_gamma_los[r], n_r)).to(
                        tl.float32
                    )
                    v = tl.load(_select(exp_avg_sqs, slot, r * N, N) + offsets, mask=mask).to(tl.float32)
                    denominator = _elementwise_denominator(v, bias_correction2_sqrt, epsilons[r])
                bias_correction1 = (1.0 - _power(log2_beta_his[r], log2_beta_los[r], n_r)).to(tl.float32)
                m = tl.div_rn(tl.div_rn(m, denominator), bias_correction1)
            else:
                # The first pass stored the unscaled gradient back: it is not divided by the scale again.
                m = _gradient_input(grad_ptrs, theta, mask, grad_scale, weight_decay, False, False, MAXIMIZE, COUPLED)
            for j in tl.static_range(REPLAY_FROM + 1, t):
                # β_j = 0: m_j = x^(j-1) and 1 - β_jⁿ = 1.
                if ((TENSOR_MODES >> j) & 1) == 1:
                    denominator = tl.load(denominators + j * N + slot)
                else:
                    n_j = _level_count(step, step_offsets, slot, j, N, HAS_OFFSETS)
                    bias_correction2_sqrt = tl.sqrt(1.0 - _power(log2_gamma_his[j], log2_gamma_los[j], n_j)).to(
                        tl.float32
                    )
                    v = tl.load(_select(exp_avg_sqs, slot, j * N, N) + offsets, mask=mask).to(tl.float32)
                    denominator = _elementwise_denominator(v, bias_correction2_sqrt, epsilons[j])
                m = tl.div_rn(m, denominator)
        n_t = _level_count(step, step_offsets, slot, t, N, HAS_OFFSETS)
        bias_correction1 = 1.0 - _power(log2_beta_his[t], log2_beta_los[t], n_t)
        denominator = tl.load(denominators + t * N + slot)
        if t == K - 1:
            update = tl.div_rn((-(lr / bias_correction1)).to(tl.float32) * m, denominator)
        else:
            x = tl.div_rn(tl.div_rn(m, denominator), bias_correction1.to(tl.float32))

    for i in tl.static_range(FIRST, END):
        # Elementwise level i: m and v in place; its output feeds level i + 1 or θ.
        n_i = _level_count(step, step_offsets, slot, i, N, HAS_OFFSETS)
        v_ptrs = _select(exp_avg_sqs, slot, i * N, N) + offsets
        v = tl.load(v_ptrs, mask=mask).to(tl.float32)
        if ((KEEPS_M >> i) & 1) == 1:
            m_ptrs = _select(exp_avgs, slot, i * N, N) + offsets
            m = tl.load(m_ptrs, mask=mask).to(tl.float32)
            # torch's lerp: start + w (end - start) for |w| < 0.5, else end + (w - 1)(end - start).
            if ((LERP_FROM_START >> i) & 1) == 1:
                m = tl.fma(tl.cast(lerp_coefficients[i], tl.float32), x - m, m)
            else:
                m = tl.fma(tl.cast(lerp_coefficients[i], tl.float32), x - m, x)
            m = _store_moment(m_ptrs, m, mask, step, rounding_indices, slot, offsets, 2 * i, N, STOCHASTIC, READ_STORED)
        else:
            m = x
        v = tl.fma(tl.cast(one_minus_gammas[i], tl.float32) * x, x, v * tl.cast(gammas[i], tl.float32))
        v = _store_moment(v_ptrs, v, mask, step, rounding_indices, slot, offsets, 2 * i + 1, N, STOCHASTIC, READ_STORED)
        bias_correction2_sqrt = tl.sqrt(1.0 - _power(log2_gamma_his[i], log2_gamma_los[i], n_i)).to(tl.float32)
        bias_correction1 = 1.0 - _power(log2_beta_his[i], log2_beta_los[i], n_i)
        denominator = _elementwise_denominator(v, bias_correction2_sqrt, epsilons[i])
        if i == K - 1:
            update = tl.div_rn((-(lr / bias_correction1)).to(tl.float32) * m, denominator)
        else:
            x = tl.div_rn(tl.div_rn(m, denominator), bias_correction1.to(tl.float32))

    if FINAL:
        if DECAY == 1:
            theta = theta * (1.0 - lr * tl.cast(weight_decay, tl.float64)).to(tl.float32)
        tl.store(param_ptrs, (theta + update).to(param_ptrs.dtype.element_ty), mask=mask)
    else:
        # Tensor-mode level END: its m (if kept) now, its v once every block's sum of squares is in.
        if ((KEEPS_M >> END) & 1) == 1:
            m_ptrs = _select(exp_avgs, slot, END * N, N) + offsets
            m = tl.load(m_ptrs, mask=mask).to(tl.float32)
            if ((LERP_FROM_START >> END) & 1) == 1:
                m = tl.fma(tl.cast(lerp_coefficients[END], tl.float32), x - m, m)
            else:
                m = tl.fma(tl.cast(lerp_coefficients[END], tl.float32), x - m, x)
            _store_moment(m_ptrs, m, mask, step, rounding_indices, slot, offsets, 2 * END, N, STOCHASTIC, READ_STORED)
        squares = x * x
        if MASKED:
            squares = tl.where(mask, squares, 0.0)
        tl.store(partial_sums + END * n_chunks + pid, tl.sum(squares, axis=0))


@triton.jit(do_not_specialize=["numels", "chunk_starts", "n_chunks"])
def _level_pass_kernel(
    thetas,
    grads,
    exp_avgs,
    exp_avg_sqs,
    steps,
    numels,
    chunk_starts,
    step_offsets,
    rounding_indices,
    partial_sums,
    denominators,
    found_inf,
    grad_scale,
    lr_tensor,
    lr_value,
    weight_decay,
    lerp_coefficients,
    gammas,
    one_minus_gammas,
    epsilons,
    log2_beta_his,
    log2_beta_los,
    log2_gamma_his,
    log2_gamma_los,
    n_chunks,
    N: tl.constexpr,
    K: tl.constexpr,
    FIRST: tl.constexpr,
    END: tl.constexpr,
    REPLAY_FROM: tl.constexpr,
    TENSOR_MODES: tl.constexpr,
    KEEPS_M: tl.constexpr,
    LERP_FROM_START: tl.constexpr,
    DECAY: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    HAS_OFFSETS: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    READ_STORED: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """One pass (levels FIRST..END) over one block per program, of the tensor whose blocks hold it.

    (The parameters are ``thetas``: Triton's generated argument binder has a local named ``params``.)
    """
    pid = tl.program_id(0)
    if HAS_FOUND_INF:
        proceed = tl.load(found_inf) == 0
    else:
        proceed = pid >= 0
    if proceed:
        slot = 0
        for s in tl.static_range(1, N):
            slot = tl.where(pid >= chunk_starts[s], s, slot)
        numel = _select(numels, slot, 0, N)
        base = (pid - _select(chunk_starts, slot, 0, N)).to(tl.int64) * BLOCK_SIZE
        if base + BLOCK_SIZE <= numel:
            _pass_block(
                thetas,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                step_offsets,
                rounding_indices,
                partial_sums,
                denominators,
                grad_scale,
                lr_tensor,
                lr_value,
                weight_decay,
                lerp_coefficients,
                gammas,
                one_minus_gammas,
                epsilons,
                log2_beta_his,
                log2_beta_los,
                log2_gamma_his,
                log2_gamma_los,
                n_chunks,
                pid,
                slot,
                base,
                numel,
                N,
                K,
                FIRST,
                END,
                REPLAY_FROM,
                TENSOR_MODES,
                KEEPS_M,
                LERP_FROM_START,
                DECAY,
                MAXIMIZE,
                HAS_GRAD_SCALE,
                LR_IS_TENSOR,
                HAS_OFFSETS,
                STOCHASTIC,
                READ_STORED,
                BLOCK_SIZE,
                False,
            )
        else:
            _pass_block(
                thetas,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                step_offsets,
                rounding_indices,
                partial_sums,
                denominators,
                grad_scale,
                lr_tensor,
                lr_value,
                weight_decay,
                lerp_coefficients,
                gammas,
                one_minus_gammas,
                epsilons,
                log2_beta_his,
                log2_beta_los,
                log2_gamma_his,
                log2_gamma_los,
                n_chunks,
                pid,
                slot,
                base,
                numel,
                N,
                K,
                FIRST,
                END,
                REPLAY_FROM,
                TENSOR_MODES,
                KEEPS_M,
                LERP_FROM_START,
                DECAY,
                MAXIMIZE,
                HAS_GRAD_SCALE,
                LR_IS_TENSOR,
                HAS_OFFSETS,
                STOCHASTIC,
                READ_STORED,
                BLOCK_SIZE,
                True,
            )


@triton.jit(do_not_specialize=["numels", "chunk_starts", "n_chunks"])
def _tensor_level_finish_kernel(
    exp_avg_sqs,
    steps,
    numels,
    chunk_starts,
    step_offsets,
    rounding_indices,
    partial_sums,
    denominators,
    found_inf,
    gamma,
    one_minus_gamma,
    eps,
    log2_gamma_hi,
    log2_gamma_lo,
    n_chunks,
    N: tl.constexpr,
    LEVEL: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    HAS_OFFSETS: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    READ_STORED: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE: tl.constexpr,
):
    """Tensor-mode level LEVEL of one tensor per program: v ← γ v + (1 - γ) mean(x²), its denominator."""
    slot = tl.program_id(0)
    if HAS_FOUND_INF:
        proceed = tl.load(found_inf) == 0
    else:
        proceed = slot >= 0
    if proceed:
        numel = _select(numels, slot, 0, N)
        first = _select(chunk_starts, slot, 0, N)
        end = first + (numel + BLOCK_SIZE - 1) // BLOCK_SIZE
        sums = partial_sums + LEVEL * n_chunks
        total = tl.zeros([TILE], dtype=tl.float64)
        for start in range(first, end, TILE):
            index = start + tl.arange(0, TILE)
            total += tl.load(sums + index, mask=index < end, other=0.0).to(tl.float64)
        mean_square = (tl.sum(total, axis=0) / tl.maximum(numel, 1).to(tl.float64)).to(tl.float32)
        v_ptr = _select(exp_avg_sqs, slot, LEVEL * N, N)
        v = tl.fma(
            tl.cast(one_minus_gamma, tl.float32),
            mean_square,
            tl.load(v_ptr).to(tl.float32) * tl.cast(gamma, tl.float32),
        )
        step = tl.load(_select(steps, slot, 0, N)).to(tl.float64)
        v = _store_moment(
            v_ptr, v, None, step, rounding_indices, slot, slot * 0, 2 * LEVEL + 1, N, STOCHASTIC, READ_STORED
        )
        n = _level_count(step, step_offsets, slot, LEVEL, N, HAS_OFFSETS)
        bias_correction2_sqrt = tl.sqrt(1.0 - _power(log2_gamma_hi, log2_gamma_lo, n)).to(tl.float32)
        tl.store(denominators + LEVEL * N + slot, _elementwise_denominator(v, bias_correction2_sqrt, eps))


# ----------------------------------------------------------------------------------------------------
# Host side


class _Pass(NamedTuple):
    """Levels ``first..end-1`` elementwise, then tensor-mode level ``end`` (or θ when ``end == k``).

    ``replay_from``: for a pass that resumes after a β = 0 tensor-mode level, the level whose stored m
    the replay starts from (-1: the gradient).
    """

    first: int
    end: int
    replay_from: int


def _checked(level: Any) -> Level:
    """``level`` (a :class:`kadam.vocabulary.Level` with 0 ≤ β, γ < 1 and ε ≥ 0) with float values; else ValueError."""
    if not isinstance(level, Level):
        raise ValueError(f"levels must hold kadam.vocabulary.Level objects, got {level!r}")
    beta, gamma, eps = float(level.beta), float(level.gamma), float(level.eps)
    if not (0.0 <= beta < 1.0 and 0.0 <= gamma < 1.0 and eps >= 0.0):
        raise ValueError(f"levels: need 0 <= beta < 1, 0 <= gamma < 1, eps >= 0, got {level!r}")
    return Level(beta, gamma, eps, level.norm)


def _plan(levels: Sequence[Level]) -> list[_Pass]:
    """The passes of one step (module docstring)."""
    k = len(levels)
    passes = []
    first = 0
    while True:
        end = first
        while end < k and not levels[end].tensor_mode:
            end += 1
        replay_from = -1
        if first > 0 and levels[first - 1].beta == 0.0:
            below = [j for j in range(first - 1) if levels[j].beta != 0.0]
            replay_from = below[-1] if below else -1
        passes.append(_Pass(first, end, replay_from))
        if end == k:
            return passes
        first = end + 1


def stream_counts(
    levels: Sequence[Any], *, weight_decay: float = 0.0, decoupled: bool = True, grad_scale: bool = False
) -> tuple[int, int]:
    """(reads, writes) per parameter element of one fused step: elements of θ, g and the moments.

    Multiply by the element size for bytes; this is the traffic the kernel is designed to move (each
    element once per pass that touches it), the floor for this pass structure. See the module docstring.
    """
    hyper = [_checked(level) for level in levels]
    k = len(hyper)
    coupled = weight_decay != 0.0 and not decoupled
    reads = writes = 0
    for step_pass in _plan(hyper):
        reads_theta = step_pass.end == k
        if step_pass.first == 0:
            reads += 1  # g
            writes += int(grad_scale)
            reads_theta |= coupled
        else:
            t = step_pass.first - 1
            if hyper[t].beta != 0.0:
                reads += 1
            else:
                r = step_pass.replay_from
                if r >= 0:
                    reads += 1 + int(not hyper[r].tensor_mode)
                else:
                    reads += 1
                    reads_theta |= coupled
                reads += sum(1 for j in range(r + 1, t) if not hyper[j].tensor_mode)
        for i in range(step_pass.first, step_pass.end):
            kept = int(hyper[i].beta != 0.0)
            reads += 1 + kept
            writes += 1 + kept
        if step_pass.end < k and hyper[step_pass.end].beta != 0.0:
            reads += 1
            writes += 1
        reads += int(reads_theta)
        writes += int(step_pass.end == k)
    return reads, writes


def _bits(flags: Sequence[bool]) -> int:
    return sum(1 << i for i, flag in enumerate(flags) if flag)


def _log2_split(value: float) -> tuple[float, float]:
    """log2(value) as float32 (hi, lo) whose float64 sum is exact to about 2⁻⁴⁸ relative; (-inf, 0) for 0."""
    if value == 0.0:
        return -math.inf, 0.0
    log2 = math.log2(value)
    hi = float(np.float32(log2))
    return hi, float(np.float32(log2 - hi))


def _lerp_coefficient(beta: float) -> tuple[float, bool]:
    """torch's lerp with weight w = 1 - β (in float32): coefficient w if |w| < 0.5 (from m), else w - 1 (from x)."""
    weight = np.float32(1.0 - beta)
    if abs(weight) < 0.5:
        return float(weight), True
    return float(np.float32(weight - np.float32(1.0))), False


def _is_interpreted() -> bool:
    return type(_level_pass_kernel).__name__ == "InterpretedFunction"


def _as_real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


class _Slot(NamedTuple):
    """One tensor of a launch: the tensors the kernel writes, and the originals to copy back to."""

    param: Tensor
    grad: Tensor
    exp_avgs: list[Tensor | None]
    exp_avg_sqs: list[Tensor]
    step: Tensor
    offsets: list[float]
    rounding_index: int


def triton_fused_kadam_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs_per_level: Sequence[Sequence[Tensor] | None],
    exp_avg_sqs_per_level: Sequence[Sequence[Tensor]],
    state_steps: Sequence[Tensor],
    *,
    levels: Sequence[Any],
    lr: float | Tensor,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    step_offsets: Sequence[Sequence[float]] | None = None,
    rounding_indices: Sequence[int] | None = None,
) -> None:
    r"""One fused k-Adam step (THEORY §1) of ``params`` in place, on the GPU (module docstring).

    Args:
        params: parameters (float32, bfloat16 or float16, or their complex types), all on one or more
            CUDA devices (CPU tensors only when the kernels run in Triton's interpreter).
        grads: their gradients, each of its parameter's dtype and shape.
        exp_avgs_per_level: for level i (0-based), the first moments of all parameters, or ``None``
            for a level with β = 0, which keeps none (m = x).
        exp_avg_sqs_per_level: for level i, the second moments: tensors of the parameters' shapes for
            an elementwise level, 0-dim tensors for a tensor-mode level. States are of the parameter's
            dtype or float32 (one dtype per level across a call's tensors of one dtype).
        state_steps: one step count per parameter (0-dim float tensor, best on the parameter's device:
            a CPU count is copied there and back); incremented by 1 (unless ``found_inf``).
        levels: the k levels (:class:`kadam.vocabulary.Level`).
        lr: η, a Python float or a 0-dim tensor (on the device, for a step without host synchronization).
        weight_decay: λ.
        decoupled: AdamW's θ ← (1 − ηλ)θ if True, Adam's L2 term x⁽⁰⁾ = g + λθ if False.
        maximize: step along +g.
        grad_scale: GradScaler's scale (1-element float tensor on the device): gradients are divided
            by it and the unscaled gradients stored back.
        found_inf: GradScaler's flag (1-element float tensor on the device): nonzero skips the step and
            leaves everything untouched.
        step_offsets: per level, per parameter, the step count at which the level started (a level
            added at a resume); ``None`` for all zeros. Level i's bias corrections use
            ``step - step_offsets[i][j]``.
        rounding_indices: None to round bfloat16 moments to nearest; else each parameter's position in the
            optimizer, with which (and the step count after the increment) bfloat16 moments are rounded
            stochastically (:mod:`kadam.optimizer.precision`).
    """
    n_params = len(params)
    k = len(levels)
    if k < 1:
        raise ValueError("levels must hold at least one level")
    hyper = [_checked(level) for level in levels]
    for name, values in (("grads", grads), ("state_steps", state_steps)):
        if len(values) != n_params:
            raise ValueError(f"{name} must hold one tensor per parameter ({n_params}), got {len(values)}")
    if len(exp_avgs_per_level) != k or len(exp_avg_sqs_per_level) != k:
        raise ValueError(
            f"exp_avgs_per_level and exp_avg_sqs_per_level must hold one list per level (k = {k}), got "
            f"{len(exp_avgs_per_level)} and {len(exp_avg_sqs_per_level)}"
        )
    for i, (level, exp_avgs, exp_avg_sqs) in enumerate(zip(hyper, exp_avgs_per_level, exp_avg_sqs_per_level)):
        if (exp_avgs is None) != (level.beta == 0.0):
            raise ValueError(
                f"exp_avgs_per_level[{i}] must be None exactly when the level's beta is 0 (it keeps no first "
                f"moment), got {'None' if exp_avgs is None else 'tensors'} with beta = {level.beta}"
            )
        for name, values in (("exp_avgs_per_level", exp_avgs), ("exp_avg_sqs_per_level", exp_avg_sqs)):
            if values is not None and len(values) != n_params:
                raise ValueError(f"{name}[{i}] must hold one tensor per parameter ({n_params}), got {len(values)}")
    if step_offsets is not None and (
        len(step_offsets) != k or any(len(offsets) != n_params for offsets in step_offsets)
    ):
        raise ValueError(f"step_offsets must be None or k = {k} lists of one number per parameter")
    if rounding_indices is not None and len(rounding_indices) != n_params:
        raise ValueError(f"rounding_indices must be None or hold one index per parameter ({n_params})")
    if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool) or not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"lr must be a float or a 1-element floating-point tensor, got {lr!r}")
    elif isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0.0:
        raise ValueError(f"lr must be a number >= 0 or a tensor, got {lr!r}")
    if n_params == 0:
        return
    _fused_step(
        params,
        grads,
        exp_avgs_per_level,
        exp_avg_sqs_per_level,
        state_steps,
        hyper,
        lr=lr,
        weight_decay=float(weight_decay),
        decoupled=decoupled,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
        step_offsets=step_offsets,
        rounding_indices=rounding_indices,
    )


@torch.compiler.disable
def _fused_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs_per_level: Sequence[Sequence[Tensor] | None],
    exp_avg_sqs_per_level: Sequence[Sequence[Tensor]],
    state_steps: Sequence[Tensor],
    hyper: list[Level],
    *,
    lr: float | Tensor,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    step_offsets: Sequence[Sequence[float]] | None,
    rounding_indices: Sequence[int] | None = None,
) -> None:
    interpreted = _is_interpreted()
    groups: dict[tuple, list[int]] = {}
    for j, param in enumerate(params):
        real_dtype = param.real.dtype if param.is_complex() else param.dtype
        if real_dtype not in TRITON_DTYPES:
            raise RuntimeError(f"the Triton KAdam kernel steps parameters of dtype {TRITON_DTYPES}, got {param.dtype}")
        if param.device.type == "cpu" and not interpreted:
            raise RuntimeError(
                "the Triton KAdam kernel runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1); "
                "on the CPU use KAdam's fused CPU kernel"
            )
        key = (
            param.device,
            param.dtype,
            tuple(None if ms is None else ms[j].dtype for ms in exp_avgs_per_level),
            tuple(vs[j].dtype for vs in exp_avg_sqs_per_level),
        )
        groups.setdefault(key, []).append(j)
    for (device, _, _, _), indices in groups.items():
        for start in range(0, len(indices), TENSORS_PER_LAUNCH):
            chunk = indices[start : start + TENSORS_PER_LAUNCH]
            slots = [
                _slot(j, params, grads, exp_avgs_per_level, exp_avg_sqs_per_level, state_steps, hyper, step_offsets)
                for j in chunk
            ]
            if rounding_indices is not None:
                slots = [slot._replace(rounding_index=int(rounding_indices[j])) for slot, j in zip(slots, chunk)]
            _launch(
                slots,
                device,
                hyper,
                lr=lr,
                weight_decay=weight_decay,
                decoupled=decoupled,
                maximize=maximize,
                grad_scale=grad_scale,
                found_inf=found_inf,
                stochastic=rounding_indices is not None,
            )


def _slot(j, params, grads, exp_avgs_per_level, exp_avg_sqs_per_level, state_steps, hyper, step_offsets) -> _Slot:
    param = _as_real(params[j])
    grad = _as_real(grads[j])
    if grad.shape != param.shape or grad.dtype != param.dtype:
        raise ValueError(
            f"grads[{j}] must match its parameter's shape and dtype, got {tuple(grads[j].shape)}, {grads[j].dtype}"
        )
    exp_avgs: list[Tensor | None] = []
    exp_avg_sqs: list[Tensor] = []
    for i, level in enumerate(hyper):
        ms = exp_avgs_per_level[i]
        m = None if ms is None else _as_real(ms[j])
        v = exp_avg_sqs_per_level[i][j]
        v = v if level.tensor_mode else _as_real(v)
        for name, state, expected in (
            ("exp_avgs", m, param.shape),
            ("exp_avg_sqs", v, () if level.tensor_mode else param.shape),
        ):
            if state is None:
                continue
            if tuple(state.shape) != tuple(expected) and not (
                level.tensor_mode and name == "exp_avg_sqs" and state.numel() == 1
            ):
                raise ValueError(
                    f"{name} of level {i + 1} for parameter {j} has shape {tuple(state.shape)}, expected {tuple(expected)}"
                )
            if state.dtype not in (param.dtype, torch.float32, torch.bfloat16) and not (
                name == "exp_avg_sqs" and level.tensor_mode and state.is_floating_point()
            ):
                raise ValueError(
                    f"{name} of level {i + 1} for parameter {j}: dtype {state.dtype}, expected {param.dtype}, "
                    "float32 or bfloat16"
                )
            if state.device != param.device:
                raise ValueError(
                    f"{name} of level {i + 1} for parameter {j} is on {state.device}, its parameter on {param.device}"
                )
        exp_avgs.append(m)
        exp_avg_sqs.append(v)
    offsets = [0.0] * len(hyper) if step_offsets is None else [float(step_offsets[i][j]) for i in range(len(hyper))]
    return _Slot(param, grad, exp_avgs, exp_avg_sqs, state_steps[j], offsets, j)


def _launch(
    slots: list[_Slot],
    device: torch.device,
    hyper: list[Level],
    *,
    lr: float | Tensor,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    stochastic: bool = False,
) -> None:
    """All passes of one step for up to TENSORS_PER_LAUNCH tensors of one device and dtype combination
    (``stochastic``: bfloat16 moments rounded stochastically with the slots' ``rounding_index``)."""
    k = len(hyper)
    n = TENSORS_PER_LAUNCH
    # The kernels walk flat memory: a non-contiguous tensor is stepped in a contiguous copy, copied back.
    write_back: list[tuple[Tensor, Tensor]] = []

    def flat(tensor: Tensor, writable: bool = True) -> Tensor:
        if tensor.is_contiguous():
            return tensor
        copy = tensor.contiguous()
        if writable:
            write_back.append((tensor, copy))
        return copy

    params = [flat(slot.param) for slot in slots]
    grads = [flat(slot.grad, writable=grad_scale is not None) for slot in slots]
    exp_avgs = [[None if m is None else flat(m) for m in slot.exp_avgs] for slot in slots]
    exp_avg_sqs = [[v if hyper[i].tensor_mode else flat(v) for i, v in enumerate(slot.exp_avg_sqs)] for slot in slots]
    steps = [slot.step if slot.step.device == device else slot.step.to(device) for slot in slots]

    numels = [p.numel() for p in params]
    chunk_starts = []
    n_chunks = 0
    for numel in numels:
        chunk_starts.append(n_chunks)
        n_chunks += triton.cdiv(numel, BLOCK)
    padding = n - len(slots)
    # Empty slots repeat the first tensor with no blocks (their first block is past the last block).
    numels += [0] * padding
    chunk_starts += [n_chunks] * padding

    def padded(tensors: list[Tensor]) -> list[Tensor]:
        return tensors + [tensors[0]] * padding

    param_tuple = tuple(padded(params))
    grad_tuple = tuple(padded(grads))
    step_tuple = tuple(padded(steps))
    # Level-major flat tuples: [level * n + slot]; a level that keeps no m passes θ (never read).
    exp_avg_tuple = tuple(
        t
        for i in range(k)
        for t in padded([params[s] if exp_avgs[s][i] is None else exp_avgs[s][i] for s in range(len(slots))])
    )
    exp_avg_sq_tuple = tuple(t for i in range(k) for t in padded([exp_avg_sqs[s][i] for s in range(len(slots))]))
    has_offsets = any(offset != 0.0 for slot in slots for offset in slot.offsets)
    offsets_tuple = (
        tuple(float(slots[s].offsets[i]) if s < len(slots) else 0.0 for i in range(k) for s in range(n))
        if has_offsets
        else (0.0,)
    )

    rounding_tuple = tuple(slots[s].rounding_index if s < len(slots) else 0 for s in range(n))
    # The moments feed the levels as stored when their dtype is not the parameters' (state_dtype) or when
    # they are rounded stochastically; the parameters' own 16-bit state feeds them unrounded.
    read_stored = stochastic or any(
        state is not None and state.dtype != params[0].dtype for state in [*slots[0].exp_avgs, *slots[0].exp_avg_sqs]
    )
    any_tensor_mode = any(level.tensor_mode for level in hyper)
    partial_sums = torch.empty(max(k * n_chunks if any_tensor_mode else 1, 1), dtype=torch.float32, device=device)
    denominators = torch.empty((k * n if any_tensor_mode else 1), dtype=torch.float32, device=device)
    placeholder = denominators
    lr_is_tensor = isinstance(lr, Tensor)
    lr_tensor = (lr if lr.device == device else lr.to(device)) if lr_is_tensor else placeholder
    lr_value = 0.0 if lr_is_tensor else float(lr)
    grad_scale_arg = placeholder if grad_scale is None else grad_scale.to(device, non_blocking=True)
    found_inf_arg = placeholder if found_inf is None else found_inf.to(device, non_blocking=True)

    lerp = [_lerp_coefficient(level.beta) for level in hyper]
    beta_split = [_log2_split(level.beta) for level in hyper]
    gamma_split = [_log2_split(level.gamma) for level in hyper]
    float32 = lambda value: float(np.float32(value))  # noqa: E731 (the loop's float casts of its scalars)
    lerp_coefficients = tuple(c for c, _ in lerp)
    gammas = tuple(float32(level.gamma) for level in hyper)
    one_minus_gammas = tuple(float32(1.0 - level.gamma) for level in hyper)
    epsilons = tuple(float32(level.eps) for level in hyper)
    log2_beta_his, log2_beta_los = tuple(h for h, _ in beta_split), tuple(lo for _, lo in beta_split)
    log2_gamma_his, log2_gamma_los = tuple(h for h, _ in gamma_split), tuple(lo for _, lo in gamma_split)
    tensor_modes = _bits([level.tensor_mode for level in hyper])
    keeps_m = _bits([level.beta != 0.0 for level in hyper])
    lerp_from_start = _bits([from_start for _, from_start in lerp])
    decay = 0 if weight_decay == 0.0 else (1 if decoupled else 2)

    torch._foreach_add_(steps, 1)
    for step_pass in _plan(hyper):
        if n_chunks > 0:
            _level_pass_kernel[(n_chunks,)](
                param_tuple,
                grad_tuple,
                exp_avg_tuple,
                exp_avg_sq_tuple,
                step_tuple,
                tuple(numels),
                tuple(chunk_starts),
                offsets_tuple,
                rounding_tuple,
                partial_sums,
                denominators,
                found_inf_arg,
                grad_scale_arg,
                lr_tensor,
                lr_value,
                float32(weight_decay),
                lerp_coefficients,
                gammas,
                one_minus_gammas,
                epsilons,
                log2_beta_his,
                log2_beta_los,
                log2_gamma_his,
                log2_gamma_los,
                n_chunks,
                N=n,
                K=k,
                FIRST=step_pass.first,
                END=step_pass.end,
                REPLAY_FROM=step_pass.replay_from,
                TENSOR_MODES=tensor_modes,
                KEEPS_M=keeps_m,
                LERP_FROM_START=lerp_from_start,
                DECAY=decay,
                MAXIMIZE=bool(maximize),
                HAS_GRAD_SCALE=grad_scale is not None,
                HAS_FOUND_INF=found_inf is not None,
                LR_IS_TENSOR=lr_is_tensor,
                HAS_OFFSETS=has_offsets,
                STOCHASTIC=stochastic,
                READ_STORED=read_stored,
                BLOCK_SIZE=BLOCK,
                num_warps=_NUM_WARPS,
            )
        if step_pass.end < k:
            level = step_pass.end
            _tensor_level_finish_kernel[(len(slots),)](
                exp_avg_sq_tuple,
                step_tuple,
                tuple(numels),
                tuple(chunk_starts),
                offsets_tuple,
                rounding_tuple,
                partial_sums,
                denominators,
                found_inf_arg,
                gammas[level],
                one_minus_gammas[level],
                epsilons[level],
                log2_gamma_his[level],
                log2_gamma_los[level],
                max(n_chunks, 1),
                N=n,
                LEVEL=level,
                HAS_FOUND_INF=found_inf is not None,
                HAS_OFFSETS=has_offsets,
                STOCHASTIC=stochastic,
                READ_STORED=read_stored,
                BLOCK_SIZE=BLOCK,
                TILE=_FINISH_TILE,
                num_warps=4,
            )
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf_arg] * len(steps))
    for slot, step in zip(slots, steps):
        if step is not slot.step:
            slot.step.copy_(step)
    for original, copy in write_back:
        original.copy_(copy)
