"""The noisy quadratic model (NQM) of Zhang et al. (2019), as a training task that costs seconds.

Loss and gradient oracle, in ``dimension`` d coordinates with curvatures ``h_i = i^{-curvature_power}``:

.. math::
    L(\\theta) = \\tfrac12 \\sum_i h_i \\theta_i^2, \\qquad
    g = H\\theta + \\xi, \\quad \\xi_i \\sim \\mathcal N(0,\\, c_i / B), \\quad c_i = h_i,

so the minimum is θ* = 0 (weight decay, which shrinks θ toward 0, helps here by construction, and
coupled L2 decay, which is preconditioned differently from decoupled decay, can look better than on a real
model), and the gradient noise covariance is ``C/B`` with ``C = H`` (Zhang et al.'s choice, which makes the noise of a
batch of size B the noise of B independent examples), and B is the batch size. The initial point is
``θ_0 ~ N(0, I)`` from the run's seed.

What is *exact*: the loss reported on "validation" and "test" is the population loss ``L(θ)`` at the current
iterate, computed in closed form (no sampled batch, no estimation error), so the only randomness in a result
is the optimizer's trajectory. The expectation of ``L`` over the gradient noise is closed-form only for
optimizers that are linear in the gradient (SGD, heavy ball; Zhang et al. model Adam as a *fixed* diagonal
preconditioner to get one); Adam, AdamW and k-Adam are not linear, so that expectation is estimated by
averaging seeds, as for every other workload. Validation and test therefore coincide here.

The task is a :class:`~kadam.experiments.workloads.Task`: ``sample_batch`` draws the noise ξ with the run's
generator, the "model" is the parameter vector θ whose forward pass returns ``L(θ)`` with the gradient
``Hθ + ξ`` (so the training-loss curve is exact too), and ``evaluate`` returns the exact ``L(θ)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kadam.experiments.workloads.data import Split
from kadam.experiments.workloads.tasks import Task

__all__ = ["NoisyQuadratic", "NoisyQuadraticTask", "build_noisy_quadratic_task", "curvatures"]


def curvatures(dimension: int, curvature_power: float = 1.0) -> torch.Tensor:
    """``h_i = i^{-curvature_power}`` for i = 1..dimension (Zhang et al. use power 1)."""
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise ValueError(f"dimension must be an integer ≥ 1, got {dimension!r}")
    if not curvature_power >= 0:
        raise ValueError(f"curvature_power must be ≥ 0, got {curvature_power!r}")
    return torch.arange(1, dimension + 1, dtype=torch.float32).pow(-float(curvature_power))


class NoisyQuadratic(nn.Module):
    """θ ∈ R^d with θ_0 ~ N(0, I) (torch's global generator: seed it, as for any module's initialisation).

    ``forward(noise)`` is a scalar whose *value* is the exact loss ``½ Σ h_i θ_i²`` and whose *gradient* is
    ``Hθ + noise`` (the noise term enters as ``noise·θ − stop_gradient(noise·θ)``), so the training curve
    records the exact loss along the noisy trajectory; :meth:`exact_loss` = ``½ Σ h_i θ_i²``.
    """

    def __init__(self, curvature: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("curvature", curvature.clone())
        self.theta = nn.Parameter(torch.randn(len(curvature)))

    def exact_loss(self) -> torch.Tensor:
        return 0.5 * (self.curvature * self.theta.square()).sum()

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        perturbation = (noise * self.theta).sum()
        return self.exact_loss() + (perturbation - perturbation.detach())


@dataclass
class NoisyQuadraticTask(Task):
    """The NQM as a :class:`~kadam.experiments.workloads.Task` (see the module docstring)."""

    curvature: torch.Tensor = field(default_factory=lambda: torch.ones(1))

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(len(self.curvature), generator=generator) * (self.curvature / batch_size).sqrt()
        noise = noise.to(self.device)
        return noise, noise

    @staticmethod
    def loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The model's output is already the stochastic loss."""
        return output

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 512) -> dict[str, float | None]:
        """Exact population loss ``L(θ)`` (identical for every split); no accuracy."""
        if split not in ("validation", "test"):
            raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
        return {"loss": float(model.exact_loss()), "accuracy": None}


def build_noisy_quadratic_task(
    device: str | torch.device = "cpu", dimension: int = 1000, curvature_power: float = 1.0
) -> NoisyQuadraticTask:
    """The NQM task in ``dimension`` coordinates with ``h_i = i^{-curvature_power}``."""
    curvature = curvatures(dimension, curvature_power)
    empty = Split(torch.zeros(0), torch.zeros(0))
    return NoisyQuadraticTask(
        "noisy-quadratic",
        {"train": empty, "validation": empty, "test": empty},
        lambda: NoisyQuadratic(curvature),
        device=torch.device(device),
        curvature=curvature,
    )
