"""StabilityGuard: skipped steps change no state, clipped steps against a float64 hand computation, the lr
lowered and restored around schedulers, GradScaler, closures, checkpoint resume, options, events, removal."""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from kadam import KAdam
from kadam.monitor import StabilityEvent, StabilityGuard, StabilityMonitor, StabilityWarning

LR = 1e-2

# (name, optimizer factory): every implementation path of torch's AdamW and of KAdam (k = 2, its defaults)
PATHS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw-loop": lambda params, **kw: torch.optim.AdamW(params, foreach=False, **kw),
    "adamw-foreach": lambda params, **kw: torch.optim.AdamW(params, foreach=True, **kw),
    "adamw-fused": lambda params, **kw: torch.optim.AdamW(params, fused=True, **kw),
    "kadam-loop": lambda params, **kw: KAdam(params, k=2, foreach=False, fused=False, **kw),
    "kadam-foreach": lambda params, **kw: KAdam(params, k=2, foreach=True, **kw),
    "kadam-fused": lambda params, **kw: KAdam(params, k=2, fused=True, **kw),
}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def batch(step: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    inputs = torch.randn(16, 4, generator=generator) * scale
    return inputs, inputs[:, :1].sin()


def assert_same_state(before: Any, after: Any) -> None:
    """Recursive bitwise equality of two state dicts (tensors: same dtype, shape and bits)."""
    if isinstance(before, Tensor):
        assert isinstance(after, Tensor) and before.dtype == after.dtype and before.shape == after.shape
        assert torch.equal(before, after)
    elif isinstance(before, dict):
        assert before.keys() == after.keys()
        for key in before:
            assert_same_state(before[key], after[key])
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after)
        for a, b in zip(before, after):
            assert_same_state(a, b)
    else:
        nan = isinstance(before, float) and math.isnan(before)
        assert before == after or (nan and isinstance(after, float) and math.isnan(after))


# -- 1. skipping -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("trigger", ["nan-gradient", "inf-loss", "outlier-gradient", "outlier-loss"])
def test_a_skipped_step_leaves_the_state_bitwise_unchanged(path: str, trigger: str) -> None:
    model = make_model()
    optimizer = PATHS[path](model.parameters(), lr=LR)
    guard = StabilityGuard(optimizer, names=model, warn=False, outlier_window=3, outlier_factor=10.0)
    for step in range(4):
        inputs, targets = batch(step)
        optimizer.zero_grad()
        loss = (model(inputs) - targets).square().mean()
        loss.backward()
        guard.observe_loss(loss)
        optimizer.step()
    before_state = copy.deepcopy(optimizer.state_dict())
    before_params = [p.detach().clone() for p in model.parameters()]

    inputs, targets = batch(4)
    optimizer.zero_grad()
    loss = (model(inputs) - targets).square().mean()
    loss.backward()
    if trigger == "nan-gradient":
        model[2].weight.grad[0, 3] = math.nan
    elif trigger == "outlier-gradient":
        model[0].bias.grad.mul_(1e4)
    grads = [p.grad for p in model.parameters()]
    guard.observe_loss({"inf-loss": torch.tensor(math.inf), "outlier-loss": loss.detach() * 1e3}.get(trigger, loss))
    optimizer.step()

    assert_same_state(before_state, optimizer.state_dict())
    for before, param in zip(before_params, model.parameters()):
        assert torch.equal(before, param)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))  # handed back after the step
    quantity = "skip_nonfinite" if trigger in ("nan-gradient", "inf-loss") else "skip_outlier"
    assert [e.quantity for e in guard.events if e.quantity.startswith("skip")] == [quantity]
    event = guard.events[-1]
    assert event.source == "guard" and event.step == 5
    if trigger == "nan-gradient":
        assert event.tensor == "2.weight" and math.isnan(event.value)

    # the next step is taken as usual and gets the skipped step's number
    optimizer.zero_grad()
    (model(inputs) - targets).square().mean().backward()
    optimizer.step()
    assert max(float(s["step"]) for s in optimizer.state_dict()["state"].values()) == 5


