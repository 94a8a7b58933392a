"""The generic checks torch runs on its own optimizers (ported from PyTorch's test/test_optim.py),
applied to KAdam: what a torch user expects of any optimizer (issue 2)."""

import copy

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from kadam import KAdam
from tests.optimizer.helpers import data, flat, make_mlp, train

IMPLEMENTATIONS = [False, True]  # foreach


@pytest.mark.parametrize("foreach", IMPLEMENTATIONS)
def test_step_without_gradients_is_a_no_op(foreach):
    model = make_mlp()
    before = flat(model).clone()
    optimizer = KAdam(model.parameters(), foreach=foreach)
    optimizer.step()
    assert torch.equal(flat(model), before)
    assert len(optimizer.state) == 0


@pytest.mark.parametrize("foreach", IMPLEMENTATIONS)
def test_parameters_without_grad_are_skipped_and_get_no_state(foreach):
    model = make_mlp()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    optimizer = KAdam(model.parameters(), lr=1e-2, foreach=foreach)
    train(model, optimizer, 3)
    assert torch.equal(frozen, before)
    assert frozen not in optimizer.state
    assert all(p in optimizer.state for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("foreach", IMPLEMENTATIONS)
def test_param_group_lr_and_weight_decay_are_per_group(foreach):
    model = make_mlp()
    still, moving = model[0].weight, model[2].weight
    before_still, before_moving = still.clone(), moving.clone()
    optimizer = KAdam(
        [{"params": [still], "lr": 0.0, "weight_decay": 0.5}, {"params": [moving], "weight_decay": 0.0}],
        lr=1e-2,
        foreach=foreach,
    )
    train(model, optimizer, 3)
    assert torch.equal(still, before_still)  # lr = 0 also switches decoupled decay off: (1 - 0·λ) = 1
    assert not torch.equal(moving, before_moving)


def test_weight_decay_alone_shrinks_by_one_minus_lr_lambda():
    param = nn.Parameter(torch.full((4,), 2.0, dtype=torch.float64))
    optimizer = KAdam([param], lr=0.1, weight_decay=0.5, k=2)
    param.grad = torch.zeros_like(param)
    optimizer.step()  # zero gradient: every level outputs 0 / (0 + eps) = 0
    assert torch.allclose(param, torch.full((4,), 2.0 * (1 - 0.1 * 0.5), dtype=torch.float64), rtol=0, atol=0)


def test_add_param_group_trains_the_new_group_with_its_own_hyperparameters():
    model = make_mlp()
    optimizer = KAdam(model[0].parameters(), lr=1e-2, k=2)
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 3e-3, "k": 3, "meta_norm": "elementwise"})
    reference_model = make_mlp()
    reference = KAdam(
        [
            {"params": reference_model[0].parameters()},
            {"params": reference_model[2].parameters(), "lr": 3e-3, "k": 3, "meta_norm": "elementwise"},
        ],
        lr=1e-2,
        k=2,
    )
    assert torch.equal(train(model, optimizer, 5), train(reference_model, reference, 5))
    assert optimizer.state[model[2].weight]["exp_avg_sq_3"].shape == model[2].weight.shape


def test_closure_is_called_once_and_its_loss_returned():
    model = make_mlp()
    optimizer = KAdam(model.parameters())
    inputs, targets = data(torch.float32)
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = ((model(inputs) - targets) ** 2).mean()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert len(calls) == 1 and torch.is_tensor(loss)
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_step_hooks_run_in_order():
    model = make_mlp()
    optimizer = KAdam(model.parameters())
    order = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: order.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: order.append("post"))
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: order.append("global pre"))
    try:
        train(model, optimizer, 1)
    finally:
        handle.remove()
    assert order == ["global pre", "pre", "post"]


def test_repr_is_readable():
    text = repr(KAdam(make_mlp().parameters(), k=3))
    assert text.startswith("KAdam (") and "k: 3" in text and "meta_norm: ('tensor', 'tensor')" in text


@pytest.mark.parametrize(
    "scheduler_factory",
    [
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=20),  # also cycles betas[0]
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20),
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5),
    ],
)
def test_lr_schedulers_drive_kadam_as_they_drive_adamw(scheduler_factory):
    """At k = 1 a scheduled KAdam run equals a scheduled AdamW run, whatever the scheduler touches."""
    kadam_model, adamw_model = make_mlp(), make_mlp()
    expected = train(adamw_model, torch.optim.AdamW(adamw_model.parameters(), lr=1e-3), 20, scheduler_factory)
    actual = train(kadam_model, KAdam(kadam_model.parameters(), lr=1e-3, k=1), 20, scheduler_factory)
    assert torch.equal(actual, expected)


def test_reduce_lr_on_plateau():
    model = make_mlp()
    optimizer = KAdam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
    for _ in range(3):
        scheduler.step(1.0)  # a loss that never improves
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**2)


