r"""Find a model's scale-invariant parameter tensors by measurement, with a structural explanation.

A tensor W is *scale-invariant* when ``L(cW) = L(W)`` for all c > 0; then ``⟨W, ∇L(W)⟩ = 0`` (THEORY §4).
:func:`find_scale_invariant` measures both facts on one batch for every trainable parameter tensor:

- ``invariance_error = max_c |L(cW) − L(W)| / |L(W)|`` over the probe scales (0.5 and 2 by default);
- ``cosine = ⟨W, ∇L⟩ / (|W| |∇L|)``.

Each tensor gets one of three statuses (:data:`STATUSES`): ``"invariant"`` when *both* tests hold,
``"not invariant"`` when either fails, and ``"unmeasurable"`` when a test cannot be made on this batch:
W is all zeros (scaling leaves it unchanged), ∇L is exactly zero or does not reach W (unused, or dead
units on this batch: the cosine is undefined), or the loss is zero or not finite (the relative change
is undefined). An unmeasurable tensor is never reported invariant.

The loss test is ``invariance_error ≤ loss_rtol``. The gradient test is ``⟨W, ∇L⟩ = 0``, measured as
``|cosine| ≤ cosine_tol``; when ∇L is at rounding level (``|∇_W L| ≤ vanishing_gradient · |∇_θ L|``,
θ all probed tensors; e.g. a bias that BatchNorm's centering cancels) the cosine is rounding noise and
``⟨W, ∇L⟩ = 0`` holds to rounding, so the test holds; the row's ``reason`` says so. No other rule
excuses a cosine: a small ``|W|`` with a large cosine (a plain layer's small bias) is not invariant,
however small the loss change it causes. Independently, the order in which
modules run in that forward pass gives a structural explanation where one exists: the normalization layer
(BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm) that a Linear/Conv/Embedding weight feeds, through
positively homogeneous modules only (ReLU, pooling, dropout, reshapes); or weight normalization (the
direction ``v`` of ``g·v/|v|``). The verdict comes from the measurement alone.

The probe runs the model itself, in train mode by default (where the optimizer sees the gradients:
BatchNorm uses batch statistics there; in eval mode it uses running statistics and is *not*
invariant). Everything it could change is put back exactly: parameters and buffers (values and tensor
objects, including BatchNorm's running statistics and ``num_batches_tracked``), every module's
train/eval flag, ``.grad`` (gradients are taken with ``torch.autograd.grad``) and the random number
generators (each loss evaluation reuses one seed, so dropout masks agree between probes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["STATUSES", "ScaleInvarianceReport", "ScaleInvarianceRow", "find_scale_invariant"]

STATUSES = ("invariant", "not invariant", "unmeasurable")
"""The verdicts a :class:`ScaleInvarianceRow` can carry (see the module docstring)."""

_CENTERING_PER_CHANNEL = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_NORMALIZATIONS = (*_CENTERING_PER_CHANNEL, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)
_HOMOGENEOUS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)
_TINY = torch.finfo(torch.float64).tiny


@dataclass(frozen=True)
class ScaleInvarianceRow:
    """The evidence for one parameter tensor (see the module docstring for the definitions).

    ``status`` is one of :data:`STATUSES`; ``invariant`` is ``status == "invariant"``. ``cosine`` is NaN
    when it is undefined (zero W or zero gradient). ``reason`` says why a tensor is unmeasurable, or that
    its gradient vanishes (module docstring), and is None otherwise; ``explanation`` is the structural
    reason for invariance, where there is one.
    """

    name: str
    shape: tuple[int, ...]
    invariant: bool
    invariance_error: float
    cosine: float
    grad_norm: float
    explanation: str | None
    status: str
    reason: str | None = None


@dataclass(frozen=True)
class ScaleInvarianceReport:
    """The table returned by :func:`find_scale_invariant`: one row per trainable tensor, model order."""

    rows: tuple[ScaleInvarianceRow, ...]
    scales: tuple[float, ...]
    loss_rtol: float
    cosine_tol: float
    mode: str

    @property
    def invariant(self) -> list[str]:
        """Names of the tensors measured scale-invariant."""
        return [row.name for row in self.rows if row.invariant]

    @property
    def unmeasurable(self) -> list[str]:
        """Names of the tensors neither test could be made on (zero tensor, zero gradient, zero loss)."""
        return [row.name for row in self.rows if row.status == "unmeasurable"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (an undefined cosine is None); :meth:`from_dict` inverts it."""
        return {
            "scales": list(self.scales),
            "loss_rtol": self.loss_rtol,
            "cosine_tol": self.cosine_tol,
            "mode": self.mode,
            "rows": [
                {**asdict(row), "shape": list(row.shape), "cosine": None if math.isnan(row.cosine) else row.cosine}
                for row in self.rows
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScaleInvarianceReport:
        """The report that :meth:`to_dict` wrote."""
        rows = tuple(
            ScaleInvarianceRow(
                **{**row, "shape": tuple(row["shape"]), "cosine": math.nan if row["cosine"] is None else row["cosine"]}
            )
            for row in data["rows"]
        )
        return cls(rows, tuple(data["scales"]), data["loss_rtol"], data["cosine_tol"], data["mode"])

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"scale invariance (probe in {self.mode} mode, scales {list(self.scales)})")
        for column in ("tensor", "shape", "status", "|ΔL|/|L|", "cos(W, ∇L)", "explanation"):
            table.add_column(column)
        for row in self.rows:
            table.add_row(
                row.name,
                "×".join(map(str, row.shape)) or "scalar",
                row.status,
                f"{row.invariance_error:.1e}",
                "—" if math.isnan(row.cosine) else f"{row.cosine:+.1e}",
                row.reason or row.explanation or "",
            )
        return table


class _StateSnapshot:
    """Exact copy of every parameter, buffer, ``.grad`` and train flag of a model, restorable in place."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = list(model.modules())
        self.training = [module.training for module in self.modules]
        self.entries = [
            (store, key, tensor, tensor.detach().clone())
            for module in self.modules
            for store in (module._parameters, module._buffers)
            for key, tensor in store.items()
            if tensor is not None
        ]
        self.saved = {id(tensor): saved for _, _, tensor, saved in self.entries}
        self.grads = [(tensor, tensor.grad) for _, _, tensor, _ in self.entries if isinstance(tensor, nn.Parameter)]

    @torch.no_grad()
    def restore_tensor(self, tensor: Tensor) -> None:
        tensor.copy_(self.saved[id(tensor)])

    @torch.no_grad()
    def restore_buffers(self) -> None:
        for store, key, original, saved in self.entries:
            if not isinstance(original, nn.Parameter):
                store[key] = original
                original.copy_(saved)

    @torch.no_grad()
    def restore(self) -> None:
        for store, key, original, saved in self.entries:
            store[key] = original
            original.copy_(saved)
        for tensor, grad in self.grads:
            tensor.grad = grad
        for module, training in zip(self.modules, self.training):
            module.training = training


def _execution_order(model: nn.Module) -> tuple[list[str], list[torch.utils.hooks.RemovableHandle]]:
    """Hooks that append each leaf module's name when it runs (parametrization internals excluded)."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        children = [child for child_name, child in module.named_children() if child_name != "parametrizations"]
        if children or ".parametrizations." in f".{name}." or isinstance(module, nn.ModuleDict):
            continue
        handles.append(module.register_forward_hook(lambda *_args, _name=name: order.append(_name)))
    return order, handles


def _weight_norm_explanation(model: nn.Module, name: str) -> str | None:
    owner_name, _, leaf = name.rpartition(".")
    modules = dict(model.named_modules())
    if leaf == "original1" and ".parametrizations." in f".{owner_name}":
        host_name, _, tensor_name = f".{owner_name}".rpartition(".parametrizations.")
        host_name = host_name.lstrip(".")
        plist = modules.get(owner_name)
        if plist is not None and any(type(p).__name__ == "_WeightNorm" for p in plist):
            return f"weight-normalized: {host_name or 'model'}.{tensor_name} = g·v/|v|, this is v"
    if leaf.endswith("_v"):
        owner = modules.get(owner_name)
        hooks = getattr(owner, "_forward_pre_hooks", {}).values() if owner is not None else []
        if any(type(hook).__name__ == "WeightNorm" for hook in hooks):
            return f"weight-normalized: {owner_name}.{leaf[:-2]} = g·v/|v|, this is v"
    return None


def _normalization_explanation(model: nn.Module, name: str, order: Sequence[str]) -> str | None:
    owner_name, _, leaf = name.rpartition(".")
    host_name = owner_name.partition(".parametrizations.")[0] if ".parametrizations." in owner_name else owner_name
    modules = dict(model.named_modules())
    host = modules.get(host_name)
    if not isinstance(host, _WEIGHTED) or host_name not in order:
        return None
    position = len(order) - 1 - order[::-1].index(host_name)
    has_bias = getattr(host, "bias", None) is not None
    for later_name in order[position + 1 :]:
        later = modules[later_name]
        if isinstance(later, _NORMALIZATIONS):
            centering = isinstance(later, _CENTERING_PER_CHANNEL)
            adjacent = later_name == order[position + 1]
            if leaf == "bias" and centering and adjacent:
                return f"cancelled by {type(later).__name__} '{later_name}' (per-channel centering)"
            if leaf in ("weight", "original1", "weight_v") and (not has_bias or (centering and adjacent)):
                return f"followed by {type(later).__name__} '{later_name}'"
            return None
        if not isinstance(later, _HOMOGENEOUS):
            return None
    return None


def _unmeasurable_reason(
    loss: float, weight_norm: float, gradient_norm: float, radial: float, error: float, reaches: bool
) -> str | None:
    """Why a tensor's two tests cannot be made on this batch, or None when both can."""
    if not math.isfinite(loss):
        return "the loss is not finite"
    if loss == 0:
        return "the loss is zero: its relative change is undefined"
    if weight_norm == 0:
        return "all zeros: scaling leaves it unchanged"
    if not (math.isfinite(weight_norm) and math.isfinite(gradient_norm) and math.isfinite(radial)):
        return "the tensor or its gradient is not finite"
    if not reaches:
        return "the loss does not depend on it (no gradient reaches it): the gradient test is undefined"
    if gradient_norm == 0:
        return "the gradient is exactly zero on this batch: the gradient test is undefined"
    if math.isnan(error):
        return "the loss at a probe scale is NaN"
    return None


def find_scale_invariant(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batch: Any,
    *,
    scales: Sequence[float] = (0.5, 2.0),
    loss_rtol: float = 1e-3,
    cosine_tol: float = 1e-3,
    vanishing_gradient: float = 1e-6,
    mode: Literal["train", "eval", "current"] = "train",
    seed: int = 0,
) -> ScaleInvarianceReport:
    r"""Which of ``model``'s trainable tensors are scale-invariant, measured on ``batch`` (THEORY §4).

    ``loss_fn(model, batch)`` returns the scalar loss. A tensor W is reported invariant when both tests
    hold: the relative loss change ``max_c |L(cW) − L(W)|/|L(W)|`` over ``scales`` is ≤ ``loss_rtol``
    and ``|cos(W, ∇L)|`` ≤ ``cosine_tol`` (the defaults suit float32 with normalization ε ≈ 1e-5; loosen
    them for lower precision). A gradient with ``|∇_W L| ≤ vanishing_gradient · |∇_θ L|`` is rounding
    noise and passes the gradient test (the default sits about ten times above float32's ε ≈ 1.2e-7;
    use a smaller one for float64). A tensor on which a test cannot be made (zero W, zero gradient, zero
    or non-finite loss) is reported ``"unmeasurable"``, not invariant (module docstring). ``mode`` is the mode the probe runs in: ``"train"`` (default; where optimization happens),
    ``"eval"`` or ``"current"`` (the model's own). The model's state is restored exactly afterwards (module
    docstring). Returns a :class:`ScaleInvarianceReport` with the evidence per tensor.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    scales = tuple(float(c) for c in scales)
    if not scales or any(not (c > 0 and math.isfinite(c)) or c == 1.0 for c in scales):
        raise ValueError(f"scales must be finite numbers > 0 other than 1, got {scales!r}")
    for label, tolerance in (
        ("loss_rtol", loss_rtol),
        ("cosine_tol", cosine_tol),
        ("vanishing_gradient", vanishing_gradient),
    ):
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
            raise ValueError(f"{label} must be a number in [0, 1), got {tolerance!r}")
    if mode not in ("train", "eval", "current"):
        raise ValueError(f"mode must be one of 'train', 'eval', 'current', got {mode!r}")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.numel() > 0]
    if not named:
        raise ValueError("model has no trainable parameters to probe")

    snapshot = _StateSnapshot(model)
    devices = sorted({p.device.index or 0 for _, p in named if p.device.type == "cuda"})
    order, handles = _execution_order(model)
    try:
        with torch.random.fork_rng(devices=devices):
            if mode != "current":
                model.train(mode == "train")

            def evaluate() -> Tensor:
                torch.manual_seed(seed)
                loss = loss_fn(model, batch)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError("loss_fn must return a scalar tensor")
                return loss.reshape(())

            reference = evaluate()
            for handle in handles:
                handle.remove()
            gradients = torch.autograd.grad(reference, [p for _, p in named], allow_unused=True)
            snapshot.restore_buffers()
            reference_value = float(reference.detach().double())
            total_gradient_norm = math.sqrt(sum(float(torch.sum(g.double() ** 2)) for g in gradients if g is not None))
            rows = []
            for (name, tensor), gradient in zip(named, gradients):
                errors = []
                with torch.no_grad():
                    for c in scales:
                        tensor.mul_(c)
                        loss = float(evaluate().double())
                        snapshot.restore_tensor(tensor)
                        snapshot.restore_buffers()
                        errors.append(abs(loss - reference_value) / max(abs(reference_value), _TINY))
                error = max(errors)
                weight = tensor.detach().double()
                weight_norm = float(torch.linalg.vector_norm(weight))
                reaches = gradient is not None
                gradient = torch.zeros_like(weight) if gradient is None else gradient.double()
                gradient_norm = float(torch.linalg.vector_norm(gradient))
                radial = float(torch.sum(gradient * weight))
                measurable = weight_norm > 0 and gradient_norm > 0 and math.isfinite(radial)
                cosine = radial / (gradient_norm * weight_norm) if measurable else math.nan
                explanation = _weight_norm_explanation(model, name) or _normalization_explanation(model, name, order)
                reason = _unmeasurable_reason(reference_value, weight_norm, gradient_norm, radial, error, reaches)
                vanishes = reason is None and gradient_norm <= vanishing_gradient * total_gradient_norm
                if vanishes:
                    reason = (
                        f"gradient at rounding level ({gradient_norm / total_gradient_norm:.1e} of the model's): "
                        "the cosine is noise, ⟨W, ∇L⟩ = 0 holds"
                    )
                if reason is not None and not vanishes:
                    status = "unmeasurable"
                elif error <= loss_rtol and (vanishes or abs(cosine) <= cosine_tol):
                    status = "invariant"
                else:
                    status = "not invariant"
                if weight_norm == 0:
                    explanation = "all zeros: scaling leaves it unchanged, invariance cannot be measured"
                rows.append(
                    ScaleInvarianceRow(
                        name=name,
                        shape=tuple(tensor.shape),
                        invariant=status == "invariant",
                        invariance_error=error,
                        cosine=cosine,
                        grad_norm=gradient_norm,
                        explanation=explanation,
                        status=status,
                        reason=reason,
                    )
                )
    finally:
        for handle in handles:
            handle.remove()
        snapshot.restore()
    return ScaleInvarianceReport(tuple(rows), scales, float(loss_rtol), float(cosine_tol), mode)