def test_a_nonfinite_step_is_taken_when_skipping_is_off_and_outliers_then_skipped() -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    guard = StabilityGuard(optimizer, warn=False, skip_nonfinite=False, clip_updates=False)
    loss = model(batch(0)[0]).sum()
    loss.backward()
    model[0].weight.grad[0, 0] = math.inf
    optimizer.step()
    assert not torch.isfinite(model[0].weight).all()
    assert guard.events == [] and guard.state_dict()["grad_norms"] == []


def test_outliers_of_a_new_scale_are_skipped_at_most_max_outlier_skips_times_in_a_row() -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    guard = StabilityGuard(optimizer, warn=False, outlier_window=5, max_outlier_skips=3, clip_updates=False)
    taken = []
    for step in range(16):
        scale = 1.0 if step < 6 else 1e4  # the gradient's scale changes for good at step 6
        inputs, targets = batch(step, scale)
        optimizer.zero_grad()
        (model(inputs) - targets * scale).square().mean().backward()
        before = model[0].weight.detach().clone()
        optimizer.step()
        taken.append(not torch.equal(before, model[0].weight))
    assert taken == [True] * 6 + [False] * 3 + [True] * 7
    assert [e.quantity for e in guard.events] == ["skip_outlier"] * 3 + ["outlier_reset"]
    assert guard.counts["skipped_outlier"] == 3 and guard.counts["outlier_resets"] == 1
    assert len(guard.state_dict()["grad_norms"]) == 5  # refilled from the reset on


def test_the_loss_rule_needs_a_positive_median_and_a_full_window() -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    guard = StabilityGuard(optimizer, warn=False, outlier_window=4, clip_updates=False)

    def step(loss: float) -> None:
        optimizer.zero_grad()
        model(batch(0)[0]).sum().mul(1e-3).backward()
        guard.observe_loss(loss)
        optimizer.step()

    for _ in range(3):
        step(1.0)
    step(100.0)  # window not yet full: taken
    assert guard.counts["skipped_outlier"] == 0
    step(1000.0)  # window [1, 1, 1, 100], median 1: skipped
    assert guard.counts["skipped_outlier"] == 1 and guard.events[-1].value == 1000.0
    negative = StabilityGuard(torch.optim.AdamW(make_model().parameters()), warn=False, outlier_window=2)
    negative._losses.extend([-1.0, -2.0])
    assert negative._skip(negative.optimizer, [], [], 1.0, 1e6) is False  # no multiplicative rule below 0


def test_the_guard_skips_for_an_optimizer_it_cannot_clip_for() -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.raises(ValueError, match="clip_updates"):
        StabilityGuard(optimizer, clip_updates=True)
    guard = StabilityGuard(optimizer, warn=False)  # clipping is off by default
    before = [p.detach().clone() for p in model.parameters()]
    model(batch(0)[0]).sum().backward()
    model[0].bias.grad[0] = math.nan
    optimizer.step()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert guard.counts["skipped_nonfinite"] == 1


# -- 2. update clipping against a hand computation ---------------------------------------------------