def test_deepcopy_continues_identically():
    model = make_mlp()
    optimizer = KAdam(model.parameters(), lr=1e-2)
    train(model, optimizer, 5)
    model_copy = copy.deepcopy(model)
    optimizer_copy = KAdam(model_copy.parameters(), lr=1e-2)
    optimizer_copy.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    whole_copy = copy.deepcopy(optimizer)  # the optimizer object itself deep-copies too
    assert whole_copy.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    assert torch.equal(train(model_copy, optimizer_copy, 5, seed=3), train(model, optimizer, 5, seed=3))


def test_grad_scaler_matches_unscaled_training_and_skips_inf_steps():
    """Scaling by a power of two is exact, so a GradScaler run equals the plain run bit for bit."""
    plain_model, scaled_model = make_mlp(), make_mlp()
    expected = train(plain_model, KAdam(plain_model.parameters(), lr=1e-2), 5)
    optimizer = KAdam(scaled_model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    inputs, targets = data(torch.float32)
    for _ in range(5):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
            loss = ((scaled_model(inputs) - targets) ** 2).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert torch.equal(flat(scaled_model), expected)

    state_before = copy.deepcopy(optimizer.state_dict())
    before = flat(scaled_model).clone()
    optimizer.zero_grad()
    scaler.scale(scaled_model(inputs).sum() * float("inf")).backward()
    scaler.step(optimizer)
    assert torch.equal(flat(scaled_model), before)
    assert optimizer.state_dict()["state"][0]["step"] == state_before["state"][0]["step"]


def test_autocast_bfloat16_training_runs_and_learns():
    model = make_mlp()
    optimizer = KAdam(model.parameters(), lr=1e-2)
    inputs, targets = data(torch.float32)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = ((model(inputs) - targets) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("foreach", IMPLEMENTATIONS)
def test_complex_parameters_follow_torch_adamw_and_their_real_view(foreach):
    """Complex tensors are optimized as torch does: as their real view (real and imaginary parts)."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, dtype=torch.complex128, generator=generator)
    grads = [torch.randn(4, 3, dtype=torch.complex128, generator=generator) for _ in range(20)]

    def run(make_optimizer, as_real):
        param = nn.Parameter(torch.view_as_real(start).clone() if as_real else start.clone())
        optimizer = make_optimizer([param])
        for g in grads:
            param.grad = torch.view_as_real(g).clone() if as_real else g.clone()
            optimizer.step()
        return torch.view_as_complex(param.detach()) if as_real else param.detach()

    torch_result = run(lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=foreach), False)
    assert torch.equal(run(lambda p: KAdam(p, lr=1e-2, k=1, foreach=foreach), False), torch_result)
    for meta_norm in ("tensor", "elementwise"):
        complex_run = run(lambda p: KAdam(p, lr=1e-2, k=2, meta_norm=meta_norm, foreach=foreach), False)
        real_run = run(lambda p: KAdam(p, lr=1e-2, k=2, meta_norm=meta_norm, foreach=foreach), True)
        torch.testing.assert_close(complex_run, real_run, rtol=1e-12, atol=1e-12)


def test_per_level_hyperparameters_inside_a_param_group():
    """A group may carry per-level sequences, as ZeroRedundancyOptimizer copies constructor args into groups."""
    per_level = dict(betas=[(0.9, 0.999), (0.5, 0.99)], norm=["elementwise", "elementwise"], eps=[1e-8, 1e-6])
    model, reference_model = make_mlp(), make_mlp()
    optimizer = KAdam([{"params": model.parameters(), **per_level}], lr=1e-2, k=2)
    reference = KAdam(reference_model.parameters(), lr=1e-2, k=2, **per_level)
    assert torch.equal(train(model, optimizer, 5), train(reference_model, reference, 5))
    assert optimizer.state[model[0].weight]["exp_avg_sq_2"].shape == model[0].weight.shape


@pytest.mark.parametrize(
    "implementation", [{"foreach": False}, {"foreach": True}, {"fused": True}], ids=["loop", "foreach", "fused"]
)
@pytest.mark.parametrize("k,norm", [(2, "elementwise"), (1, "tensor"), (3, "tensor")])
def test_zero_size_parameter_with_tensor_mode_levels(implementation, k, norm):
    """An empty tensor's mean of squares is taken as 0: its state stays finite, the others are unaffected."""
    model, reference_model = make_mlp(), make_mlp()
    empty = nn.Parameter(torch.zeros(0, 4))
    optimizer = KAdam([*model.parameters(), empty], lr=1e-2, k=k, norm=norm, **implementation)
    reference = KAdam(reference_model.parameters(), lr=1e-2, k=k, norm=norm, **implementation)
    inputs, targets = data(torch.float32)
    for _ in range(3):
        for opt, net in ((optimizer, model), (reference, reference_model)):
            opt.zero_grad()
            ((net(inputs) - targets) ** 2).mean().backward()
        empty.grad = torch.zeros(0, 4)
        optimizer.step()
        reference.step()
    assert all(value.isfinite().all() for value in optimizer.state[empty].values())
    assert torch.equal(flat(model), flat(reference_model))
