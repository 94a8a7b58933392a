r"""k-Adam: Adam's adaptive normalization applied k times (THEORY §1).

One *adaptive normalization level* with hyperparameters :math:`(\beta, \gamma, \epsilon)` maps an input
sequence :math:`x_n` to an output sequence :math:`u_n`, elementwise, from zero states:

.. math::
    m_n = \beta m_{n-1} + (1-\beta) x_n,\quad
    v_n = \gamma v_{n-1} + (1-\gamma) x_n^2,\quad
    u_n = \frac{m_n / (1-\beta^n)}{\sqrt{v_n / (1-\gamma^n)} + \epsilon}.

*Tensor mode* replaces :math:`x_n^2` in :math:`v` by the scalar :math:`\mathrm{mean}(x_n^2)` over the
whole tensor: one :math:`v` per tensor, as a normalization layer sees it.

k-Adam chains k levels, level i with its own :math:`(\beta_i, \gamma_i, \epsilon_i, \mathrm{mode}_i)`:

.. math::
    x^{(0)}_n = g_n \;(+\lambda\theta_{n-1} \text{ for coupled L2 decay}),\quad
    x^{(i)}_n = \mathrm{level}_i(x^{(i-1)})_n,\quad
    \theta_n = (1-\eta\lambda)\theta_{n-1} - \eta x^{(k)}_n \;(\text{decoupled decay}).

k = 1 is torch's ``AdamW`` (``decoupled_weight_decay=True``) or ``Adam`` (``False``), bit for bit where
the operation order is torch's: the level-1 code below is torch's own sequence of operations.

Three implementations sit side by side, as in ``torch/optim/adam.py``: a single-tensor loop
(:func:`_single_tensor_kadam`), a multi-tensor one on ``torch._foreach_*`` ops
(:func:`_multi_tensor_kadam`), chosen as torch chooses (foreach on CUDA, the loop on CPU), and a fused
one (:func:`_fused_kadam`, ``fused=True``): torch's fused Adam/AdamW kernel for exactly Adam (k = 1,
elementwise) on every device, and for every other configuration the C++ kernel of
:mod:`kadam.optimizer._cpu_kernel` on the CPU and the Triton kernel of :mod:`kadam.optimizer._triton` on
CUDA. The fused kernels read raw pointers, so every tensor handed to them is checked first (shape,
dtype, device, the state each level needs). Level hyperparameters are parsed once, when a group
is added (:mod:`kadam.optimizer.levels`), and read from the group by each step.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _default_to_fused_or_foreach,
    _get_capturable_supported_devices,
    _get_fused_kernels_supported_devices,
    _get_scalar_dtype,
    _get_value,
    _to_scalar,
    _use_grad_for_differentiable,
    _view_as_real,
)

from kadam.optimizer import _cpu_kernel
from kadam.optimizer.levels import (
    LEVEL_KEYS,
    NORMS,
    Level,
    check_nonnegative,
    group_entries,
    group_levels,
    level_arguments,
    resolve_levels,
    warn_if_unstable,
    with_group_overrides,
)
from kadam.optimizer.precision import (
    check_state_options,
    math_dtype,
    moment_dtype,
    rounding_key,
    store_rounded_,
    tensor_base_key,
)

__all__ = ["KAdam", "kadam", "state_keys"]


def state_keys(level: int) -> tuple[str, str]:
    """State names of level ``level`` (1-based): torch's for level 1, suffixed for the others."""
    return ("exp_avg", "exp_avg_sq") if level == 1 else (f"exp_avg_{level}", f"exp_avg_sq_{level}")


def _keeps_first_moment(index: int, level: Level) -> bool:
    """Whether level ``index`` (1-based) stores its first moment: not for β₁ = 0 (then m_n = x_n, THEORY §1),
    except level 1, which keeps torch's ``exp_avg`` so that Adam/AdamW checkpoints load both ways."""
    return index == 1 or level.keeps_first_moment


def _offset_key(level: int) -> str:
    """State key of the step at which a level was added to a resumed run (absent: step 0)."""
    return f"step_offset_{level}"


_LEVEL_KEY = re.compile(r"exp_avg(?:_sq)?_(\d+)")


def _level_of_key(key: Any) -> int | None:
    """The level (>= 2) a state key ``exp_avg_{i}`` / ``exp_avg_sq_{i}`` belongs to; None for any other key."""
    match = _LEVEL_KEY.fullmatch(key) if isinstance(key, str) else None
    return int(match.group(1)) if match else None


def _saved_keeps_first_moment(saved_group: dict[str, Any], level: int) -> bool:
    """Whether level ``level`` >= 2 of a checkpoint's group kept its m (β ≠ 0 in its ``meta_betas``); True
    when the group does not say."""
    try:
        return float(saved_group["meta_betas"][level - 2][0]) != 0.0
    except (KeyError, IndexError, TypeError, ValueError):
        return True


def _check_lr(lr: Any, name: str = "lr") -> None:
    """ValueError unless ``lr`` is a finite number >= 0 or a 1-element tensor of one (as torch's Adam takes it)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(lr.shape)}")
        if lr.is_complex() or lr.dtype == torch.bool:
            raise ValueError(f"Tensor {name} must be real, got dtype {lr.dtype}")
        lr = lr.item()
    check_nonnegative(name, lr)


def _named_or_plain(params: list[Any]) -> list[Any]:
    """The tensors of a group's ``params``, given plain or named (``(name, tensor)`` pairs, as torch takes them)."""
    return [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]


# torch's Adam/AdamW flags that KAdam accepts only at their defaults, with the reason.
_UNSUPPORTED_FLAGS = {
    "amsgrad": "KAdam does not implement AMSGrad's running maximum of the second moment",
    "differentiable": "differentiable=True (autograd through the step) is not implemented",
}


def _check_torch_flags(flags: dict[str, Any]) -> None:
    for name, value in flags.items():
        if value is not False:
            raise ValueError(f"{name} must be False for KAdam ({_UNSUPPORTED_FLAGS[name]}), got {value!r}")