class HandAdam:
    """Float64 Adam/AdamW (one level) or k-Adam levels from THEORY §1, with StableAdamW's clipping as the
    guard defines it: r² = mean(x²/max(v̂_n, ε²)), θ_n = (1 − ηλ)θ_{n−1} − (η/max(1, r))u_n."""

    def __init__(
        self,
        params: list[np.ndarray],
        levels: list[tuple[float, float, float, bool]],
        lr: float,
        weight_decay: float,
        decoupled: bool,
        maximize: bool,
        amsgrad: bool = False,
    ) -> None:
        self.params = [p.astype(np.float64).copy() for p in params]
        self.levels, self.lr, self.decay = levels, lr, weight_decay
        self.decoupled, self.maximize, self.amsgrad = decoupled, maximize, amsgrad
        self.m = [[np.zeros_like(p) for _ in levels] for p in params]
        self.v = [[np.zeros(()) if tensor else np.zeros_like(p) for (*_, tensor) in levels] for p in params]
        self.vmax = [np.zeros_like(p) for p in params]
        self.n = 0
        self.ratios: list[list[float]] = []

    def step(self, grads: list[np.ndarray]) -> None:
        self.n += 1
        n, ratios = self.n, []
        for index, grad in enumerate(grads):
            theta = self.params[index]
            x = -grad if self.maximize else grad.copy()
            if self.decay and not self.decoupled:
                x = x + self.decay * theta
            u = x
            for i, (beta, gamma, eps, tensor) in enumerate(self.levels):
                fed = np.mean(u**2) if tensor else u**2
                self.v[index][i] = gamma * self.v[index][i] + (1 - gamma) * fed
                second = self.v[index][i]
                if i == 0 and self.amsgrad:
                    self.vmax[index] = np.maximum(self.vmax[index], second)
                    second = self.vmax[index]
                if i == 0:
                    v_hat = second / (1 - gamma**n)
                    r2 = np.mean(x**2 / np.maximum(v_hat, eps**2)) if not tensor else np.mean(x**2) / max(v_hat, eps**2)
                    ratios.append(math.sqrt(r2))
                self.m[index][i] = beta * self.m[index][i] + (1 - beta) * u
                u = (self.m[index][i] / (1 - beta**n)) / (np.sqrt(second / (1 - gamma**n)) + eps)
            if self.decay and self.decoupled:
                theta = theta * (1 - self.lr * self.decay)
            self.params[index] = theta - self.lr / max(1.0, ratios[-1]) * u
        self.ratios.append(ratios)


def hand_gradients(steps: int, shapes: list[tuple[int, ...]]) -> list[list[np.ndarray]]:
    """Small gradients, then at step 6 a burst in tensor 0 (r > 1 there, not in tensor 1)."""
    rng = np.random.default_rng(0)
    out = []
    for step in range(1, steps + 1):
        grads = [rng.normal(size=s) * 0.1 for s in shapes]
        if step == 6:
            grads[0] = grads[0] * 40.0
        out.append(grads)
    return out


VARIANTS = {
    "decoupled": {"weight_decay": 0.1},
    "coupled": {"weight_decay": 0.1, "coupled": True},
    "maximize": {"weight_decay": 0.1, "maximize": True},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("path", list(PATHS))
def test_a_clipped_step_equals_the_hand_computation(path: str, variant: str) -> None:
    options = dict(VARIANTS[variant])
    coupled = options.pop("coupled", False)
    shapes = [(4, 3), (5,)]
    rng = np.random.default_rng(1)
    start = [rng.normal(size=s) for s in shapes]
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in start]
    kwargs: dict[str, Any] = {"lr": LR, **options}
    kadam = path.startswith("kadam")
    if coupled:
        if kadam:
            kwargs["decoupled_weight_decay"] = False
        else:  # torch's Adam is AdamW with L2 decay in the gradient
            factory = {
                "adamw-loop": {"foreach": False},
                "adamw-foreach": {"foreach": True},
                "adamw-fused": {"fused": True},
            }[path]
            optimizer = torch.optim.Adam(params, **kwargs, **factory)
    if not (coupled and not kadam):
        optimizer = PATHS[path](params, **kwargs)
    levels = [(0.9, 0.999, 1e-8, False)] + ([(0.0, 0.999, 1e-8, True)] if kadam else [])
    hand = HandAdam(start, levels, LR, 0.1, decoupled=not coupled, maximize=options.get("maximize", False))
    guard = StabilityGuard(optimizer, warn=False, skip_outliers=False, clip_updates=True)
    for step, grads in enumerate(hand_gradients(8, shapes), start=1):
        for param, grad in zip(params, grads):
            param.grad = torch.tensor(grad)
        optimizer.step()
        hand.step(grads)
        for param, expected in zip(params, hand.params):
            np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-11, atol=1e-13, err_msg=f"step {step}")
    clipped = {(e.step, e.tensor) for e in guard.events if e.quantity == "clip_update"}
    expected_clips = {
        (n, f"param_groups[0][{int(np.argmax(ratios))}]") for n, ratios in enumerate(hand.ratios, 1) if max(ratios) > 1
    }
    assert (6, "param_groups[0][0]") in clipped and clipped == expected_clips
    assert hand.ratios[5][0] > 2  # the burst is clipped by more than half
    event = next(e for e in guard.events if e.step == 6)
    assert event.value == pytest.approx(hand.ratios[5][0], rel=1e-9) and event.threshold == 1.0


