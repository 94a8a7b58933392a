"""Small models and training loops shared by the optimizer tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def make_mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def two_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights in one group (with decay and a smaller lr), biases in another (no decay)."""
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    return [
        {"params": weights, "weight_decay": weight_decay, "lr": 5e-3},
        {"params": biases, "weight_decay": 0.0},
    ]


def data(dtype: torch.dtype, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(32, 6, generator=generator, dtype=dtype), torch.randn(32, 3, generator=generator, dtype=dtype)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    scheduler_factory: Callable[[torch.optim.Optimizer], object] | None = None,
    seed: int = 1,
) -> torch.Tensor:
    """Full-batch regression; returns the flat parameters after ``steps`` steps."""
    dtype = next(model.parameters()).dtype
    inputs, targets = data(dtype, seed)
    scheduler = scheduler_factory(optimizer) if scheduler_factory else None
    for _ in range(steps):
        optimizer.zero_grad()
        ((model(inputs) - targets) ** 2).mean().backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return flat(model)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