class KAdam(Optimizer):
    r"""k-Adam (THEORY §1): Adam's adaptive normalization applied ``k`` times.

    ``KAdam(k=1)`` is ``torch.optim.AdamW`` (``decoupled_weight_decay=True``, the default) or
    ``torch.optim.Adam`` (``False``). Each step, with :math:`x^{(0)} = g` (plus :math:`\lambda\theta`
    for coupled decay) and for levels :math:`i = 1..k` (:class:`~kadam.optimizer.levels.Level`):

    .. math::
        m_i \leftarrow \beta_i m_i + (1-\beta_i) x^{(i-1)},\quad
        v_i \leftarrow \gamma_i v_i + (1-\gamma_i) (x^{(i-1)})^2,\quad
        x^{(i)} = \frac{m_i / (1-\beta_i^n)}{\sqrt{v_i / (1-\gamma_i^n)} + \epsilon_i},

    then :math:`\theta \leftarrow (1-\eta\lambda)\theta - \eta x^{(k)}`. In ``"tensor"`` mode a level's
    :math:`v` is one scalar per tensor, driven by :math:`\mathrm{mean}((x^{(i-1)})^2)`.

    The positional arguments are ``torch.optim.AdamW``'s, in its order, so ``AdamW(...)`` becomes
    ``KAdam(..., k=2)`` without changing an argument; the level options are keyword-only.

    Args:
        params: iterable of parameters or parameter groups, as for any torch optimizer.
        lr: learning rate η (default 1e-3), a finite number >= 0; a float or a 1-element tensor of any
            shape, as torch's Adam takes it (schedulers update a tensor lr in place, so a compiled step
            does not recompile).
        betas: level 1's (β, γ), exactly torch's ``betas`` (default (0.9, 0.999)); or a sequence of k
            pairs that sets every level (then ``meta_betas`` must not be given).
        eps: ε added to each level's denominator, a finite number >= 0: one value for every level, or
            a sequence of k.
        weight_decay: λ (default 1e-2, AdamW's default), a finite number >= 0.
        amsgrad: torch's flag; only False (KAdam has no AMSGrad variant).
        k: number of adaptive normalization levels (default 2; 1 is Adam/AdamW).
        norm: level 1's mode, ``"elementwise"`` (Adam) or ``"tensor"``; or a sequence of k modes that
            sets every level (then ``meta_norm`` must not be given).
        meta_betas: (β, γ) of levels 2..k, one pair for all or a sequence of k − 1 pairs
            (default (0.0, 0.999)).
        meta_norm: mode of levels 2..k, one mode for all or a sequence of k − 1 (default "tensor").
        decoupled_weight_decay: True for AdamW's decay θ ← (1 − ηλ)θ, False for Adam's L2 term in g.
        maximize: maximize the objective instead of minimizing it.
        foreach: use the multi-tensor implementation (True) or the loop (False).
        capturable: as torch's: step counts live on the parameters' device and the step computes its
            bias corrections there, with no host synchronization (safe inside CUDA graphs); the
            parameters must be on a device torch supports for it (not the CPU), checked at each step
            as torch checks it. Not with the CPU kernel.
        differentiable: torch's flag; only False.
        fused: use the fused implementation; not together with ``foreach=True``. k = 1 elementwise
            (exactly Adam) runs torch's fused Adam/AdamW kernel on every device, so it is
            ``AdamW(fused=True)`` bit for bit. Every other configuration: on the CPU one kernel streams
            all levels (:mod:`kadam.optimizer._cpu_kernel`; float32/64/16 and bfloat16 parameters,
            float32 math for the 16-bit ones; honours GradScaler's ``grad_scale`` and ``found_inf``); on
            CUDA the Triton kernel of :mod:`kadam.optimizer._triton` (needs ``triton``;
            float32, bfloat16 and float16 parameters: float64 raises ``RuntimeError``, use
            ``foreach=True``). On a device without a fused kernel for the levels (other devices: all
            but k = 1 elementwise) the step raises ``RuntimeError``, as torch's does. With ``fused=None`` and ``foreach=None`` (the defaults) the step picks the
            fused kernel for plain CPU tensors of a kernel dtype unless the levels are exactly Adam's
            (k = 1, elementwise, which keeps torch's default and its bitwise equality with ``AdamW``),
            and otherwise chooses between loop and foreach as torch does (foreach on CUDA).
        state_dtype: the dtype of every moment of every level: ``None`` (default) the parameter's,
            ``torch.float32`` or ``torch.bfloat16`` (half the bytes of float32 state; ``torch.float16``
            is refused, its range cannot hold g²). In a dtype other than the parameter's, each step
            computes in float32 (float64 for float64 parameters), rounds each moment once when storing
            it and reads it as stored (:mod:`kadam.optimizer.precision`, THEORY §1); every path (loop,
            foreach, the fused CPU and Triton kernels) does so. Checkpoints keep the state in its dtype
            and load into another ``state_dtype`` with a cast. Real parameters only.
        stochastic_rounding: round bfloat16 moments stochastically (unbiased: E[SR(a)] = a) instead of
            to nearest, with random bits hashed from the step count, the parameter's position in the
            optimizer and the element, so runs are reproducible and no global RNG state is touched. Needs
            bfloat16 moments (``state_dtype=torch.bfloat16``, or bfloat16 parameters); else ValueError.

    A torch flag given a value KAdam does not implement raises ``ValueError``, and so does a
    hyperparameter out of its range: β and γ in [0, 1); lr, eps and weight_decay finite and >= 0 (torch's
    AdamW refuses a NaN lr but accepts an infinite one, which turns every parameter into NaN).

    The level arguments are parsed by :func:`kadam.optimizer.levels.resolve_levels`. A parameter group
    may override any of them, and a key means there what the constructor argument of that name means:
    ``{"params": ..., "eps": 1e-3}`` sets ε of every level of that group, as the constructor's ``eps``
    does; ``"betas"`` and ``"norm"`` set level 1 (or every level, given per level) and keep the
    constructor's meta levels. The group then holds its levels in canonical form (level 1 in
    ``betas``/``eps``/``norm``, levels 2..k as tuples in ``meta_betas``/``meta_eps``/``meta_norm``), which
    ``state_dict()`` saves and ``step()`` reads; see :mod:`kadam.optimizer.levels`.

    The meta defaults, no momentum and one second moment per tensor, are the level that a
    normalization layer applies implicitly (THEORY §4): with them, k = 2 makes explicit what Adam on a
    normalized network does.

    A level with γ ≤ β² lies outside the stable region (THEORY §2): the bound on its output grows at
    ln β − ½ ln γ per step, and a ``UserWarning`` at the line that adds the group says so.

    State per parameter: ``step`` (0-dim float32, as torch keeps it), level 1 ``exp_avg`` /
    ``exp_avg_sq`` (torch's names, so AdamW checkpoints load both ways at k = 1) and level i ≥ 2
    ``exp_avg_{i}`` / ``exp_avg_sq_{i}`` (0-dim in tensor mode). A level i ≥ 2 with β = 0 has
    :math:`m_n = x_n` and keeps no ``exp_avg_{i}``: the default k = 2 holds AdamW's state plus one scalar
    per tensor; a checkpoint that still carries such a tensor loads, and the tensor is dropped. The moments
    are of ``state_dtype`` (default: the parameter's dtype; tensor-mode scalars included). Loading a checkpoint with fewer levels
    (resuming an AdamW run as 2-Adam) starts the new levels from zero, their bias correction counting
    from the resume; more levels, or a level in a different mode, is an error.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] | Sequence[tuple[float, float]] = (0.9, 0.999),
        eps: float | Sequence[float] = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        k: int = 2,
        norm: str | Sequence[str] = "elementwise",
        meta_betas: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
        meta_norm: str | Sequence[str] | None = None,
        decoupled_weight_decay: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
        stochastic_rounding: bool = False,
    ) -> None:
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        check_state_options(state_dtype, False)  # stochastic_rounding is checked per group, with its parameters
        defaults = {
            "lr": lr,
            # The constructor's level arguments in split form; every group stores its own resolved levels.
            **level_arguments(k, betas, eps, norm, meta_betas, None, meta_norm),
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "state_dtype": state_dtype,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)
        if fused:
            check_fused_support(self.param_groups)
            self._step_supports_amp_scaling = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as torch does; resolve and validate its levels once, and warn about unstable ones.

        The group's level keys override the constructor's arguments with their constructor meaning
        (class docstring) and are replaced by the canonical per-level entries.
        """
        _check_lr(param_group.get("lr", self.defaults["lr"]))  # a tensor stays a tensor, as torch's Adam keeps it
        check_nonnegative("weight_decay", param_group.get("weight_decay", self.defaults["weight_decay"]))
        _check_torch_flags({name: param_group.get(name, self.defaults[name]) for name in _UNSUPPORTED_FLAGS})
        params = param_group.get("params")
        if params is not None and not isinstance(params, (Tensor, set)):
            param_group["params"] = params = list(params)
        check_state_options(
            param_group.get("state_dtype", self.defaults["state_dtype"]),
            param_group.get("stochastic_rounding", self.defaults["stochastic_rounding"]),
            [params] if isinstance(params, Tensor) else _named_or_plain(params) if isinstance(params, list) else (),
        )
        levels = resolve_levels(**with_group_overrides(self.defaults, param_group))
        param_group.update(group_entries(levels))
        super().add_param_group(param_group)
        warn_if_unstable(levels)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("differentiable", False)
            group.setdefault("amsgrad", False)
            group.setdefault("capturable", False)
            group.setdefault("state_dtype", None)
            group.setdefault("stochastic_rounding", False)
            for param in group["params"]:  # older torch saved ``step`` as a Python number
                param_state = self.state.get(param, {})
                if len(param_state) != 0 and not torch.is_tensor(param_state["step"]):
                    device = param.device if group["capturable"] else None  # as torch's Adam places it
                    param_state["step"] = torch.tensor(
                        float(param_state["step"]), dtype=_get_scalar_dtype(), device=device
                    )
            # Groups pickled by older versions held level 2..k as given (one value for all of them).
            levels = resolve_levels(**{key: group.get(key) for key in LEVEL_KEYS})
            group.update(group_entries(levels))
            for param in group["params"]:  # older versions kept m of levels with beta1 = 0 (m = x)
                param_state = self.state.get(param, {})
                for i, level in enumerate(levels, start=1):
                    if not _keeps_first_moment(i, level):
                        param_state.pop(state_keys(i)[0], None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a KAdam, ``Adam`` or ``AdamW`` state dict.

        The level structure (``k``, modes, levels 2..k) stays this optimizer's; everything else
        (lr, level 1's betas and eps, steps, moments) comes from the checkpoint, except the
        implementation (``foreach``, ``fused``), which stays this optimizer's. A checkpoint with fewer
        levels starts the missing ones fresh, their bias correction counting from the resume, and warns
        once; one without ``decoupled_weight_decay`` (older torch) keeps this optimizer's decay.

        Before anything changes, every group and every parameter's state is checked against this
        optimizer (:meth:`_check_saved_state`); a checkpoint that fails raises and leaves the optimizer
        unchanged: ``KeyError`` for a missing key (``step``, ``exp_avg``, ``exp_avg_sq``, a level's
        ``exp_avg_sq_{i}``, or its ``exp_avg_{i}`` where the level keeps m in the checkpoint and here),
        ``TypeError`` for a value of the wrong type, ``ValueError`` for a wrong shape, a level stored in
        the other mode, more levels than this optimizer's k, a different number of groups or parameters
        (torch's check), or a hyperparameter out of range. Each message names the key, the group and the
        parameter's position in it. As torch does, floating-point state is then cast to its parameter's
        dtype and device.
        """
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise KeyError(
                    f"the checkpoint has no {key!r}: an optimizer state dict holds 'state' and 'param_groups'"
                )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the checkpoint has {len(saved_groups)} parameter groups, this optimizer {len(self.param_groups)}"
            )
        structure = ("k", "norm", "meta_betas", "meta_eps", "meta_norm")
        merged_groups = []
        fewer_levels = False
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            for key in ("params", "lr", "betas", "eps", "weight_decay"):
                if key not in saved:
                    raise KeyError(f"group {index} of the checkpoint has no {key!r}")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"group {index} of the checkpoint has {len(saved['params'])} parameters, this optimizer's "
                    f"{len(group['params'])}"
                )
            if saved.get("amsgrad", False):
                raise ValueError(f"group {index} of the checkpoint uses AMSGrad, which KAdam does not implement")
            _check_lr(saved["lr"], f"lr of group {index} of the checkpoint")
            check_nonnegative(f"weight_decay of group {index} of the checkpoint", saved["weight_decay"])
            merged = {**saved, **{key: group[key] for key in structure}, "differentiable": False}
            merged.setdefault("maximize", False)
            # Older torch's Adam/AdamW checkpoints do not say; the decay stays this optimizer's.
            merged.setdefault("decoupled_weight_decay", group["decoupled_weight_decay"])
            # The implementation is this optimizer's choice, not the checkpoint's (a plain checkpoint must
            # not turn off fused=True, which GradScaler relies on once _step_supports_amp_scaling is set).
            for key in ("foreach", "fused", "capturable", "state_dtype", "stochastic_rounding"):
                merged[key] = group[key]
            levels = resolve_levels(**{key: merged[key] for key in LEVEL_KEYS})
            merged.update(group_entries(levels))
            for position, (param_id, param) in enumerate(zip(saved["params"], group["params"], strict=True)):
                saved_state = state_dict["state"].get(param_id)
                if saved_state is None or (isinstance(saved_state, dict) and not saved_state):
                    continue
                where = f"parameter {position} of group {index}"
                saved_levels = self._check_saved_state(saved_state, param, levels, saved, where)
                fewer_levels |= saved_levels < len(levels)
            merged_groups.append(merged)
        super().load_state_dict({"state": state_dict["state"], "param_groups": merged_groups})
        self._cast_moments_to_state_dtype()
        if fewer_levels:
            self._start_missing_levels()
            warnings.warn(
                "KAdam.load_state_dict: the checkpoint has fewer levels than this optimizer; the new "
                "levels start from zero and their bias correction counts from this step.",
                UserWarning,
                stacklevel=2,
            )

    @classmethod
    def _check_saved_state(
        cls, saved_state: Any, param: Tensor, levels: Sequence[Level], saved_group: dict[str, Any], where: str
    ) -> int:
        """The number of levels of one parameter's saved state, after checking it against ``param`` and this
        optimizer's ``levels`` (``where`` names the parameter in the errors; see :meth:`load_state_dict`).

        Required: ``step`` (a number >= 0, or a one-element tensor of one); for each saved level i (level 1,
        then each i with ``exp_avg_sq_{i}``, consecutively) its second moment, of the parameter's shape
        (elementwise) or 0-dim (tensor mode), and its first moment, of the parameter's shape, unless the
        level keeps none here or kept none in the checkpoint (β = 0 in its ``meta_betas``). Moments are
        floating-point tensors (complex for a complex parameter, but a tensor-mode second moment).
        """
        if not isinstance(saved_state, dict):
            raise TypeError(f"the state of {where} must be a dict, got {type(saved_state).__name__}")
        if "step" not in saved_state:
            raise KeyError(f"the state of {where} has no 'step' (the step count every Adam state keeps)")
        step = saved_state["step"]
        if isinstance(step, Tensor):
            if step.numel() != 1 or step.is_complex() or step.dtype == torch.bool:
                raise ValueError(f"'step' of {where} must be a real number or a one-element tensor, got {step!r}")
            step = step.item()
        elif isinstance(step, bool) or not isinstance(step, (int, float)):
            raise TypeError(f"'step' of {where} must be a number or a one-element tensor, got {type(step).__name__}")
        if not math.isfinite(step) or step < 0:
            raise ValueError(f"'step' of {where} must be a finite number >= 0, got {step!r}")
        saved_levels = cls._count_levels(saved_state)
        if saved_levels > len(levels):
            raise ValueError(
                f"the checkpoint has {saved_levels} levels for {where}, this optimizer k = {len(levels)}; "
                f"load it into KAdam(k={saved_levels})"
            )
        for key in saved_state:
            level = _level_of_key(key)
            if level is not None and level > saved_levels:
                raise KeyError(
                    f"the state of {where} has {key!r} but no {state_keys(saved_levels + 1)[1]!r}: level "
                    f"{saved_levels + 1} has no second moment"
                )
        for i in range(1, saved_levels + 1):
            level = levels[i - 1]
            exp_avg_key, exp_avg_sq_key = state_keys(i)
            if exp_avg_sq_key not in saved_state:  # level 1's (the others are counted by theirs)
                raise KeyError(f"the state of {where} has no {exp_avg_sq_key!r} (level {i}'s second moment)")
            stored = cls._saved_tensor(saved_state, exp_avg_sq_key, where, param.is_complex() and not level.tensor_mode)
            expected = () if level.tensor_mode else tuple(param.shape)
            if tuple(stored.shape) != expected:
                if param.dim() > 0 and tuple(stored.shape) in ((), tuple(param.shape)):
                    stored_mode = "tensor" if stored.dim() == 0 else "elementwise"
                    raise ValueError(
                        f"level {i} of {where} is stored in {stored_mode} mode, this optimizer runs it in "
                        f"{NORMS[level.tensor_mode]} mode"
                    )
                raise ValueError(
                    f"{exp_avg_sq_key!r} of {where} has shape {tuple(stored.shape)}, expected {expected} "
                    f"({'0-dim: a tensor-mode level' if level.tensor_mode else 'the parameter shape: an elementwise level'})"
                )
            if not _keeps_first_moment(i, level):
                continue  # a first moment the checkpoint still carries is dropped (__setstate__)
            if exp_avg_key not in saved_state:
                if i > 1 and not _saved_keeps_first_moment(saved_group, i):
                    continue  # the checkpoint's level had beta = 0; m starts at zero (_init_group)
                raise KeyError(f"the state of {where} has no {exp_avg_key!r} (level {i}'s first moment)")
            stored = cls._saved_tensor(saved_state, exp_avg_key, where, param.is_complex())
            if tuple(stored.shape) != tuple(param.shape):
                raise ValueError(
                    f"{exp_avg_key!r} of {where} has shape {tuple(stored.shape)}, expected the parameter's "
                    f"{tuple(param.shape)}"
                )
        for i in range(2, len(levels) + 1):
            offset = saved_state.get(_offset_key(i), 0.0)
            if isinstance(offset, Tensor) and offset.numel() == 1:
                offset = offset.item()
            if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not 0 <= offset <= step:
                raise ValueError(
                    f"{_offset_key(i)!r} of {where} must be a number in [0, step = {step}], got {offset!r}"
                )
        return saved_levels

    @staticmethod
    def _saved_tensor(saved_state: dict[str, Any], key: str, where: str, complex_: bool) -> Tensor:
        value = saved_state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"{key!r} of {where} must be a tensor, got {type(value).__name__}")
        if value.is_complex() != complex_ or not (value.is_floating_point() or value.is_complex()):
            kind = "complex" if complex_ else "real floating-point"
            raise TypeError(f"{key!r} of {where} must be a {kind} tensor, got dtype {value.dtype}")
        return value

    @staticmethod
    def _count_levels(param_state: dict[str, Any]) -> int:
        level = 1
        while state_keys(level + 1)[1] in param_state:
            level += 1
        return level

    def _cast_moments_to_state_dtype(self) -> None:
        """Every moment in its group's state dtype (torch's loading casts them to the parameter's dtype): a
        checkpoint saved with another ``state_dtype`` loads with a cast (rounded to nearest)."""
        for group in self.param_groups:
            if group["state_dtype"] is None:
                continue
            for param in group["params"]:
                state = self.state.get(param)
                for key, value in (state or {}).items():
                    if key != "step" and isinstance(value, Tensor) and value.is_floating_point():
                        state[key] = value.to(group["state_dtype"])

    def _start_missing_levels(self) -> None:
        for group in self.param_groups:
            levels = group_levels(group)
            for param in group["params"]:
                state = self.state.get(param)
                if not state:
                    continue
                for i in range(self._count_levels(state) + 1, len(levels) + 1):
                    self._init_level(state, param, i, levels[i - 1], group["state_dtype"])
                    state[_offset_key(i)] = float(_get_value(state["step"]))

    @staticmethod
    def _init_level(
        state: dict[str, Any], param: Tensor, level: int, hparams: Level, state_dtype: torch.dtype | None = None
    ) -> None:
        exp_avg, exp_avg_sq = state_keys(level)
        dtype = moment_dtype(param, state_dtype)
        if _keeps_first_moment(level, hparams):
            state[exp_avg] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
        if hparams.tensor_mode:
            real_dtype = param.real.dtype if param.is_complex() else dtype
            state[exp_avg_sq] = param.new_zeros((), dtype=real_dtype)
        else:
            state[exp_avg_sq] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)

    def _init_group(
        self,
        group: dict[str, Any],
        levels: tuple[Level, ...],
        params: list[Tensor],
        grads: list[Tensor],
        moments: list[tuple[list[Tensor], list[Tensor]]],
        steps: list[Tensor],
        level_steps: list[list[float]],
        indices: list[int] | None = None,
        first_index: int = 0,
    ) -> bool:
        has_complex = False
        # Per level, once per call: its state keys, whether it stores m, its step-offset key.
        level_keys = [
            (*state_keys(i), _keeps_first_moment(i, hparams), _offset_key(i))
            for i, hparams in enumerate(levels, start=1)
        ]
        # Step counts stay tensors when traced by torch.compile or kept on the device (capturable).
        tensor_counts = group["capturable"] or torch.compiler.is_compiling()
        offset_keys = [keys[3] for keys in level_keys]
        for position, param in enumerate(group["params"]):
            grad = param.grad
            if grad is None:
                continue
            if indices is not None:
                indices.append(first_index + position)
            if grad.is_sparse:
                raise RuntimeError("KAdam does not support sparse gradients")
            has_complex |= torch.is_complex(param)
            params.append(param)
            grads.append(grad)
            state = self.state[param]
            if len(state) == 0:
                if group["fused"]:
                    check_fused_device(param, levels)
                state["step"] = (
                    torch.zeros((), dtype=_get_scalar_dtype(), device=param.device)
                    if group["capturable"]
                    else torch.tensor(0.0, dtype=_get_scalar_dtype())
                )
                for i, hparams in enumerate(levels, start=1):
                    self._init_level(state, param, i, hparams, group["state_dtype"])
            for (exp_avgs, exp_avg_sqs), (exp_avg, exp_avg_sq, keeps_first_moment, _) in zip(moments, level_keys):
                if keeps_first_moment:
                    if exp_avg not in state:  # the level's beta1 was 0 when the state was made
                        state[exp_avg] = torch.zeros_like(
                            param, dtype=moment_dtype(param, group["state_dtype"]), memory_format=torch.preserve_format
                        )
                    exp_avgs.append(state[exp_avg])
                exp_avg_sqs.append(state[exp_avg_sq])
            step = state["step"]
            steps.append(step)
            # Step counts as they will be after this step's increment, one list per level.
            try:
                upcoming = (step if tensor_counts or not isinstance(step, Tensor) else step.item()) + 1
            except RuntimeError as error:  # a state changed behind the optimizer's back
                raise RuntimeError(
                    f"state 'step' of parameter {len(params) - 1} must be a one-element tensor, got shape "
                    f"{tuple(step.shape)}"
                ) from error
            if isinstance(upcoming, Tensor):  # traced by torch.compile, or capturable: float64 on its device
                upcoming = upcoming.to(torch.float64)
            for counts, offset_key in zip(level_steps, offset_keys):
                counts.append(upcoming - state.get(offset_key, 0.0))
        return has_complex

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        first_index = 0
        for group in self.param_groups:
            levels = group_levels(group)
            params: list[Tensor] = []
            grads: list[Tensor] = []
            moments: list[tuple[list[Tensor], list[Tensor]]] = [([], []) for _ in levels]
            steps: list[Tensor] = []
            level_steps: list[list[float]] = [[] for _ in levels]
            indices: list[int] = []
            has_complex = self._init_group(
                group, levels, params, grads, moments, steps, level_steps, indices, first_index
            )
            first_index += len(group["params"])
            kadam(
                params,
                grads,
                moments,
                steps,
                level_steps,
                levels=levels,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                maximize=group["maximize"],
                foreach=group["foreach"],
                fused=group["fused"],
                capturable=group["capturable"],
                has_complex=has_complex,
                grad_scale=getattr(self, "grad_scale", None),
                found_inf=getattr(self, "found_inf", None),
                stochastic_rounding=group["stochastic_rounding"],
                param_indices=indices,
            )
        return loss


def check_fused_support(param_groups: list[dict[str, Any]]) -> None:
    """RuntimeError, as torch's ``fused=True`` raises, for parameters the fused step cannot take."""
    for group in param_groups:
        for param in group["params"]:
            if type(param.data) is not Tensor:  # a tensor subclass under the Parameter
                raise RuntimeError(
                    f"KAdam(fused=True) steps plain tensors; got a {type(param.data).__name__} parameter "
                    "(e.g. FSDP2's DTensor, whose tensor-mode levels need a global mean): use foreach=True"
                )
            dtype = param.real.dtype if param.is_complex() else param.dtype
            if dtype not in _cpu_kernel.FUSED_DTYPES:
                raise RuntimeError(
                    f"KAdam(fused=True) supports parameters of dtype {', '.join(map(str, _cpu_kernel.FUSED_DTYPES))} "
                    f"(and their complex types), got {param.dtype}"
                )


# Device types whose fused step is the Triton kernel (kadam.optimizer._triton) for every configuration
# but exactly Adam; private, so that a test can send CPU tensors there under TRITON_INTERPRET=1.
_TRITON_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
# kadam.optimizer._triton.TRITON_DTYPES, repeated here so that `import kadam` does not import triton.
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# Looked up once, at import: found, not imported (importing kadam never imports triton), and a constant
# under torch.compile (dynamo of torch 2.8-2.10 breaks the graph on find_spec, even through functools.cache).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_available() -> bool:
    """Whether triton is installed."""
    return _TRITON_INSTALLED


def _exactly_adam(levels: Sequence[Level]) -> bool:
    return len(levels) == 1 and not levels[0].tensor_mode


def fused_devices(levels: Sequence[Level]) -> list[str]:
    """Device types with a fused kernel for ``levels``: the C++ kernel on the CPU for any levels; on CUDA
    the Triton kernel for any levels (when triton is installed); torch's fused Adam/AdamW kernels on
    their devices when the step is exactly Adam (k = 1, elementwise)."""
    devices = {"cpu"}
    if _exactly_adam(levels):
        devices.update(_get_fused_kernels_supported_devices())
    if _triton_available():
        devices.update(_TRITON_DEVICE_TYPES)
    return sorted(devices)


def check_fused_device(param: Tensor, levels: Sequence[Level]) -> None:
    """torch's RuntimeError for ``fused=True`` on a parameter that no fused kernel can step."""
    devices = fused_devices(levels)
    if param.device.type not in devices or not torch.is_floating_point(param if not param.is_complex() else param.real):
        raise RuntimeError(
            "`fused=True` requires all the params to be floating point Tensors of supported devices: "
            f"{devices} but {param.dtype} and {param.device.type}"
            + (
                ""
                if param.device.type in ("cpu", "meta") or len(devices) > 1
                else f" (KAdam has a fused kernel on {param.device.type} only for k = 1 with norm='elementwise')"
            )
        )
    dtype = param.real.dtype if param.is_complex() else param.dtype
    if _uses_triton(param.device, levels) and dtype not in _TRITON_DTYPES:
        raise RuntimeError(
            f"KAdam(fused=True) on {param.device.type} runs the Triton kernel, which steps parameters of dtype "
            f"{', '.join(map(str, _TRITON_DTYPES))} (and their complex types), got {param.dtype}; use foreach=True"
        )


def _uses_triton(device: torch.device, levels: Sequence[Level], exactly_adam: bool | None = None) -> bool:
    """Whether the fused step of ``levels`` on ``device`` is the Triton kernel: every configuration on
    CUDA but exactly Adam (``exactly_adam``, default: k = 1 elementwise; a cast state is not), which keeps
    torch's fused Adam kernel (bit-for-bit torch's AdamW)."""
    exactly_adam = _exactly_adam(levels) if exactly_adam is None else exactly_adam
    return device.type in _TRITON_DEVICE_TYPES and not exactly_adam


def _fused_by_default(params: list[Tensor], levels: Sequence[Level]) -> bool:
    """The default (``fused=None, foreach=None``) on the CPU: the C++ kernel for every configuration but
    exactly Adam (k = 1, elementwise), which keeps torch's default and its bit-for-bit equality with
    ``AdamW``; plain CPU tensors of a kernel dtype only, not under ``torch.compile``, and only where the
    kernel builds (the first such step builds it; without a compiler the default stays torch's)."""
    if (len(levels) == 1 and not levels[0].tensor_mode) or torch.compiler.is_compiling():
        return False
    for param in params:
        dtype = param.real.dtype if param.is_complex() else param.dtype
        if type(param.data) is not Tensor or param.device.type != "cpu" or dtype not in _cpu_kernel.FUSED_DTYPES:
            return False
    return _cpu_kernel.available()


def kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[tuple[list[Tensor], list[Tensor]]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: Sequence[Level],
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    foreach: bool | None = None,
    fused: bool | None = None,
    capturable: bool = False,
    has_complex: bool = False,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    stochastic_rounding: bool = False,
    param_indices: Sequence[int] | None = None,
) -> None:
    """Functional k-Adam (see :class:`KAdam`); ``moments[i]`` holds level i+1's (exp_avgs, exp_avg_sqs).

    ``lr`` is a float or a 1-element tensor of any shape, which every implementation reads as a 0-dim
    tensor (torch's ``_to_scalar``, as torch's Adam reads it). Moments may be stored in a dtype other than
    their parameter's (:mod:`kadam.optimizer.precision`); ``stochastic_rounding`` rounds bfloat16 moments
    stochastically, with the bits of ``param_indices`` (each parameter's position in the optimizer; default
    its position in ``params``) and the step count.
    """
    if not params:
        return
    rounding_indices = None
    if stochastic_rounding:
        rounding_indices = list(range(len(params)) if param_indices is None else param_indices)
        if len(rounding_indices) != len(params):
            raise ValueError(
                f"param_indices must hold one index per parameter ({len(params)}), got {len(rounding_indices)}"
            )
    lr = _to_scalar(lr)
    if capturable and not torch.compiler.is_compiling():
        supported = _get_capturable_supported_devices(supports_xla=not foreach)  # as torch's two paths say
        if not all(p.device.type == s.device.type and p.device.type in supported for p, s in zip(params, steps)):
            raise RuntimeError(f"If capturable=True, params and state_steps must be on supported devices: {supported}.")
        if fused is None and foreach is None:
            fused = False  # the CPU kernel is not capturable; torch's choice below
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if fused is None and foreach is None:
        fused = _fused_by_default(params, levels)
    if fused and torch.compiler.is_compiling():
        # Under torch.compile the step is traced: the foreach ops, which inductor fuses into its own
        # kernels (the C++ kernel is a ctypes call, which cannot be traced).
        if found_inf is not None and found_inf.item():
            return
        if grad_scale is not None:
            torch._foreach_div_(grads, grad_scale.to(grads[0].device))
        fused, foreach, grad_scale, found_inf = False, True, None, None
    if fused:
        implementation = functools.partial(_fused_kadam, grad_scale=grad_scale, found_inf=found_inf)
    elif grad_scale is not None or found_inf is not None:
        raise RuntimeError("grad_scale and found_inf are only supported with fused=True")
    else:
        if foreach is None:
            _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        implementation = _multi_tensor_kadam if foreach else _single_tensor_kadam
    implementation(
        params,
        grads,
        moments,
        steps,
        level_steps,
        levels=levels,
        lr=lr,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
        has_complex=has_complex,
        rounding_indices=rounding_indices,
    )


def _casts_state(param: Tensor, moments: Sequence[Tensor], rounding_indices: Sequence[int] | None) -> bool:
    """Whether a step of ``param`` loads its moments into the math dtype and rounds them once when storing
    them (:mod:`kadam.optimizer.precision`): a state dtype other than the parameter's, or stochastic rounding."""
    if rounding_indices is not None:
        return True
    real = param.real.dtype if param.is_complex() else param.dtype
    return any((m.real.dtype if m.is_complex() else m.dtype) != real for m in moments)


def _moment_key(rounding_indices: Sequence[int] | None, index: int, count: Any, moment: int) -> Any:
    """The stochastic-rounding key of one moment (None: round to nearest); ``count`` is level 1's step count
    after this step's increment (a tensor under torch.compile or capturable)."""
    if rounding_indices is None:
        return None
    step = count.to(torch.int64) if isinstance(count, Tensor) else int(count)
    return rounding_key(step, rounding_indices[index], moment)


def _update_rounded(
    exp_avg: Tensor | None, exp_avg_sq: Tensor, x: Tensor, level: Level, keys: Sequence[Any]
) -> tuple[Tensor, Tensor]:
    """One level's moments updated in ``x``'s (math) dtype and each stored once, rounded (stochastically with
    ``keys`` (m's, v's) where they are not None); returns (m, v) as stored, in the math dtype (m = x for β = 0)."""
    if exp_avg is None:
        first = x
    else:
        first = store_rounded_(exp_avg, exp_avg.to(x.dtype).lerp_(x, 1 - level.beta), keys[0])
    updated = exp_avg_sq.to(x.dtype).mul_(level.gamma)
    if level.tensor_mode:
        updated.add_(torch.linalg.vector_norm(x).square().div_(max(x.numel(), 1)), alpha=1 - level.gamma)
    else:
        updated.addcmul_(x, x, value=1 - level.gamma)
    return first, store_rounded_(exp_avg_sq, updated, keys[1])


def _single_tensor_kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[tuple[list[Tensor], list[Tensor]]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: Sequence[Level],
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    has_complex: bool,
    rounding_indices: Sequence[int] | None = None,
) -> None:
    last = len(levels) - 1
    for index, param in enumerate(params):
        casts = _casts_state(param, [ms[index] for pair in moments for ms in pair if ms], rounding_indices)
        grad = grads[index] if not maximize else -grads[index]
        steps[index] += 1
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        if torch.is_complex(param):
            grad = torch.view_as_real(grad)
            param = torch.view_as_real(param)
        is_complex = torch.is_complex(params[index])
        x = grad.to(math_dtype(param.dtype)) if casts else grad
        for i, level in enumerate(levels):
            exp_avgs, exp_avg_sqs = moments[i]
            exp_avg = exp_avgs[index] if exp_avgs else None  # None: beta1 = 0, so m = x
            exp_avg_sq = exp_avg_sqs[index]
            if is_complex:
                exp_avg = None if exp_avg is None else torch.view_as_real(exp_avg)
                if not level.tensor_mode:
                    exp_avg_sq = torch.view_as_real(exp_avg_sq)
            if casts:  # the moments in the math dtype, each rounded once when stored, read as stored
                keys = [_moment_key(rounding_indices, index, level_steps[0][index], 2 * i + j) for j in (0, 1)]
                exp_avg, exp_avg_sq = _update_rounded(exp_avg, exp_avg_sq, x, level, keys)
            else:
                if exp_avg is None:
                    exp_avg = x
                else:
                    exp_avg.lerp_(x, 1 - level.beta)
                if level.tensor_mode:
                    mean_square = torch.linalg.vector_norm(x).square().div_(max(x.numel(), 1))  # 0 if empty
                    exp_avg_sq.mul_(level.gamma).add_(mean_square, alpha=1 - level.gamma)
                else:
                    exp_avg_sq.mul_(level.gamma).addcmul_(x, x, value=1 - level.gamma)
            count = level_steps[i][index]
            bias_correction1 = 1 - level.beta**count
            bias_correction2_sqrt = (1 - level.gamma**count) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(level.eps)
            if i == last:
                if isinstance(bias_correction1, Tensor) and not torch.compiler.is_compiling():
                    # capturable: the step size stays a device tensor (addcdiv_'s value would sync)
                    param.addcdiv_(exp_avg, denom.div_(-(lr / bias_correction1)))
                else:
                    param.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
            else:
                x = torch.div(exp_avg, denom).div_(bias_correction1)


def _multi_tensor_kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[tuple[list[Tensor], list[Tensor]]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: Sequence[Level],
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    has_complex: bool,
    rounding_indices: Sequence[int] | None = None,
) -> None:
    for _, (device_params, device_grads, device_moments, device_steps), indices in _grouped(
        params, grads, moments, steps
    ):
        lists = [
            cast(list[Tensor], device_params),
            cast(list[Tensor], device_grads),
            *(cast(list[Tensor], m) for m in device_moments),
            cast(list[Tensor], device_steps),
        ]
        for chunk in _cache_sized_chunks(lists[0]) if lists[0][0].is_cpu else [range(len(lists[0]))]:
            chunk_params, chunk_grads, *chunk_moments, chunk_steps = (
                [tensors[j] for j in chunk] if tensors else tensors for tensors in lists
            )
            _multi_tensor_group(
                chunk_params,
                chunk_grads,
                chunk_moments,
                chunk_steps,
                [[per_level[indices[j]] for j in chunk] for per_level in level_steps],
                levels=levels,
                lr=lr,
                weight_decay=weight_decay,
                decoupled_weight_decay=decoupled_weight_decay,
                maximize=maximize,
                has_complex=has_complex,
                rounding_indices=None if rounding_indices is None else [rounding_indices[indices[j]] for j in chunk],
            )


_CPU_FOREACH_CHUNK_ELEMENTS = 1 << 16
"""On the CPU a foreach op is a loop over its tensors, so a level's dozen ops over all tensors would stream
every state through memory a dozen times; in chunks of about this many elements (tensors kept whole) the
chunk's tensors stay in the core's cache from one op to the next, as the loop's single tensor does."""


def _cache_sized_chunks(tensors: list[Tensor]) -> list[range]:
    """Consecutive index ranges of ``tensors`` holding about :data:`_CPU_FOREACH_CHUNK_ELEMENTS` elements each
    (a larger tensor alone)."""
    chunks, start, size = [], 0, 0
    for j, tensor in enumerate(tensors):
        if j > start and size + tensor.numel() > _CPU_FOREACH_CHUNK_ELEMENTS:
            chunks.append(range(start, j))
            start, size = j, 0
        size += tensor.numel()
    chunks.append(range(start, len(tensors)))
    return chunks


def _multi_tensor_group(
    device_params: list[Tensor],
    device_grads: list[Tensor],
    device_moments: list[list[Tensor]],
    device_steps: list[Tensor],
    counts_by_level: list[list[float]],
    *,
    levels: Sequence[Level],
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    has_complex: bool,
    rounding_indices: Sequence[int] | None = None,
) -> None:
    """One foreach step over tensors of one device and dtype (``counts_by_level[i][j]``: level i's step count
    of tensor j); moments in another dtype, or rounded stochastically, are updated in the math dtype and
    stored once (:func:`_update_rounded_foreach`)."""
    last = len(levels) - 1
    casts = _casts_state(device_params[0], [ms[0] for ms in device_moments if ms], rounding_indices)
    if has_complex:
        _view_as_real(device_params, device_grads)
    if maximize:
        device_grads = torch._foreach_neg(device_grads)
    if device_steps[0].is_cpu:
        torch._foreach_add_(device_steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
    else:
        torch._foreach_add_(device_steps, 1)
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(device_params, 1 - lr * weight_decay)
        elif maximize:
            torch._foreach_add_(device_grads, device_params, alpha=weight_decay)
        else:
            device_grads = torch._foreach_add(device_grads, device_params, alpha=weight_decay)
    x = device_grads
    if casts and x[0].dtype != math_dtype(x[0].dtype):
        x = [t.to(math_dtype(t.dtype)) for t in x]
    for i, level in enumerate(levels):
        exp_avgs = device_moments[2 * i]
        exp_avg_sqs = device_moments[2 * i + 1]
        if has_complex:
            # Real views of the complex states (a level with beta1 = 0 has no m list to key them on).
            _view_states_as_real(exp_avgs, exp_avg_sqs, level)
        counts = counts_by_level[i]
        if casts:
            keys = [
                [_moment_key(rounding_indices, j, counts_by_level[0][j], 2 * i + which) for j in range(len(x))]
                for which in (0, 1)
            ]
            exp_avgs, exp_avg_sqs = _update_rounded_foreach(exp_avgs, exp_avg_sqs, x, level, keys)
        else:
            if exp_avgs:
                torch._foreach_lerp_(exp_avgs, x, 1 - level.beta)
            else:  # beta1 = 0: m = x, not stored
                exp_avgs = x
            _update_second_moments(exp_avg_sqs, x, level)
        bias_correction1 = [1 - level.beta**n for n in counts]
        bias_correction2_sqrt = [(1 - level.gamma**n) ** 0.5 for n in counts]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, level.eps)
        if i == last:
            step_size = [(lr / bc) * -1 for bc in bias_correction1]
            if isinstance(step_size[0], Tensor):
                # Under torch.compile the step counts (and a tensor lr) are tensors, which
                # _foreach_addcdiv_'s scalar list cannot take: fold the step size into denom.
                torch._foreach_div_(denom, step_size)
                torch._foreach_addcdiv_(device_params, exp_avgs, denom)
            elif level.tensor_mode:
                torch._foreach_reciprocal_(denom)
                torch._foreach_mul_(denom, step_size)
                torch._foreach_addcmul_(device_params, exp_avgs, denom)
            else:
                torch._foreach_addcdiv_(device_params, exp_avgs, denom, step_size)
        else:
            if level.tensor_mode:
                torch._foreach_mul_(denom, bias_correction1)
                torch._foreach_reciprocal_(denom)
                x = torch._foreach_mul(exp_avgs, denom)
            else:
                x = torch._foreach_div(exp_avgs, denom)
                torch._foreach_div_(x, bias_correction1)


def _grouped(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[tuple[list[Tensor], list[Tensor]]],
    steps: list[Tensor],
) -> list[tuple[tuple[torch.device, torch.dtype], tuple[list, list, list[list], list], list[int]]]:
    """torch's grouping of a step's tensors by the parameters' device and dtype, with the moments (level-major:
    m₁, v₁, m₂, …; an empty list for a level without m) picked by index: moments may be of another dtype
    (``state_dtype``), which torch 2.8's grouping refuses within one index."""
    flat_moments = [tensors for pair in moments for tensors in pair]
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, steps], with_indices=True)
    result = []
    for key, ((device_params, device_grads, device_steps), indices) in grouped.items():
        device_moments = [[tensors[j] for j in indices] if tensors else [] for tensors in flat_moments]
        result.append((key, (device_params, device_grads, device_moments, device_steps), indices))
    return result


def _update_second_moments(exp_avg_sqs: list[Tensor], x: list[Tensor], level: Level) -> None:
    """v ← γ v + (1 - γ) x² (elementwise) or (1 - γ) mean(x²) (tensor mode), in place, with foreach ops."""
    torch._foreach_mul_(exp_avg_sqs, level.gamma)
    if level.tensor_mode:
        norms = torch._foreach_norm(x)
        mean_squares = torch._foreach_mul(norms, norms)
        torch._foreach_mul_(mean_squares, [(1 - level.gamma) / max(t.numel(), 1) for t in x])
        torch._foreach_add_(exp_avg_sqs, mean_squares)
    else:
        torch._foreach_addcmul_(exp_avg_sqs, x, x, 1 - level.gamma)


def _update_rounded_foreach(
    exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], x: list[Tensor], level: Level, keys: Sequence[Sequence[Any]]
) -> tuple[list[Tensor], list[Tensor]]:
    """:func:`_update_rounded` for lists: the moments updated in ``x``'s dtype, stored rounded once (``keys``:
    per tensor, m's and v's stochastic-rounding keys or None); returns them as stored, in the math dtype."""
    dtype = x[0].dtype
    if exp_avgs:
        updated = [m.to(dtype) for m in exp_avgs]
        torch._foreach_lerp_(updated, x, 1 - level.beta)
        first = [store_rounded_(m, u, key) for m, u, key in zip(exp_avgs, updated, keys[0])]
    else:
        first = x
    updated = [v.to(dtype) for v in exp_avg_sqs]
    _update_second_moments(updated, x, level)
    return first, [store_rounded_(v, u, key) for v, u, key in zip(exp_avg_sqs, updated, keys[1])]