@pytest.mark.parametrize("case", ["amsgrad", "tensor-level-1"])
def test_clipping_reads_amsgrads_maximum_and_a_tensor_mode_level(case: str) -> None:
    shapes = [(4, 3), (5,)]
    start = [np.random.default_rng(2).normal(size=s) for s in shapes]
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in start]
    if case == "amsgrad":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=LR, amsgrad=True, weight_decay=0.1)
        hand = HandAdam(start, [(0.9, 0.999, 1e-8, False)], LR, 0.1, True, False, amsgrad=True)
    else:
        optimizer = KAdam(params, lr=LR, k=2, norm="tensor", weight_decay=0.1)
        hand = HandAdam(start, [(0.9, 0.999, 1e-8, True), (0.0, 0.999, 1e-8, True)], LR, 0.1, True, False)
    guard = StabilityGuard(optimizer, warn=False, skip_outliers=False, clip_updates=True)
    for grads in hand_gradients(8, shapes):
        for param, grad in zip(params, grads):
            param.grad = torch.tensor(grad)
        optimizer.step()
        hand.step(grads)
        for param, expected in zip(params, hand.params):
            np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-11, atol=1e-13)
    assert guard.counts["clipped_tensors"] > 0


@pytest.mark.parametrize("path", ["adamw-loop", "adamw-foreach", "kadam-loop", "kadam-foreach"])
def test_a_complex_parameter_is_clipped_as_its_real_view(path: str) -> None:
    """torch's Adam and KAdam step a complex tensor as its real view (no fused path takes one): so does the guard."""
    rng = np.random.default_rng(3)
    start = rng.normal(size=(3, 2, 2))
    complex_param = torch.view_as_complex(torch.tensor(start)).clone().requires_grad_(True)
    real_param = torch.tensor(start, requires_grad=True)
    guards = []
    for param in (complex_param, real_param):
        guards.append(
            StabilityGuard(
                PATHS[path]([param], lr=LR, weight_decay=0.1), warn=False, skip_outliers=False, clip_updates=True
            )
        )
    for _step, (grad,) in enumerate(hand_gradients(8, [(3, 2, 2)]), start=1):
        complex_param.grad = torch.view_as_complex(torch.tensor(grad)).clone()
        real_param.grad = torch.tensor(grad)
        for guard in guards:
            guard.optimizer.step()
        torch.testing.assert_close(
            torch.view_as_real(complex_param.detach()), real_param.detach(), rtol=1e-12, atol=1e-14
        )
    assert guards[0].counts == guards[1].counts and guards[0].counts["clipped_tensors"] > 0


@pytest.mark.parametrize("path", ["adamw-loop", "adamw-foreach", "kadam-loop", "kadam-fused"])
def test_bfloat16_parameters_are_guarded_in_float32(path: str) -> None:
    torch.manual_seed(0)
    param = torch.randn(6, 5, dtype=torch.bfloat16, requires_grad=True)
    guard = StabilityGuard(PATHS[path]([param], lr=LR), warn=False, clip_updates=True)
    for _step, (grad,) in enumerate(hand_gradients(8, [(6, 5)]), start=1):
        param.grad = torch.tensor(grad, dtype=torch.bfloat16)
        guard.optimizer.step()
    assert torch.isfinite(param).all() and param.dtype == torch.bfloat16
    assert any(e.step == 6 and e.quantity == "clip_update" for e in guard.events)


