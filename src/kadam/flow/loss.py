"""Full-batch losses as functions of one flat parameter vector, for the ODE of THEORY §3.

The continuous model integrates θ as one flat vector; tensor mode (THEORY §1) still needs to know where
each parameter tensor starts and ends, so a :class:`FlatLoss` carries the tensor shapes along with
``L(θ)``. A loss comes from a function of the flat vector or from a ``torch.nn.Module`` plus data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call


class FlatLoss:
    """A full-batch loss ``L(θ)`` of a flat parameter vector ``θ ∈ R^P`` split into tensors.

    Args:
        fn: maps a 1-D tensor of ``P`` elements to a scalar tensor; must be differentiable by autograd
            (twice, for the Hessian-vector product the model needs at τ = 0, THEORY §3).
        theta0: the starting point, a 1-D floating tensor of ``P`` elements; the model runs in its
            dtype and on its device.
        tensor_shapes: the shapes of the parameter tensors laid end to end in ``θ`` (their element
            counts must sum to ``P``); tensor-mode levels keep one second moment per tensor. Default: one
            tensor, ``θ`` itself.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        theta0: Tensor,
        tensor_shapes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if not isinstance(theta0, Tensor) or theta0.dim() != 1 or not theta0.is_floating_point():
            raise ValueError(f"theta0 must be a 1-D floating-point tensor, got {theta0!r}")
        if theta0.numel() == 0:
            raise ValueError("theta0 must have at least one element, got 0")
        shapes = [torch.Size(shape) for shape in (tensor_shapes or [theta0.shape])]
        sizes = [math.prod(shape) for shape in shapes]
        if any(size == 0 for size in sizes) or sum(sizes) != theta0.numel():
            raise ValueError(
                f"tensor_shapes must be non-empty shapes whose element counts sum to theta0's "
                f"{theta0.numel()} elements, got {[tuple(s) for s in shapes]}"
            )
        self.fn = fn
        self.theta0 = theta0.detach().clone()
        self.tensor_shapes = shapes
        self.tensor_sizes = sizes
        self.segment_ids = torch.repeat_interleave(
            torch.arange(len(sizes), device=theta0.device), torch.tensor(sizes, device=theta0.device)
        )
        self._segment_counts = torch.tensor(sizes, dtype=theta0.dtype, device=theta0.device)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    ) -> FlatLoss:
        """The loss ``loss_fn(module(inputs), targets)`` of the module's trainable parameters.

        ``θ₀`` is the module's current parameters, flattened in ``named_parameters()`` order; the
        module itself is not modified (``torch.func.functional_call`` evaluates it at any ``θ``).
        """
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("module must have at least one parameter with requires_grad=True")
        names = [name for name, _ in named]
        shapes = [p.shape for _, p in named]
        sizes = [p.numel() for _, p in named]
        theta0 = torch.cat([p.detach().reshape(-1) for _, p in named])

        def fn(theta: Tensor) -> Tensor:
            pieces = torch.split(theta, sizes)
            params = {name: piece.view(shape) for name, piece, shape in zip(names, pieces, shapes, strict=True)}
            return loss_fn(functional_call(module, params, (inputs,)), targets)

        return cls(fn, theta0, shapes)

    @property
    def num_tensors(self) -> int:
        """Number of parameter tensors in ``θ``."""
        return len(self.tensor_sizes)

    def split(self, theta: Tensor) -> list[Tensor]:
        """``θ`` cut into its parameter tensors (views, in their shapes)."""
        pieces = torch.split(theta, self.tensor_sizes)
        return [piece.view(shape) for piece, shape in zip(pieces, self.tensor_shapes, strict=True)]

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``(L(θ), ∇L(θ))``, both detached."""
        with torch.enable_grad():
            point = theta.detach().requires_grad_(True)
            value = self.fn(point)
            (grad,) = torch.autograd.grad(value, point)
        return value.detach(), grad

    def hessian_vector_product(self, theta: Tensor, vector: Tensor) -> Tensor:
        """``∇²L(θ) · vector`` by double backward."""
        _, product = torch.autograd.functional.hvp(self.fn, theta.detach(), vector)
        return product

    def tensor_mean(self, values: Tensor) -> Tensor:
        """Mean of ``values`` (a vector laid out like ``θ``) over each parameter tensor: one per tensor."""
        sums = torch.zeros(self.num_tensors, dtype=values.dtype, device=values.device)
        return sums.index_add_(0, self.segment_ids, values) / self._segment_counts

    def expand(self, per_tensor: Tensor) -> Tensor:
        """One value per tensor broadcast back to the layout of ``θ``."""
        return per_tensor[self.segment_ids]