def _view_states_as_real(exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], level: Level) -> None:
    """Real views, in place in the lists, of a level's complex states (``exp_avgs`` is empty for β₁ = 0,
    a tensor-mode ``v`` is real already)."""
    lists = [tensors for tensors in (exp_avgs, [] if level.tensor_mode else exp_avg_sqs) if tensors]
    if lists:
        _view_as_real(*lists)


def _fused_kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[tuple[list[Tensor], list[Tensor]]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: Sequence[Level],
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    has_complex: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    rounding_indices: Sequence[int] | None = None,
) -> None:
    """Fused k-Adam: one kernel call per device and dtype.

    When the step is exactly Adam (k = 1, elementwise), torch's own fused Adam/AdamW kernel runs on every
    device, so that ``KAdam(k=1, fused=True)`` is ``AdamW(fused=True)`` bit for bit. Every other
    configuration runs :func:`kadam.optimizer._cpu_kernel.fused_step` on the CPU, which streams every level
    in one pass per tensor-mode level, and the Triton kernel
    (:func:`kadam.optimizer._triton.triton_fused_kadam_`) on CUDA; other devices have no kernel for it.
    ``grad_scale``/``found_inf`` are GradScaler's: gradients are divided by ``grad_scale`` and a nonzero
    ``found_inf`` skips the step without touching any state.
    """
    for (device, _), (device_params, device_grads, device_moments, device_steps), indices in _grouped(
        params, grads, moments, steps
    ):
        group_params = cast(list[Tensor], device_params)
        group_grads = cast(list[Tensor], device_grads)
        group_moments = [
            (cast(list[Tensor], device_moments[2 * i]), cast(list[Tensor], device_moments[2 * i + 1]))
            for i in range(len(levels))
        ]
        group_steps = cast(list[Tensor], device_steps)
        group_level_steps = [[counts[j] for j in indices] for counts in level_steps]
        if has_complex:
            _view_as_real(group_params, group_grads)
            for level, (exp_avgs, exp_avg_sqs) in zip(levels, group_moments):
                _view_states_as_real(exp_avgs, exp_avg_sqs, level)
        device_scale = None if grad_scale is None else grad_scale.to(device, non_blocking=True)
        device_inf = None if found_inf is None else found_inf.to(device, non_blocking=True)
        group_rounding = None if rounding_indices is None else [rounding_indices[j] for j in indices]
        # torch's fused Adam kernel keeps the state in the parameter's dtype and rounds to nearest.
        exactly_adam = _exactly_adam(levels) and not _casts_state(
            group_params[0], [ms[0] for pair in group_moments for ms in pair if ms], group_rounding
        )
        if _uses_triton(device, levels, exactly_adam):
            implementation = functools.partial(_triton_fused_kadam, rounding_indices=group_rounding)
        elif device.type == "cpu" and not exactly_adam:
            implementation = functools.partial(_cpu_fused_kadam, indices=indices, rounding_indices=group_rounding)
        else:
            implementation = functools.partial(_torch_kernels_kadam, indices=indices, rounding_indices=group_rounding)
        implementation(
            group_params,
            group_grads,
            group_moments,
            group_steps,
            group_level_steps,
            levels=levels,
            lr=lr,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            grad_scale=device_scale,
            found_inf=device_inf,
        )


