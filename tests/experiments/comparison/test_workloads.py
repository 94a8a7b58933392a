"""The comparison's new workloads: the GPT with and without LayerNorm, and the noisy quadratic model."""

import pytest
import torch

from kadam.experiments.workloads.gpt import GPT, build_gpt_task
from kadam.experiments.workloads.noisy_quadratic import build_noisy_quadratic_task, curvatures

TINY_GPT = {"corpus_chars": 5_000, "context": 16, "width": 16, "heads": 2, "layers": 2, "evaluation_windows": 8}


def _model(task, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return task.make_model()


def test_gpt_without_layernorm_shares_the_initialisation_where_the_architectures_agree():
    with_norm, without = build_gpt_task(layer_norm=True, **TINY_GPT), build_gpt_task(layer_norm=False, **TINY_GPT)
    normed, plain = dict(_model(with_norm, 0).named_parameters()), dict(_model(without, 0).named_parameters())
    assert not any("norm" in name for name in plain)
    assert set(plain) < set(normed)
    for name, value in plain.items():
        torch.testing.assert_close(value, normed[name], rtol=0, atol=0)
    assert with_norm.name == "gpt" and without.name == "gpt-noln"


def test_gpt_is_causal_and_predicts_every_position():
    model = GPT(vocab_size=11, context=8, width=16, heads=2, layers=1)
    tokens = torch.randint(11, (3, 8), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (3, 8, 11)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    torch.testing.assert_close(model(changed)[:, :-1], logits[:, :-1])  # the future does not leak


def test_gpt_task_splits_and_bad_sizes():
    task = build_gpt_task(**TINY_GPT)
    inputs, targets = task.sample_batch(torch.Generator().manual_seed(0), 4)
    assert inputs.shape == targets.shape == (4, 16)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    with pytest.raises(ValueError, match="width must be a multiple of heads"):
        GPT(10, 8, width=10, heads=3)
    with pytest.raises(ValueError, match="context must be an integer"):
        build_gpt_task(**{**TINY_GPT, "context": 0})


def test_noisy_quadratic_gradient_is_curvature_times_theta_plus_the_sampled_noise():
    task = build_noisy_quadratic_task(dimension=6)
    model = _model(task, 0)
    noise, _ = task.sample_batch(torch.Generator().manual_seed(1), batch_size=4)
    value = task.loss(model(noise), noise)
    value.backward()
    torch.testing.assert_close(model.theta.grad, curvatures(6) * model.theta.detach() + noise)
    exact = 0.5 * (curvatures(6) * model.theta.detach() ** 2).sum()
    assert task.evaluate(model, "test")["loss"] == pytest.approx(float(exact))
    assert float(value.detach()) == pytest.approx(float(exact))  # the training curve records the exact loss
    assert task.evaluate(model, "validation") == task.evaluate(model, "test")


def test_noisy_quadratic_noise_has_the_documented_variance():
    task = build_noisy_quadratic_task(dimension=4, curvature_power=1.0)
    generator = torch.Generator().manual_seed(0)
    samples = torch.stack([task.sample_batch(generator, 8)[0] for _ in range(20_000)])
    torch.testing.assert_close(samples.var(dim=0), curvatures(4) / 8, rtol=0.05, atol=0)
    with pytest.raises(ValueError, match="dimension"):
        build_noisy_quadratic_task(dimension=0)