def test_clipping_off_leaves_the_optimizers_step() -> None:
    plain, guarded = make_model(), make_model()
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=LR)
    opt_guarded = torch.optim.AdamW(guarded.parameters(), lr=LR)
    guard = StabilityGuard(opt_guarded, warn=False, clip_updates=False)
    for step in range(6):
        for model, optimizer in ((plain, opt_plain), (guarded, opt_guarded)):
            optimizer.zero_grad()
            inputs, targets = batch(step, 30.0 if step == 4 else 1.0)
            (model(inputs) - targets).square().mean().backward()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), guarded.parameters()))
    assert guard.events == []


# -- 3. lowering the lr above the edge ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["adamw-loop", "adamw-fused", "kadam-foreach", "kadam-fused"])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_the_lr_is_lowered_for_the_steps_above_the_edge_and_the_schedule_kept(path: str, tensor_lr: bool) -> None:
    if tensor_lr and path == "kadam-foreach":
        path = "kadam-loop"  # torch's foreach Adam takes a tensor lr only with capturable; KAdam's loop does
    guarded, reference = make_model(), make_model()
    lr: Any = torch.tensor(LR) if tensor_lr else LR
    opt_guarded = PATHS[path](guarded.parameters(), lr=lr)
    opt_reference = PATHS[path](reference.parameters(), lr=torch.tensor(LR) if tensor_lr else LR)

    def schedule(step: int) -> float:
        return 0.9**step

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt_guarded, schedule)
    monitor = SimpleNamespace(above_edge=False)
    guard = StabilityGuard(opt_guarded, monitor=monitor, warn=False, clip_updates=False, skip_outliers=False)
    above = {3, 4, 5, 8}
    for step in range(10):
        monitor.above_edge = step in above
        lr_now = LR * schedule(step)
        reference_lr = lr_now * 0.5 if step in above else lr_now
        group = opt_reference.param_groups[0]
        if tensor_lr:
            group["lr"].fill_(reference_lr)
        else:
            group["lr"] = reference_lr
        for model, optimizer in ((guarded, opt_guarded), (reference, opt_reference)):
            optimizer.zero_grad()
            inputs, targets = batch(step)
            (model(inputs) - targets).square().mean().backward()
        opt_guarded.step()
        opt_reference.step()
        assert float(opt_guarded.param_groups[0]["lr"]) == pytest.approx(lr_now, rel=1e-6)  # the user's value back
        scheduler.step()
        for a, b in zip(guarded.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert guard.lowering == (step in above)
    if tensor_lr:
        assert opt_guarded.param_groups[0]["lr"] is lr  # scaled and restored in place
    assert [(e.quantity, e.step) for e in guard.events] == [
        ("lr_lowered", 4),
        ("lr_restored", 7),
        ("lr_lowered", 9),
        ("lr_restored", 10),
    ]
    assert guard.counts["lowered_steps"] == 4 and all(e.source == "guard" for e in guard.events)


def test_lowering_is_bitwise_the_lowered_lr_and_off_without_lower_lr() -> None:
    guarded, reference, unlowered = make_model(), make_model(), make_model()
    opts = [torch.optim.AdamW(m.parameters(), lr=LR) for m in (guarded, reference, unlowered)]
    monitor = SimpleNamespace(above_edge=True)
    StabilityGuard(opts[0], monitor=monitor, warn=False, clip_updates=False)
    StabilityGuard(opts[2], monitor=monitor, warn=False, clip_updates=False, lower_lr=False)
    opts[1].param_groups[0]["lr"] = LR * 0.5
    for step in range(3):
        for model, optimizer in zip((guarded, reference, unlowered), opts):
            optimizer.zero_grad()
            (model(batch(step)[0]) - batch(step)[1]).square().mean().backward()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(guarded.parameters(), reference.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(guarded.parameters(), unlowered.parameters()))
    assert opts[0].param_groups[0]["lr"] == LR


def test_lowering_alone_measures_nothing() -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    monitor = SimpleNamespace(above_edge=True)
    guard = StabilityGuard(
        optimizer, monitor=monitor, warn=False, clip_updates=False, skip_nonfinite=False, skip_outliers=False
    )
    model(batch(0)[0]).sum().backward()
    model[0].bias.grad[0] = math.nan  # not looked at
    optimizer.step()
    assert torch.isnan(model[0].bias).any() and optimizer.param_groups[0]["lr"] == LR
    assert [e.quantity for e in guard.events] == ["lr_lowered"] and guard.counts["lowered_steps"] == 1


def test_the_guard_holds_the_update_ratio_at_the_monitors_rise_threshold() -> None:
    """s <- min(1, a / x) after each recorded step: x the monitor's update excess, a the multiplier the step used."""
    param = nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.AdamW([param], lr=LR, weight_decay=0.0)
    monitor = SimpleNamespace(above_edge=False, update_excess=None)
    guard = StabilityGuard(optimizer, monitor=monitor, warn=False, skip_outliers=False)
    used = []
    # excess x measured at step n (with the multiplier that step used) -> multiplier of step n + 1
    for step, excess in enumerate([4.0, 1.0, 0.5, 0.1, None], start=1):
        before = param.detach().clone()
        param.grad = torch.ones(4)  # a constant gradient: Adam's update is 1 per coordinate, the change is the lr
        monitor.update_excess = None if excess is None else (step, excess)
        optimizer.step()
        used.append(float((before - param.detach()).mean()) / LR)
        assert optimizer.param_groups[0]["lr"] == LR
    assert used == pytest.approx([1.0, 0.25, 0.25, 0.5, 1.0], rel=1e-5)
    assert [e.quantity for e in guard.events] == ["lr_lowered", "lr_restored"]
    assert guard.events[0].value == pytest.approx(0.25) and guard.counts["lowered_steps"] == 3
    stale = SimpleNamespace(above_edge=False, update_excess=(1, 4.0))  # a record of another step is not read
    other = StabilityGuard(torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=LR), monitor=stale, warn=False)
    other.optimizer.param_groups[0]["params"][0].grad = torch.ones(2)
    other.optimizer.step()
    other.optimizer.step()
    assert other.lowering and other.state_dict()["rise_scale"] == 0.25  # read after step 1 only (not 0.25 / 4)