def _cpu_fused_kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[tuple[list[Tensor], list[Tensor]]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: Sequence[Level],
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    indices: Sequence[int] | None = None,
    rounding_indices: Sequence[int] | None = None,
) -> None:
    """The C++ kernel for real tensors of one dtype on the CPU (``indices``: their positions in the step's
    list of parameters, which the kernel's input checks name).

    A level with β₁ = 0 stores no m (m = x): the kernel is told so per level and, where a pass must resume
    after such a tensor-mode level, recomputes x from the state it already wrote this step.
    """
    if found_inf is not None and bool(found_inf):
        return
    keeps = [_keeps_first_moment(i, level) for i, level in enumerate(levels, start=1)]
    _cpu_kernel.fused_step(
        params,
        grads,
        [exp_avgs for exp_avgs, _ in moments],
        [exp_avg_sqs for _, exp_avg_sqs in moments],
        [[1 - level.beta**n for n in counts] for level, counts in zip(levels, level_steps)],
        [[(1 - level.gamma**n) ** 0.5 for n in counts] for level, counts in zip(levels, level_steps)],
        beta1s=[level.beta for level in levels],
        beta2s=[level.gamma for level in levels],
        eps=[level.eps for level in levels],
        tensor_modes=[level.tensor_mode for level in levels],
        keeps_first_moment=keeps,
        lr=lr,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
        grad_scale=grad_scale,
        steps=steps,
        state_names=[state_keys(i) for i in range(1, len(levels) + 1)],
        param_name=_param_namer(indices),
        rounding_keys=None
        if rounding_indices is None
        else [tensor_base_key(int(count), index) for count, index in zip(level_steps[0], rounding_indices)],
    )


