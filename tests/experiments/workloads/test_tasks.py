"""The offline tasks: data splits, models, batch sampling and evaluation (kadam.experiments.workloads)."""

import random
import socket

import numpy as np
import pytest
import torch
from torch import nn

from kadam.experiments.workloads import (
    TASKS,
    CharTransformer,
    DigitsCNN,
    build_task,
    char_corpus,
    digits_splits,
    mnist1d_splits,
    parameter_count,
)


def test_char_corpus_is_pydoc_topics_in_sorted_order():
    from pydoc_data.topics import topics

    text = char_corpus()
    first = sorted(topics)[0]
    assert text.startswith(topics[first])
    assert len(text) == sum(len(v) for v in topics.values()) + 2 * (len(topics) - 1)


def test_mnist1d_is_generated_offline_and_leaves_global_rngs_alone(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    mnist1d_splits.cache_clear()
    np.random.seed(123)
    random.seed(123)
    expected_numpy, expected_python = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    splits = mnist1d_splits()
    assert (np.random.rand(), random.random()) == (expected_numpy, expected_python)
    assert [tuple(splits[s].inputs.shape) for s in ("train", "validation", "test")] == [
        (3200, 40),
        (800, 40),
        (1000, 40),
    ]
    assert set(splits["train"].targets.tolist()) == set(range(10))


def test_digits_splits_are_disjoint_stratified_and_complete():
    splits = digits_splits()
    sizes = [len(splits[s].targets) for s in ("train", "validation", "test")]
    assert sum(sizes) == 1797 and sizes[0] == pytest.approx(0.6 * 1797, abs=1)
    flattened = {s: {tuple(x.flatten().tolist()) for x in splits[s].inputs} for s in splits}
    # digits holds a few duplicated images; the splits share at most those.
    assert len(flattened["train"] & flattened["test"]) <= 5
    counts = torch.bincount(splits["test"].targets, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38


def test_char_transformer_is_causal_and_pre_layernorm():
    torch.manual_seed(0)
    model = CharTransformer(vocab_size=20, context=12, width=16, heads=2, layers=2).eval()
    tokens = torch.randint(20, (3, 12))
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 20
    torch.testing.assert_close(model(tokens)[:, :8], model(changed)[:, :8])
    assert not torch.allclose(model(tokens)[:, 8:], model(changed)[:, 8:])
    block = model.blocks[0]
    seen = {}

    def recorder(name):
        def hook(module, inputs, output):
            seen[name] = inputs[0]

        return hook

    block.qkv.register_forward_hook(recorder("qkv"))
    block.mlp.register_forward_hook(recorder("mlp"))
    x = torch.randn(2, 5, 16)
    out = block(x)
    # pre-LN: attention reads LN(x); the MLP reads LN of the updated residual stream; the residuals add raw.
    torch.testing.assert_close(seen["qkv"], block.attention_norm(x))
    residual = out - block.mlp(seen["mlp"])
    torch.testing.assert_close(seen["mlp"], block.mlp_norm(residual))
    with pytest.raises(ValueError, match="width must be a multiple of heads"):
        CharTransformer(20, 12, width=15, heads=2)


def test_digits_cnn_with_and_without_batch_norm():
    with_norm, without = DigitsCNN(8, batch_norm=True), DigitsCNN(8, batch_norm=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_norm.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert all(m.bias is None for m in with_norm.modules() if isinstance(m, nn.Conv2d))
    assert with_norm(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    # the convolution weights followed by BatchNorm are scale-invariant (THEORY §4) in train mode
    images = torch.randn(16, 1, 8, 8)
    before = with_norm(images)
    with torch.no_grad():
        with_norm.features[0].weight.mul_(3.0)
    torch.testing.assert_close(with_norm(images), before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_sampling_is_seeded_and_evaluation_restores_mode(name):
    sizes = {
        "char-transformer": {"corpus_chars": 8000, "context": 8, "width": 8, "heads": 2, "layers": 1},
        "mnist1d-mlp": {"hidden": 8},
    }.get(name, {"channels": 2})
    task = build_task(name, "cpu", **sizes)
    first = task.sample_batch(torch.Generator().manual_seed(5), 4)
    again = task.sample_batch(torch.Generator().manual_seed(5), 4)
    other = task.sample_batch(torch.Generator().manual_seed(6), 4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    if name == "char-transformer":
        stream = task.splits["train"].inputs
        inputs, targets = first
        assert torch.equal(inputs[:, 1:], targets[:, :-1])  # next-character targets
        assert any(torch.equal(stream[i : i + 8], inputs[0]) for i in range(len(stream) - 8))
    model = task.make_model()
    assert parameter_count(model) > 0
    model.train()
    metrics = task.evaluate(model, "validation")
    assert model.training and 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0


def test_build_task_rejects_unknown_names():
    with pytest.raises(ValueError, match="task must be one of"):
        build_task("cifar10")


def test_constant_predictor_loss_is_the_minimum_over_constant_predictions():
    """Brute force: the best input-independent logits are log-frequencies, so the loss of a constant prediction
    is never below the entropy of the targets, and equals it at the frequencies themselves."""
    task = build_task("mnist1d-mlp", "cpu", hidden=8, depth=1)
    targets = task.splits["train"].targets
    entropy = task.constant_predictor_loss()
    frequencies = torch.bincount(targets).double() / len(targets)
    at_frequencies = task.loss(frequencies.log().expand(len(targets), -1), targets).item()
    assert at_frequencies == pytest.approx(entropy, rel=1e-12)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = frequencies.log() + 0.3 * torch.randn(len(frequencies), generator=generator, dtype=torch.float64)
        assert task.loss(logits.expand(len(targets), -1), targets).item() >= entropy - 1e-12
    char = build_task("char-transformer", "cpu", corpus_chars=3_000, context=8, width=8, heads=1, layers=1)
    stream = char.splits["train"].targets
    counts = torch.bincount(stream).double()
    p = counts[counts > 0] / counts.sum()
    assert char.constant_predictor_loss() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-12)
    assert 0 < char.constant_predictor_loss() < np.log(len(counts))