def test_a_step_that_raises_between_the_hooks_leaves_the_users_lr() -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    guard = StabilityGuard(optimizer, monitor=SimpleNamespace(above_edge=True), warn=False, clip_updates=False)
    model(batch(0)[0]).sum().backward()
    guard._pre_step(optimizer, (optimizer,), {})  # as if step() raised after the pre-hook
    assert optimizer.param_groups[0]["lr"] == LR * 0.5
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == LR
    guard._pre_step(optimizer, (optimizer,), {})
    guard.remove()
    assert optimizer.param_groups[0]["lr"] == LR


def test_the_guard_reads_a_real_monitor() -> None:
    model = make_model()
    optimizer = KAdam(model.parameters(), lr=LR)
    monitor = StabilityMonitor(optimizer, names=model, every=1, warn=False)
    guard = StabilityGuard(optimizer, monitor=monitor, names=model, warn=False)
    for step in range(5):
        optimizer.zero_grad()
        (model(batch(step)[0]) - batch(step)[1]).square().mean().backward()
        optimizer.step()
    assert guard.lowering == bool(getattr(monitor, "above_edge", False))
    with pytest.raises(ValueError, match="monitor"):
        StabilityGuard(torch.optim.AdamW(make_model().parameters()), monitor=monitor)


# -- 4. GradScaler, closures, checkpoints ------------------------------------------------------------