def _param_namer(indices: Sequence[int] | None) -> Callable[[int], str]:
    """Names, for the fused kernels' input checks, of the tensors of one device and dtype: ``parameter j``
    with j the position in the step's list (the group's parameters that have a gradient, in order)."""
    return lambda t: f"parameter {t if indices is None else indices[t]}"


def _triton_fused_kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[tuple[list[Tensor], list[Tensor]]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: Sequence[Level],
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    rounding_indices: Sequence[int] | None = None,
) -> None:
    """The Triton kernel (THEORY §1) for real tensors of one dtype on one CUDA device.

    The kernel increments ``steps`` itself (not when ``found_inf`` is set) and takes each level's step
    offset (the step at which a resumed run added it): ``level_steps`` holds the counts after this
    step's increment, so the offset is ``step + 1 - count``. A level with β₁ = 0 keeps no first moment,
    except level 1, which keeps torch's ``exp_avg`` (m = x⁽⁰⁾); the kernel does not write it, so it is
    set here from the gradient before the step (the unchanged state when ``found_inf`` is set).
    """
    from kadam.optimizer._triton import triton_fused_kadam_  # noqa: PLC0415 (importing kadam imports no triton)

    first_moments: list[list[Tensor] | None] = [
        exp_avgs if level.beta != 0.0 else None for level, (exp_avgs, _) in zip(levels, moments)
    ]
    if levels[0].beta == 0.0:
        _store_first_input(
            params,
            grads,
            moments[0][0],
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            grad_scale=grad_scale,
            found_inf=found_inf,
        )
    upcoming = [_get_value(step) + 1 for step in steps]
    step_offsets = [[float(after - count) for after, count in zip(upcoming, counts)] for counts in level_steps]
    triton_fused_kadam_(
        params,
        grads,
        first_moments,
        [exp_avg_sqs for _, exp_avg_sqs in moments],
        steps,
        levels=levels,
        lr=lr,
        weight_decay=weight_decay,
        decoupled=decoupled_weight_decay,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
        step_offsets=None if not any(any(offsets) for offsets in step_offsets) else step_offsets,
        rounding_indices=rounding_indices,
    )


