"""A short monitored run shared by the monitor's plot and CLI tests."""

from __future__ import annotations

import torch
from torch import nn

from kadam.monitor import StabilityMonitor


def monitored_run_outside_the_region(steps: int = 5) -> StabilityMonitor:
    """Adam at (β, γ) = (0.99, 0.9), outside γ > β² (one event), on a two-layer linear model, monitored every step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.99, 0.9))
    monitor = StabilityMonitor(optimizer, every=1, names=model, warn=False)
    inputs = torch.randn(8, 3)
    for _ in range(steps):
        loss = model(inputs).square().mean()
        optimizer.zero_grad()
        loss.backward()
        monitor.observe_loss(loss)
        optimizer.step()
    return monitor
