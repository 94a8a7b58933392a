"""The context arms: Muon on the hidden matrices with AdamW on the rest, schedule-free AdamW (warmup without
decay, evaluated at its averaged point) and AdamW with β2 = β1, each checked against torch or the package run
by hand."""

import pytest
import torch

from kadam.experiments.comparison.protocol import (
    ARMS,
    MuonWithAdamW,
    _ScheduleAndClock,
    arm_hyperparameters,
    build_workload,
    hidden_matrices,
    lr_multiplier,
    make_arm_optimizer,
    train_trial,
)

NQM = {"dimension": 20}
GPT = {"corpus_chars": 5_000, "context": 8, "width": 16, "heads": 2, "layers": 1, "evaluation_windows": 8}
HP = {"lr": 0.01, "beta": 0.9, "gamma": 0.99, "weight_decay": 0.01, "warmup_fraction": 0.2}


def _model(workload, sizes, seed=0):
    task = build_workload(workload, **sizes)
    torch.manual_seed(seed)
    return task, task.make_model()


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    _, model = _model("gpt", GPT)
    hidden = hidden_matrices(model)
    names = {name for name, p in model.named_parameters() if any(p is h for h in hidden)}
    assert names == {
        "blocks.0.qkv.weight",
        "blocks.0.attention_out.weight",
        "blocks.0.mlp.0.weight",
        "blocks.0.mlp.2.weight",
    }  # not the embeddings, the head, biases or LayerNorm
    optimizer = make_arm_optimizer("muon-adamw", model.parameters(), 0.01, 0.9, 0.99, 0.01, model=model)
    assert isinstance(optimizer.muon, torch.optim.Muon) and isinstance(optimizer.adamw, torch.optim.AdamW)
    assert {id(p) for p in optimizer.muon.param_groups[0]["params"]} == {id(p) for p in hidden}
    everything = [p for group in optimizer.param_groups for p in group["params"]]
    assert sorted(map(id, everything)) == sorted(id(p) for p in model.parameters())


def test_muon_with_adamw_steps_both_as_torch_does_under_the_schedule():
    task, model = _model("gpt", GPT)
    _, reference_model = _model("gpt", GPT)
    optimizer = MuonWithAdamW(model, 0.02, 0.9, 0.99, 0.01)
    hidden_ids = {id(p) for p in hidden_matrices(reference_model)}
    muon = torch.optim.Muon(
        [p for p in reference_model.parameters() if id(p) in hidden_ids],
        lr=0.02,
        weight_decay=0.01,
        momentum=0.9,
        adjust_lr_fn="match_rms_adamw",
    )
    adamw = torch.optim.AdamW(
        [p for p in reference_model.parameters() if id(p) not in hidden_ids],
        lr=0.02,
        betas=(0.9, 0.99),
        weight_decay=0.01,
        foreach=False,
    )
    clock = _ScheduleAndClock(optimizer, 0.02, 4, 0.5, 0.0, window=1)
    generator = torch.Generator().manual_seed(0)
    for step in range(1, 5):
        inputs, targets = task.sample_batch(generator, 4)
        for net, optimizers in ((model, [optimizer]), (reference_model, [muon, adamw])):
            loss = task.loss(net(inputs), targets)
            for o in optimizers:
                o.zero_grad()
            loss.backward()
            if net is reference_model:
                for o in optimizers:
                    for group in o.param_groups:
                        group["lr"] = 0.02 * lr_multiplier(step, 4, 0.5)
            for o in optimizers:
                o.step()
    clock.remove()
    for p, q in zip(model.parameters(), reference_model.parameters()):
        assert torch.equal(p, q)
    assert clock.learning_rates == [0.02 * lr_multiplier(t, 4, 0.5) for t in range(1, 5)]


def test_muon_refuses_a_model_without_hidden_matrices():
    _, model = _model("noisy-quadratic", NQM)
    with pytest.raises(ValueError, match="2-D hidden matrices"):
        make_arm_optimizer("muon-adamw", model.parameters(), 0.01, 0.9, 0.99, 0.0, model=model)
    with pytest.raises(ValueError, match="needs model="):
        make_arm_optimizer("muon-adamw", model.parameters(), 0.01, 0.9, 0.99, 0.0)


def test_schedule_free_runs_the_warmup_without_decay_and_is_evaluated_at_its_average():
    import schedulefree

    steps, batch = 30, 8
    run = train_trial("gpt", "schedulefree-adamw", HP, steps, batch, seed=2, sizes=GPT, curve_points=5)
    task, model = _model("gpt", GPT, seed=2)
    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=HP["lr"], betas=(0.9, 0.99), weight_decay=0.01)
    optimizer.train()
    generator = torch.Generator().manual_seed(2)
    warmup = round(HP["warmup_fraction"] * steps)
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = HP["lr"] * min(1.0, step / warmup)  # the package's warmup_steps, then constant
        inputs, targets = task.sample_batch(generator, batch)
        loss = task.loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    at_y = task.evaluate(model, "validation")["loss"]
    optimizer.eval()
    assert run["validation_loss"] == task.evaluate(model, "validation")["loss"]
    assert run["validation_loss"] != at_y  # the averaged point x, not the gradient point y
    assert [lr_multiplier(t, 10, 0.2, decay=False) for t in (1, 2, 3, 10)] == [0.5, 1.0, 1.0, 1.0]


def test_equal_betas_arm_is_adamw_with_gamma_tied_to_beta():
    point = arm_hyperparameters("adamw-equal-betas", HP)
    assert point["gamma"] == point["beta"] == 0.9 and arm_hyperparameters("adamw", HP) == HP
    assert ARMS["adamw-equal-betas"].default_gamma == ARMS["adamw-equal-betas"].default_beta
    tied = train_trial("noisy-quadratic", "adamw-equal-betas", point, 20, 8, seed=1, sizes=NQM, curve_points=5)
    adamw = train_trial("noisy-quadratic", "adamw", point, 20, 8, seed=1, sizes=NQM, curve_points=5)
    assert tied["curve"] == adamw["curve"] and tied["test_loss"] == adamw["test_loss"]
    with pytest.raises(ValueError, match="ties gamma to beta"):
        train_trial("noisy-quadratic", "adamw-equal-betas", HP, 5, 4, seed=0, sizes=NQM)