def _store_first_input(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """Level 1's ``exp_avg`` for β₁ = 0: m = x⁽⁰⁾ = ±g/s (+ λθ for coupled decay), as the loop stores it."""
    inputs = torch._foreach_neg(grads) if maximize else [grad.clone() for grad in grads]
    if grad_scale is not None:
        torch._foreach_div_(inputs, grad_scale)
    if weight_decay != 0 and not decoupled_weight_decay:
        torch._foreach_add_(inputs, params, alpha=weight_decay)
    if found_inf is None:
        torch._foreach_copy_(exp_avgs, inputs)
    else:
        skip = found_inf.reshape(()) != 0
        for exp_avg, value in zip(exp_avgs, inputs):
            exp_avg.copy_(torch.where(skip, exp_avg, value))


def _torch_kernels_kadam(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[tuple[list[Tensor], list[Tensor]]],
    steps: list[Tensor],
    level_steps: list[list[float]],
    *,
    levels: Sequence[Level],
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    indices: Sequence[int] | None = None,
    rounding_indices: Sequence[int] | None = None,
) -> None:
    """torch's fused Adam/AdamW kernel, which steps exactly Adam (k = 1, elementwise), on the CPU as on
    every device torch has it for; the tensors are checked first (:func:`kadam.optimizer._cpu_kernel.check_inputs`),
    as the kernel trusts them."""
    if params and _casts_state(params[0], [ms[0] for pair in moments for ms in pair if ms], rounding_indices):
        raise RuntimeError(
            f"KAdam(fused=True) on {params[0].device.type} runs torch's fused Adam kernel, which keeps the state in "
            "the parameters' dtype and rounds to nearest: use foreach=True for state_dtype or stochastic_rounding"
        )
    if len(levels) != 1 or levels[0].tensor_mode:
        raise RuntimeError(
            f"KAdam(fused=True) has no fused kernel on {params[0].device.type} for k = {len(levels)} with norms "
            f"{[level.norm for level in levels]}; use foreach=True (torch's fused Adam kernel covers k = 1, elementwise)"
        )
    level = levels[0]
    _cpu_kernel.check_inputs(
        params,
        grads,
        [moments[0][0]],
        [moments[0][1]],
        steps,
        tensor_modes=[False],
        keeps_first_moment=[True],
        state_names=[state_keys(1)],
        param_name=_param_namer(indices),
        dtypes=(params[0].dtype,),
    )
    # torch's kernel wants the step counts on the parameters' device; KAdam keeps them on the CPU.
    device_steps = [step.to(params[0].device) for step in steps]
    torch._foreach_add_(device_steps, 1)
    kernel = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
    # torch's fused kernel walks a parameter, its gradient and its state as if they were laid out alike, so a
    # non-contiguous one (a strided view) is stepped wrongly, by AdamW(fused=True) as well: such tensors are
    # stepped in contiguous copies, written back (contiguous ones, the usual case, go to the kernel as they are).
    write_back: list[tuple[Tensor, Tensor]] = []

    def contiguous(tensors: list[Tensor], writable: bool = True) -> list[Tensor]:
        result = []
        for tensor in tensors:
            if not tensor.is_contiguous():
                copy = tensor.contiguous()
                if writable:
                    write_back.append((tensor, copy))
                tensor = copy
            result.append(tensor)
        return result

    kernel(
        contiguous(params),
        contiguous(grads, writable=grad_scale is not None),
        contiguous(moments[0][0]),
        contiguous(moments[0][1]),
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
    for original, copy in write_back:
        original.copy_(copy)
    if found_inf is not None:
        torch._foreach_sub_(device_steps, [found_inf] * len(device_steps))
    for step, device_step in zip(steps, device_steps):
        if device_step is not step:
            step.copy_(device_step)
