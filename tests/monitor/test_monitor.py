"""StabilityMonitor: every quantity against a brute-force float64 recomputation, events, hooks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kadam import KAdam
from kadam.monitor import (
    StabilityEvent,
    StabilityMonitor,
    StabilityWarning,
    Thresholds,
    preconditioned_sharpness,
    read_log,
)
from kadam.stability import nearest_stable_gamma
from kadam.stability import region_text as region_event_text

STEPS = 12


def brute_bound(beta: float, gamma: float, n: int) -> float:
    """B_n of THEORY §2 as the explicit sum, no log domain."""
    r = beta**2 / gamma
    total = sum(r**j for j in range(n))
    return (1 - beta) / (1 - beta**n) * math.sqrt((1 - gamma**n) / (1 - gamma) * total)


class Reference:
    """Float64 k-Adam levels straight from THEORY §1, fed the gradients the torch run saw."""

    def __init__(self, shapes: list[tuple[int, ...]], levels: list[tuple[float, float, float, bool]]) -> None:
        self.levels = levels
        self.state = [
            [(np.zeros(s), np.zeros(()) if tensor else np.zeros(s)) for (_, _, _, tensor) in levels] for s in shapes
        ]
        self.n = 0

    def step(self, grads: list[np.ndarray]) -> list[dict[str, object]]:
        self.n += 1
        out = []
        for p, g in enumerate(grads):
            x = g.astype(np.float64)
            record: dict[str, object] = {"outputs": []}
            for i, (beta, gamma, eps, tensor) in enumerate(self.levels):
                m, v = self.state[p][i]
                if i == 0:
                    if self.n > 1:
                        v_hat = v / (1 - gamma ** (self.n - 1))
                        record["spike"] = float(np.max(x**2 / (np.sqrt(v_hat) + eps) ** 2))
                    else:
                        record["spike"] = math.nan
                m = beta * m + (1 - beta) * x
                v = gamma * v + (1 - gamma) * (np.mean(x**2) if tensor else x**2)
                self.state[p][i] = (m, v)
                x = (m / (1 - beta**self.n)) / (np.sqrt(v / (1 - gamma**self.n)) + eps)
                record["outputs"].append(x)
            out.append(record)
        return out


def regression(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    return (
        model,
        torch.randn(16, 5, generator=generator, dtype=dtype),
        torch.randn(16, 3, generator=generator, dtype=dtype),
    )


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    monitor: StabilityMonitor | None = None,
    scheduler=None,
) -> list[dict[str, np.ndarray]]:
    """Train; returns per step the gradients and parameters before and after (numpy float64)."""
    trace = []
    for _ in range(steps):
        loss = ((model(inputs) - targets) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.observe_loss(loss)
        named = dict(model.named_parameters())
        before = {n: p.detach().double().numpy().copy() for n, p in named.items()}
        grads = {n: p.grad.double().numpy().copy() for n, p in named.items() if p.grad is not None}
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        after = {n: p.detach().double().numpy().copy() for n, p in named.items()}
        trace.append({"before": before, "grads": grads, "after": after, "loss": loss.item()})
    return trace


@pytest.mark.parametrize("kind", ["adam", "adamw", "adam-l2", "kadam2"])
def test_every_quantity_matches_a_float64_recomputation(kind: str) -> None:
    model, inputs, targets = regression()
    lr, weight_decay = 0.05, 0.1
    if kind == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.8, 0.95))
        levels, decoupled, weight_decay = [(0.8, 0.95, 1e-8, False)], True, 0.0
    elif kind == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.8, 0.95), weight_decay=weight_decay)
        levels, decoupled = [(0.8, 0.95, 1e-8, False)], True
    elif kind == "adam-l2":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.8, 0.95), weight_decay=weight_decay)
        levels, decoupled = [(0.8, 0.95, 1e-8, False)], False
    else:
        optimizer = KAdam(model.parameters(), lr=lr, k=2, betas=(0.8, 0.95), weight_decay=weight_decay)
        levels, decoupled = [(0.8, 0.95, 1e-8, False), (0.0, 0.999, 1e-8, True)], True
    names = [n for n, _ in model.named_parameters()]
    monitor = StabilityMonitor(optimizer, every=3, names=model, scale_invariant=["0.weight"], warn=False)
    trace = train(model, optimizer, inputs, targets, STEPS, monitor)
    history = monitor.history
    np.testing.assert_array_equal(history.steps, [3, 6, 9, 12])
    assert history.names == names
    reference = Reference([p.shape for p in model.parameters()], levels)
    row = 0
    for n, record in enumerate(trace, start=1):
        expected = reference.step(
            [
                record["grads"][name]
                if kind != "adam-l2"
                else record["grads"][name] + weight_decay * record["before"][name]
                for name in names
            ]
        )
        if n % 3:
            continue
        assert history.model["loss"][row] == pytest.approx(record["loss"], rel=1e-12)
        u_sq = g_sq = inner = 0.0
        for t, name in enumerate(names):
            got = {q: history[q][name][row] for q in history.quantities}
            for i, (beta, gamma, _, tensor) in enumerate(levels, start=1):
                u = expected[t]["outputs"][i - 1]
                bound = brute_bound(beta, gamma, n)
                assert got[f"bound_L{i}"] == pytest.approx(bound, rel=1e-10)
                assert got[f"update_rms_L{i}"] == pytest.approx(np.sqrt(np.mean(u**2)), rel=1e-7)
                assert got[f"update_max_L{i}"] == pytest.approx(np.max(np.abs(u)), rel=1e-7)
                size = np.sqrt(np.mean(u**2)) if tensor else np.max(np.abs(u))
                assert got[f"bound_ratio_L{i}"] == pytest.approx(size / bound, rel=1e-7)
                assert got[f"bound_ratio_L{i}"] <= 1.0
            assert got["spike_factor"] == pytest.approx(expected[t]["spike"], rel=1e-7)
            u = expected[t]["outputs"][-1]
            g = record["grads"][name]
            assert got["cosine"] == pytest.approx(
                np.dot(u.ravel(), g.ravel()) / np.linalg.norm(u) / np.linalg.norm(g), rel=1e-7
            )
            u_sq, g_sq, inner = u_sq + np.sum(u**2), g_sq + np.sum(g**2), inner + np.dot(u.ravel(), g.ravel())
            before, after = record["before"][name], record["after"][name]
            assert got["update_param_ratio"] == pytest.approx(
                np.linalg.norm(after - before) / np.linalg.norm(before), rel=1e-6
            )
            assert got["param_norm"] == pytest.approx(np.linalg.norm(after), rel=1e-12)
            assert got["lr"] == lr
            if name == "0.weight":
                assert got["effective_lr"] == pytest.approx(lr / np.linalg.norm(before), rel=1e-9)
                cos = np.dot(before.ravel(), after.ravel()) / np.linalg.norm(before) / np.linalg.norm(after)
                assert got["angular_update"] == pytest.approx(math.acos(min(cos, 1.0)), rel=1e-5)
                if weight_decay and decoupled:
                    from kadam.normalization.predictions import equilibrium_angular_update, equilibrium_norm

                    beta = levels[-1][0]
                    assert got["predicted_norm"] == equilibrium_norm(lr, weight_decay, before.size, beta)
                    assert got["predicted_angular_update"] == equilibrium_angular_update(lr, weight_decay, beta)
                else:
                    assert math.isnan(got["predicted_norm"])
            else:
                assert math.isnan(got["effective_lr"])
        assert history.model["model_cosine"][row] == pytest.approx(inner / math.sqrt(u_sq * g_sq), rel=1e-7)
        row += 1


def test_update_recomputed_from_state_is_the_applied_update() -> None:
    # The module's claim: u from the state reproduces θ_n = (1 − ηλ) θ_{n−1} − η u_n (float32 run).
    model, inputs, targets = regression(dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    monitor = StabilityMonitor(optimizer, every=1, names=model, warn=False)
    trace = train(model, optimizer, inputs, targets, 4, monitor)
    for name in ("0.weight", "2.bias"):
        before, after = trace[-1]["before"][name], trace[-1]["after"][name]
        change = np.linalg.norm(after - before) / np.linalg.norm(before)
        assert monitor.history["update_param_ratio"][name][-1] == pytest.approx(change, rel=1e-4)


def test_foreach_and_single_tensor_paths_record_the_same() -> None:
    histories = []
    for foreach in (False, True):
        model, inputs, targets = regression()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05, foreach=foreach)
        monitor = StabilityMonitor(optimizer, every=2, names=model, warn=False)
        train(model, optimizer, inputs, targets, 6, monitor)
        histories.append(monitor.history.values)
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-9, equal_nan=True)


def test_region_event_numbers_come_from_the_theory() -> None:
    explanation, suggestion = region_event_text(0.99, 0.95)
    rate = math.log(0.99) - 0.5 * math.log(0.95)
    assert f"{100 * math.expm1(rate):.2g}%" in explanation and "1.6%" in explanation
    assert "0.981" in suggestion
    assert nearest_stable_gamma(0.99) == 0.981 and 0.99**2 < 0.981
    assert nearest_stable_gamma(0.9) == 0.811  # 0.81 itself is on the boundary
    assert nearest_stable_gamma(0.9999) > 0.9999**2


def test_region_event_at_attach_and_on_a_change_of_betas() -> None:
    model, inputs, targets = regression()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.99, 0.95))
    events: list[StabilityEvent] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = StabilityMonitor(optimizer, every=1, on_event=events.append)
    assert [e.quantity for e in events] == ["gamma"] and events[0].source == "theory"
    assert events[0].value == 0.95 and events[0].threshold == pytest.approx(0.99**2)
    assert caught and caught[0].category is StabilityWarning
    assert caught[0].filename == __file__  # points at the user's line, not into kadam or torch
    optimizer.param_groups[0]["betas"] = (0.9, 0.999)
    train(model, optimizer, inputs, targets, 2, monitor)
    assert len(events) == 1  # a stable change raises nothing
    optimizer.param_groups[0]["betas"] = (0.9, 0.5)
    with pytest.warns(StabilityWarning):
        train(model, optimizer, inputs, targets, 1, monitor)
    assert len(events) >= 2 and events[1].quantity == "gamma" and events[1].step == 3
    # the moments were averaged with β = 0.9, γ = 0.999: with the new (β, γ) the update exceeds B_n, which the
    # monitor reports as impossible for the recorded hyperparameters
    assert {e.quantity for e in events[2:]} == {"bound_ratio_L1"} and all(e.value > 1 for e in events[2:])


def test_bound_ratio_above_one_is_reported_as_impossible() -> None:
    model, inputs, targets = regression()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def tamper(opt, args, kwargs):  # runs before the monitor's post-hook: the state no longer matches
        for state in opt.state.values():
            state["exp_avg"].mul_(10.0)

    optimizer.register_step_post_hook(tamper)
    events: list[StabilityEvent] = []
    monitor = StabilityMonitor(optimizer, every=1, on_event=events.append, warn=False)
    train(model, optimizer, inputs, targets, 3, monitor)
    bound_events = [e for e in events if e.quantity == "bound_ratio_L1"]
    assert bound_events and all(e.source == "theory" and e.value > 1 for e in bound_events)


def test_spike_factor_event_on_a_silent_coordinate_that_jumps() -> None:
    weight = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = torch.optim.Adam([weight], lr=0.01, eps=1e-8)
    events: list[StabilityEvent] = []
    monitor = StabilityMonitor(
        optimizer,
        every=1,
        names=[("embedding.weight", weight)],
        on_event=events.append,
        warn=False,
        thresholds=Thresholds(spike_factor=100.0, spike_after=2),
    )
    for n in range(1, 31):
        weight.grad = torch.tensor([1.0, 1.0, 1e-3 if n < 30 else 1.0, 0.5], dtype=torch.float64)
        optimizer.step()
    spikes = monitor.history["spike_factor"]["embedding.weight"]
    assert np.nanmax(spikes[:-1]) < 2 and spikes[-1] > 100
    # brute force: coordinate 2 had v̂ = 1e-6 (a constant gradient), now g² = 1
    assert spikes[-1] == pytest.approx(1.0 / (1e-3 + 1e-8) ** 2, rel=1e-6)
    assert [(e.tensor, e.step, e.quantity) for e in events] == [("embedding.weight", 30, "spike_factor")]


def test_warnings_are_rate_limited_but_events_kept() -> None:
    weight = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = torch.optim.Adam([weight], lr=0.01)
    received: list[StabilityEvent] = []
    monitor = StabilityMonitor(
        optimizer, every=1, on_event=received.append, quiet_steps=2, thresholds=Thresholds(cosine=-0.5)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 13):  # +1 for 6 steps, then -1: momentum keeps the update positive for 3 steps
            weight.grad = torch.full((3,), 1.0 if n <= 6 else -1.0, dtype=torch.float64)
            optimizer.step()
    cosine_events = [e for e in monitor.events if e.quantity == "cosine"]
    assert [e.step for e in cosine_events] == [7, 8, 9] and all(e.value == pytest.approx(-1) for e in cosine_events)
    assert len(received) == 3
    assert [str(w.message).split(",")[0] for w in caught] == ["step 7", "step 9"]
    assert all(w.filename == __file__ for w in caught)


def _random_quadratic(eigenvalues: list[float], seed: int) -> tuple[torch.Tensor, nn.Parameter]:
    """A Hessian with these eigenvalues in a random basis, and a random starting point."""
    generator = torch.Generator().manual_seed(seed)
    size = len(eigenvalues)
    basis = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))[0]
    hessian = basis @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ basis.T
    return hessian, nn.Parameter(torch.randn(size, generator=generator, dtype=torch.float64))


def _largest_eigenvalue(hessian: torch.Tensor, inverse_preconditioner: torch.Tensor) -> float:
    """λ_max(D^½ H D^½), D the diagonal ``inverse_preconditioner``, by dense eigendecomposition."""
    root = inverse_preconditioner.sqrt()
    return torch.linalg.eigvalsh(root[:, None] * hessian * root[None, :]).max().item()


def _adam_with_sharpness(
    theta: nn.Parameter,
    train_loss: Callable[[], torch.Tensor],
    probe: Callable[[], torch.Tensor],
    steps: int,
    **monitor_options: Any,
) -> tuple[torch.optim.Adam, StabilityMonitor, torch.Tensor]:
    """``steps`` steps of Adam (lr 0.01, β = 0.9) on ``train_loss`` with the sharpness estimated on ``probe``;
    the optimizer, the monitor and v̂ after the last step."""
    optimizer = torch.optim.Adam([theta], lr=0.01, betas=(0.9, 0.999))
    monitor = StabilityMonitor(optimizer, every=1, sharpness_closure=probe, warn=False, **monitor_options)
    for _ in range(steps):
        optimizer.zero_grad()
        train_loss().backward()
        optimizer.step()
    return optimizer, monitor, optimizer.state[theta]["exp_avg_sq"] / (1 - 0.999**steps)


def test_sharpness_against_the_eigenvalues_of_a_quadratic() -> None:
    hessian, theta = _random_quadratic([9.0, 4.0, 2.0, 1.0, 0.5, 0.1], seed=0)

    def loss() -> torch.Tensor:
        return 0.5 * theta @ hessian @ theta

    lr, beta = 0.01, 0.9
    _, monitor, v_hat = _adam_with_sharpness(theta, loss, loss, 4, sharpness_every=2, sharpness_iterations=200)
    expected = _largest_eigenvalue(hessian, lr / (v_hat.sqrt() + 1e-8))
    history = monitor.history
    assert np.isnan(history.model["sharpness"][0]) and np.isnan(history.model["sharpness"][2])
    assert history.model["sharpness"][3] == pytest.approx(expected, rel=1e-6)
    assert history.model["sharpness_threshold"][3] == pytest.approx((2 + 2 * beta) / (1 - beta))
    assert theta.grad is not None  # untouched by the estimate


def test_sharpness_leaves_out_coordinates_that_never_had_a_gradient() -> None:
    """An embedding row of a token absent from training has v̂ = 0, so P⁻¹ = η/ε there; if the probe batch
    contains the token, that coordinate alone would put the estimate ~1e5× above the edge. The estimate is
    the largest eigenvalue over the coordinates with v̂ > 0 (dense eigendecomposition as the reference)."""
    hessian, theta = _random_quadratic([6.0, 3.0, 1.0, 0.5, 0.2], seed=1)
    silent = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)  # coordinate 4: no gradient in training

    def probe() -> torch.Tensor:
        return 0.5 * theta @ hessian @ theta

    def train_loss() -> torch.Tensor:
        return 0.5 * (theta * silent) @ hessian @ (theta * silent)

    lr = 0.01
    _, monitor, v_hat = _adam_with_sharpness(theta, train_loss, probe, 3, sharpness_every=3, sharpness_iterations=100)
    assert v_hat[4] == 0 and (v_hat[:4] > 0).all()
    expected = _largest_eigenvalue(hessian, torch.where(v_hat > 0, lr / (v_hat.sqrt() + 1e-8), 0.0))
    assert _largest_eigenvalue(hessian, lr / (v_hat.sqrt() + 1e-8)) > 1e3 * expected
    monitor.remove()
    assert monitor.history.model["sharpness"][2] == pytest.approx(expected, rel=1e-6)


def test_sharpness_event_above_the_edge_of_stability() -> None:
    theta = nn.Parameter(torch.ones(3, dtype=torch.float64))
    curvature = torch.tensor([1e4, 1.0, 1.0], dtype=torch.float64)
    optimizer = torch.optim.Adam([theta], lr=1.0, betas=(0.9, 0.999))
    events: list[StabilityEvent] = []
    StabilityMonitor(
        optimizer,
        every=1,
        sharpness_every=1,
        on_event=events.append,
        warn=False,
        thresholds=Thresholds(sharpness_after=1),
        sharpness_closure=lambda: 0.5 * (curvature * theta**2).sum(),
    )
    theta.grad = torch.ones(3, dtype=torch.float64)
    optimizer.step()
    assert any(e.quantity == "sharpness" and e.source == "theory" for e in events)
    assert preconditioned_sharpness(
        lambda: (theta**2).sum(), [theta], [torch.ones(3, dtype=torch.float64)], iterations=3
    ) == pytest.approx(2.0)


def test_sharpness_is_the_largest_algebraic_eigenvalue_not_the_largest_magnitude() -> None:
    """On an indefinite Hessian diag(1, 2, -50) with preconditioner diag(4, 1, 1) the eigenvalues of P^-1 H are
    4, 2 and -50: power iteration would return -50; Lanczos returns 4 (exact after 3 steps in 3 dimensions)
    and from below with fewer steps (a lower bound above the smallest eigenvalue)."""
    theta = nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    curvature = torch.tensor([1.0, 2.0, -50.0], dtype=torch.float64)
    inverse = [torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)]

    def loss():
        return 0.5 * (curvature * theta**2).sum()

    generator = torch.Generator().manual_seed(0)
    assert preconditioned_sharpness(loss, [theta], inverse, iterations=3, generator=generator) == pytest.approx(4.0)
    for steps in (1, 2):
        estimate = preconditioned_sharpness(
            loss, [theta], inverse, iterations=steps, generator=torch.Generator().manual_seed(0)
        )
        assert -50.0 <= estimate <= 4.0 + 1e-12
    assert theta.grad is None
    with pytest.raises(ValueError, match="iterations must be"):
        preconditioned_sharpness(loss, [theta], inverse, iterations=0)


def test_detach_removes_every_hook() -> None:
    model, inputs, targets = regression()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    pre, post = len(optimizer._optimizer_step_pre_hooks), len(optimizer._optimizer_step_post_hooks)
    monitor = StabilityMonitor(optimizer, every=1)
    train(model, optimizer, inputs, targets, 2, monitor)
    monitor.remove()
    assert (len(optimizer._optimizer_step_pre_hooks), len(optimizer._optimizer_step_post_hooks)) == (pre, post)
    train(model, optimizer, inputs, targets, 2)
    assert list(monitor.history.steps) == [1, 2]
    with StabilityMonitor(optimizer, every=1) as scoped:
        train(model, optimizer, inputs, targets, 1)
    assert list(scoped.history.steps) == [5] and len(optimizer._optimizer_step_post_hooks) == post


def test_grad_scaler_skipped_step_is_not_recorded() -> None:
    weight = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    monitor = StabilityMonitor(optimizer, every=2, warn=False)
    gradients = [[1.0, 1.0, 1.0], [1.0, math.inf, 1.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 2.0, 1.0]]
    for g in gradients:  # step 2 (a recorded call) overflows
        optimizer.zero_grad()
        scaler.scale((weight * torch.tensor(g)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    history = monitor.history
    assert optimizer.state[weight]["step"].item() == 4
    # call 2 skipped (step stayed 1): call 3 is recorded in its place as optimizer step 2, then call 4 (step 3)
    assert list(history.steps) == [2, 3]
    assert history["bound_L1"]["param_groups[0][0]"][0] == pytest.approx(brute_bound(0.9, 0.999, 2))


def test_frozen_and_gradient_free_parameters_are_skipped() -> None:
    model, inputs, targets = regression()
    model[0].bias.requires_grad_(False)
    unused = nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer = torch.optim.AdamW([{"params": model.parameters()}, {"params": [unused], "lr": 0.1}], lr=0.01)
    monitor = StabilityMonitor(optimizer, every=1, names=[*model.named_parameters(), ("unused", unused)], warn=False)
    train(model, optimizer, inputs, targets, 3, monitor)
    history = monitor.history
    assert np.isnan(history.values[:, history.names.index("0.bias")]).all()
    assert np.isnan(history.values[:, history.names.index("unused")]).all()
    assert np.isfinite(history["bound_ratio_L1"]["2.weight"]).all()


def test_scheduler_and_tensor_learning_rate_are_read_each_step() -> None:
    model, inputs, targets = regression()
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.1))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    monitor = StabilityMonitor(optimizer, every=1, names=model, warn=False)
    trace = train(model, optimizer, inputs, targets, 6, monitor, scheduler)
    np.testing.assert_allclose(monitor.history["lr"]["0.weight"], [0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rtol=1e-6)
    before, after = trace[4]["before"]["0.weight"], trace[4]["after"]["0.weight"]
    assert monitor.history["update_param_ratio"]["0.weight"][4] == pytest.approx(
        np.linalg.norm(after - before) / np.linalg.norm(before), rel=1e-6
    )


def test_kadam_levels_in_groups_with_different_k() -> None:
    model, inputs, targets = regression()
    optimizer = KAdam(
        [{"params": model[0].parameters(), "k": 3}, {"params": model[2].parameters(), "k": 1}], lr=0.01, k=2
    )
    monitor = StabilityMonitor(optimizer, every=1, names=model, warn=False)
    train(model, optimizer, inputs, targets, 3, monitor)
    ratio3 = monitor.history["bound_ratio_L3"]
    assert np.isfinite(ratio3["0.weight"]).all() and np.isnan(ratio3["2.weight"]).all()
    np.testing.assert_allclose(
        monitor.history["bound_L3"]["0.weight"], [brute_bound(0.0, 0.999, n) for n in (1, 2, 3)], rtol=1e-12
    )


def test_names_default_to_group_positions() -> None:
    model, inputs, targets = regression()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = StabilityMonitor(optimizer, every=1, names=[("first", model[0].weight)], warn=False)
    assert monitor.history.names == ["first", "param_groups[0][1]", "param_groups[0][2]", "param_groups[0][3]"]


def test_csv_round_trip(tmp_path: Path) -> None:
    model, inputs, targets = regression()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.99, 0.9))
    monitor = StabilityMonitor(optimizer, every=2, names=model, scale_invariant=["0.weight"], warn=False)
    train(model, optimizer, inputs, targets, 6, monitor)
    monitor.to_csv(tmp_path / "log.csv")
    read = read_log(tmp_path / "log.csv")
    history = monitor.history
    np.testing.assert_array_equal(read.steps, history.steps)
    for quantity in history.quantities:
        for name in history.names:
            if np.isfinite(history[quantity][name]).any():
                np.testing.assert_array_equal(read[quantity][name], history[quantity][name])
    np.testing.assert_array_equal(read.model["loss"], history.model["loss"])
    assert read.events == history.events and read.events[0].quantity == "gamma"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a kadam monitor log"):
        read_log(tmp_path / "bad.csv")


def test_writer_receives_scalars() -> None:
    class Writer:
        def __init__(self) -> None:
            self.scalars: list[tuple[str, float, int]] = []

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars.append((tag, value, step))

    model, inputs, targets = regression()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    writer = Writer()
    monitor = StabilityMonitor(optimizer, every=2, names=model, writer=writer, warn=False)
    train(model, optimizer, inputs, targets, 4, monitor)
    tags = {tag for tag, _, _ in writer.scalars}
    assert "kadam/bound_ratio_L1/0.weight" in tags and "kadam/model_cosine" in tags
    assert {step for _, _, step in writer.scalars} == {2, 4}
    assert (
        dict(((t, s), v) for t, v, s in writer.scalars)[("kadam/bound_ratio_L1/0.weight", 4)]
        == monitor.history["bound_ratio_L1"]["0.weight"][1]
    )


def test_only_rank_zero_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    received: list[StabilityEvent] = []
    model, _, _ = regression()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.99, 0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor = StabilityMonitor(optimizer, on_event=received.append)
    assert len(monitor.events) == 1 and received == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 0}, "every must be an integer >= 1"),
        ({"sharpness_every": 2}, "sharpness_every needs sharpness_closure"),
        ({"scale_invariant": ["missing"]}, "scale_invariant names tensors"),
        ({"thresholds": {"spike_factor": 1}}, "thresholds must be"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    model, _, _ = regression()
    with pytest.raises(ValueError, match=match):
        StabilityMonitor(torch.optim.Adam(model.parameters()), **kwargs)


def test_bad_optimizer_and_thresholds() -> None:
    model, _, _ = regression()
    with pytest.raises(ValueError, match="optimizer must be torch.optim.Adam"):
        StabilityMonitor(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="Thresholds.cosine must lie in"):
        Thresholds(cosine=2.0)
    with pytest.raises(ValueError, match="Thresholds.spike_factor must be > 0"):
        Thresholds(spike_factor=-1.0)


def test_step_with_a_closure_records_the_same_as_without() -> None:
    histories = []
    for use_closure in (False, True):
        model, inputs, targets = regression()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        monitor = StabilityMonitor(optimizer, every=2, names=model, warn=False)
        for _ in range(6):

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                loss = ((model(inputs) - targets) ** 2).mean()
                loss.backward()
                return loss

            if use_closure:
                optimizer.step(closure)  # gradients exist only inside step: the pre-hook cannot see them
            else:
                closure()
                optimizer.step()
        histories.append(monitor.history)
    assert np.isfinite(histories[1]["spike_factor"]["0.weight"][1:]).all()
    np.testing.assert_array_equal(histories[0].values, histories[1].values)


def test_a_diverged_step_is_recorded_without_numpy_warnings() -> None:
    """Weights near float32's largest value: |Δθ| and |θ| both overflow to inf, so |Δθ|/|θ| is inf / inf. The
    monitor records NaN quietly (numpy would warn "invalid value encountered" in the user's log at every
    recorded step of a diverged run)."""
    import warnings

    weight = nn.Parameter(torch.tensor([3e38, -3e38, 1.0]))
    optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=1.0)
    monitor = StabilityMonitor(optimizer, every=1, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            optimizer.zero_grad()
            (weight * torch.tensor([1.0, 1.0, 1.0])).sum().backward()
            optimizer.step()
    ratio = monitor.history["update_param_ratio"]["param_groups[0][0]"]
    assert len(ratio) == 2 and np.isnan(ratio).all()