@pytest.mark.parametrize("path", ["adamw-loop", "adamw-fused", "kadam-foreach", "kadam-fused"])
def test_gradscaler_steps_as_an_unscaled_run_and_keeps_its_own_skips(path: str) -> None:
    runs = {}
    for scaled in (False, True):
        model = make_model()
        optimizer = PATHS[path](model.parameters(), lr=LR)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=scaled)
        guard = StabilityGuard(optimizer, warn=False, outlier_window=4)
        for step in range(12):
            inputs, targets = batch(step)
            optimizer.zero_grad()
            loss = (model(inputs) - targets).square().mean() * (1e3 if step == 8 else 1.0)  # an outlier
            scaler.scale(loss).backward()
            if step == 5:
                model[0].weight.grad[0, 0] = math.inf  # GradScaler's skip (scaled run) or the guard's
            scaler.step(optimizer)
            scaler.update()
        runs[scaled] = (model, guard)
    (plain, plain_guard), (scaled_model, scaled_guard) = runs[False], runs[True]
    for a, b in zip(plain.parameters(), scaled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        scaled_guard.state_dict()["grad_norms"], plain_guard.state_dict()["grad_norms"], rtol=1e-6
    )
    assert [e.quantity for e in plain_guard.events if e.quantity.startswith("skip")] == [
        "skip_nonfinite",
        "skip_outlier",
    ]
    assert [e.quantity for e in scaled_guard.events if e.quantity.startswith("skip")] == ["skip_outlier"]
    assert {e.step for e in scaled_guard.events if e.quantity == "clip_update"} == {
        e.step for e in plain_guard.events if e.quantity == "clip_update"
    }


@pytest.mark.parametrize("keyword", [False, True])
def test_a_closure_is_evaluated_once_and_its_loss_read(keyword: bool) -> None:
    model = make_model()
    optimizer = KAdam(model.parameters(), lr=LR)
    guard = StabilityGuard(optimizer, warn=False)
    calls = []

    def closure() -> Tensor:
        calls.append(1)
        optimizer.zero_grad()
        inputs, targets = batch(len(calls))
        loss = (model(inputs) - targets).square().mean()
        loss.backward()
        return loss * (math.nan if len(calls) == 3 else 1.0)

    for step in range(4):
        before = model[0].weight.detach().clone()
        loss = optimizer.step(closure=closure) if keyword else optimizer.step(closure)
        assert len(calls) == step + 1 and isinstance(loss, Tensor)
        assert torch.equal(before, model[0].weight) == (step == 2)
    skips = [e for e in guard.events if e.quantity.startswith("skip")]
    assert [(e.quantity, e.tensor, e.step) for e in skips] == [("skip_nonfinite", "*", 3)]  # the loss's


def event_key(event: StabilityEvent) -> tuple[Any, ...]:
    """An event's fields with its value as text (NaN != NaN)."""
    return (event.tensor, event.step, event.quantity, repr(event.value), event.threshold, event.explanation)


def guarded_run(
    path: str, steps: range, state: dict[str, Any] | None = None, load_guard: bool = True
) -> tuple[nn.Module, dict[str, Any], StabilityGuard]:
    """Steps ``steps`` of a guarded, scheduled run with a NaN gradient, outliers and a stretch above the
    edge; starts from ``state`` (the state dicts saved by an earlier call) when given."""
    model = make_model()
    optimizer = PATHS[path](model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.7)
    monitor = SimpleNamespace(above_edge=False)
    guard = StabilityGuard(optimizer, monitor=monitor, warn=False, outlier_window=10, outlier_factor=5.0)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if load_guard:
            guard.load_state_dict(state["guard"])
    for step in steps:
        monitor.above_edge = 20 <= step < 35
        inputs, targets = batch(step)
        optimizer.zero_grad()
        loss = (model(inputs) - targets).square().mean() * (300.0 if step in (25, 40) else 1.0)  # outliers
        loss.backward()
        if step == 12:
            model[2].bias.grad.fill_(math.nan)
        guard.observe_loss(loss)
        optimizer.step()
        scheduler.step()
    saved = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "guard": guard.state_dict(),
        },
        saved,
    )
    saved.seek(0)
    return model, torch.load(saved, weights_only=True), guard


