r"""The preconditioned sharpness :math:`\lambda_{\max}(P^{-1}H)` by Lanczos steps on Hessian-vector products (THEORY §7)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["preconditioned_sharpness"]


def preconditioned_sharpness(
    loss: Callable[[], Tensor],
    params: Sequence[Tensor],
    inverse_preconditioner: Sequence[Tensor],
    *,
    iterations: int = 20,
    generator: torch.Generator | None = None,
) -> float:
    r"""Largest eigenvalue of :math:`P^{-1}H` by ``iterations`` Lanczos steps on Hessian-vector products (THEORY §7).

    ``loss()`` returns the loss as a tensor with its graph (it must not call ``backward``); ``params``
    the tensors of H; ``inverse_preconditioner`` the diagonal of :math:`P^{-1}` shaped like them. The
    iteration runs on the symmetric :math:`D^{1/2} H D^{1/2}`, :math:`D = P^{-1}` (same eigenvalues) from a
    random start and returns the largest eigenvalue of the Lanczos tridiagonal matrix
    (``scipy.linalg.eigh_tridiagonal``): the largest *algebraic* eigenvalue's estimate, which rises towards
    it with every step and never falls below the smallest eigenvalue. (Power iteration would instead find
    the eigenvalue of largest magnitude, which on an indefinite Hessian can be a negative one.) The cost is
    fixed: ``iterations`` Hessian-vector products, no reorthogonalization (its loss of orthogonality
    duplicates converged Ritz values but does not move the largest). ``.grad`` is left untouched
    (``torch.autograd.grad``). ``loss()`` runs with scaled-dot-product attention on its math backend, the
    one with a double backward.
    """
    from scipy.linalg import eigh_tridiagonal
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    params = list(params)
    roots = [d.sqrt() for d in inverse_preconditioner]
    with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels lack double backward
        value = loss()
        grads = torch.autograd.grad(value, params, create_graph=True)

    def dot(a: list[Tensor], b: list[Tensor]) -> float:
        return float(sum(torch.sum(x * y) for x, y in zip(a, b)))

    vector = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    norm = math.sqrt(dot(vector, vector))
    vector = [v / norm for v in vector]
    previous: list[Tensor] | None = None
    alphas: list[float] = []
    offdiagonal: list[float] = []
    for _ in range(iterations):
        scaled = [v * r for v, r in zip(vector, roots)]
        hvp = torch.autograd.grad(grads, params, grad_outputs=scaled, retain_graph=True)
        product = [h * r for h, r in zip(hvp, roots)]
        alpha = dot(vector, product)
        if not math.isfinite(alpha):
            return math.nan
        alphas.append(alpha)
        residual = [w - alpha * v for w, v in zip(product, vector)]
        if previous is not None:
            residual = [w - offdiagonal[-1] * u for w, u in zip(residual, previous)]
        beta = math.sqrt(max(dot(residual, residual), 0.0))
        if len(alphas) == iterations or not math.isfinite(beta) or beta <= 1e-12 * max(abs(alpha), 1e-300):
            break  # done, or the Krylov space is invariant: its Ritz values are exact eigenvalues
        offdiagonal.append(beta)
        previous, vector = vector, [w / beta for w in residual]
    ritz = eigh_tridiagonal(np.asarray(alphas), np.asarray(offdiagonal[: len(alphas) - 1]), eigvals_only=True)
    return float(ritz[-1])