@pytest.mark.parametrize("path", list(PATHS))
def test_a_resumed_run_takes_the_uninterrupted_runs_steps_bitwise(path: str) -> None:
    whole, _, whole_guard = guarded_run(path, range(50))
    _, state, first_guard = guarded_run(path, range(30))
    resumed, _, resumed_guard = guarded_run(path, range(30, 50), state)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert resumed_guard.counts == whole_guard.counts
    assert [event_key(e) for e in first_guard.events + resumed_guard.events] == [
        event_key(e) for e in whole_guard.events
    ]
    assert {"skip_nonfinite", "skip_outlier", "lr_lowered", "lr_restored"} <= {e.quantity for e in whole_guard.events}
    assert sum(e.quantity == "skip_outlier" for e in first_guard.events) == 1
    assert sum(e.quantity == "skip_outlier" for e in resumed_guard.events) == 1  # step 40 needs the saved window
    fresh, _, _ = guarded_run(path, range(30, 50), state, load_guard=False)
    assert not all(torch.equal(a, b) for a, b in zip(whole.parameters(), fresh.parameters()))


def test_load_state_dict_rejects_another_dict_and_trims_longer_windows() -> None:
    guard = StabilityGuard(torch.optim.AdamW(make_model().parameters()), outlier_window=3)
    with pytest.raises(ValueError, match="grad_norms"):
        guard.load_state_dict({"losses": []})
    state = StabilityGuard(torch.optim.AdamW(make_model().parameters())).state_dict()
    state["grad_norms"] = [1.0, 2.0, 3.0, 4.0, 5.0]
    guard.load_state_dict(state)
    assert guard.state_dict()["grad_norms"] == [3.0, 4.0, 5.0]
    state["counts"] = "none"
    with pytest.raises(ValueError, match="malformed"):
        guard.load_state_dict(state)


# -- 5. options, events, removal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value", "accepted"),
    [
        ("outlier_factor", 1.0, "> 1"),
        ("outlier_factor", math.inf, "> 1"),
        ("outlier_factor", True, "> 1"),
        ("outlier_window", 0, ">= 1"),
        ("outlier_window", 2.5, ">= 1"),
        ("max_outlier_skips", 0, ">= 1 or None"),
        ("lr_factor", 1.0, "(0, 1)"),
        ("lr_factor", 0.0, "(0, 1)"),
        ("quiet_steps", -1, ">= 0"),
        ("clip_updates", 1, "True or False"),
        ("skip_nonfinite", None, "True or False"),
        ("skip_outliers", "yes", "True or False"),
        ("lower_lr", 0, "True or False"),
        ("on_event", 3, "callable"),
        ("monitor", object(), "above_edge"),
    ],
)
def test_options_are_validated_naming_the_argument_and_its_range(argument: str, value: Any, accepted: str) -> None:
    with pytest.raises(ValueError, match=rf"{argument}.*{__import__('re').escape(accepted)}"):
        StabilityGuard(torch.optim.AdamW(make_model().parameters()), **{argument: value})
    with pytest.raises(ValueError, match="optimizer"):
        StabilityGuard(make_model())  # type: ignore[arg-type]


def test_events_warn_once_per_quiet_steps_and_reach_on_event() -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    seen = []
    guard = StabilityGuard(optimizer, names=model, on_event=seen.append, quiet_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            optimizer.zero_grad()
            model(batch(0)[0]).sum().backward()
            model[0].weight.grad[1, 1] = math.nan
            optimizer.step()  # the warning's line
    assert len(guard.events) == 5 and seen == guard.events
    # every skipped step has number 1 (none is taken): one warning within quiet_steps
    stability = [w for w in caught if issubclass(w.category, StabilityWarning)]
    assert len(stability) == 1 and stability[0].filename == __file__
    assert "0.weight" in str(stability[0].message) and "skipped" in str(stability[0].message)


def test_remove_takes_the_hooks_off_and_the_guard_is_a_context_manager() -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    with StabilityGuard(optimizer, warn=False) as guard:
        assert guard.attached
    assert not guard.attached
    model(batch(0)[0]).sum().backward()
    model[0].bias.grad[0] = math.nan
    optimizer.step()
    assert torch.isnan(model[0].bias).any() and guard.events == []
    guard.remove()  # idempotent
