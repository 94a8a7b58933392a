"""The training tasks of the experiments: data, a model factory, a seeded batch sampler, a loss, an evaluation.

Every task is a :class:`Task`; a ``torch.Generator`` drives its batch sampler, so a seed fixes both the
initialisation (:func:`~kadam.experiments.workloads.loop.seeded_initialisation`) and the data order.
``TASKS`` lists them by name; :func:`build_task` builds one with explicit sizes (the profiles scale them).

- ``char-transformer``: :class:`CharTransformer` on CPython's ``pydoc_data.topics`` text;
- ``digits-cnn-bn`` / ``digits-cnn``: :class:`DigitsCNN` with / without BatchNorm on scikit-learn's digits;
- ``mnist1d-mlp``: a ReLU :class:`MLP` on MNIST-1D.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kadam.experiments.workloads.data import Split, digits_splits, encode_characters, mnist1d_splits
from kadam.experiments.workloads.loop import TrainingCurve, train
from kadam.experiments.workloads.models import MLP, CharTransformer, DigitsCNN

__all__ = ["Task", "TASKS", "build_task"]


def char_splits(
    corpus_chars: int,
    context: int,
    evaluation_windows: int,
    encode: Callable[[int], tuple[torch.Tensor, int]] = encode_characters,
) -> tuple[dict[str, Split], int]:
    """Encode the first ``corpus_chars`` characters with ``encode`` (default: CPython's ``pydoc_data`` topics,
    :func:`~kadam.experiments.workloads.data.encode_characters`); 90/5/5 contiguous train/validation/test.

    The training split is one long token stream (``inputs``; ``targets`` unused); validation and test are
    up to ``evaluation_windows`` non-overlapping windows of ``context + 1`` characters.
    """
    tokens, vocabulary_size = encode(corpus_chars)
    train_end, validation_end = int(0.9 * len(tokens)), int(0.95 * len(tokens))

    def windows(stream: torch.Tensor) -> Split:
        count = min(evaluation_windows, len(stream) // (context + 1))
        if count < 1:
            raise ValueError(f"corpus_chars={corpus_chars} is too small for context={context}")
        blocks = stream[: count * (context + 1)].view(count, context + 1)
        return Split(blocks[:, :-1], blocks[:, 1:])

    train_stream = tokens[:train_end]
    splits = {
        "train": Split(train_stream, train_stream),
        "validation": windows(tokens[train_end:validation_end]),
        "test": windows(tokens[validation_end:]),
    }
    return splits, vocabulary_size


@dataclass
class Task:
    """A model factory, a seeded training-batch sampler, a loss and a fixed evaluation.

    ``sample_batch(generator, batch_size)`` draws a training mini-batch (with replacement: the stream
    position for characters, example indices otherwise) using only ``generator``, so one seed fixes the data
    order. ``evaluate(model, split)`` returns mean loss and accuracy on "validation" or "test" in eval mode.
    """

    name: str
    splits: dict[str, Split]
    make_model: Callable[[], nn.Module]
    sequence_length: int | None = None  # set for language modelling: windows drawn from a token stream
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        self.splits = {
            name: Split(split.inputs.to(self.device), split.targets.to(self.device))
            for name, split in self.splits.items()
        }

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        train_split = self.splits["train"]
        if self.sequence_length is None:
            index = torch.randint(len(train_split.targets), (batch_size,), generator=generator).to(self.device)
            return train_split.inputs[index], train_split.targets[index]
        starts = torch.randint(len(train_split.inputs) - self.sequence_length - 1, (batch_size, 1), generator=generator)
        index = (starts + torch.arange(self.sequence_length + 1)).to(self.device)
        windows = train_split.inputs[index]
        return windows[:, :-1], windows[:, 1:]

    def fit(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        steps: int,
        batch_size: int,
        generator: torch.Generator,
        window: int = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> TrainingCurve:
        """Train ``model`` for ``steps`` mini-batches of this task with :func:`~kadam.experiments.workloads.loop.train`."""
        return train(
            model,
            optimizer,
            lambda: self.sample_batch(generator, batch_size),
            self.loss,
            steps,
            window=window,
            progress=progress,
        )

    def constant_predictor_loss(self) -> float:
        r"""The cross-entropy of the best prediction that ignores the input: the entropy
        :math:`-\sum_c p_c \log p_c` of the training targets' class frequencies :math:`p_c` (for characters,
        the unigram entropy of the training stream). A model whose training loss is not below it has learned
        nothing from its inputs."""
        counts = torch.bincount(self.splits["train"].targets.reshape(-1).cpu()).double()
        frequencies = counts[counts > 0] / counts.sum()
        return float(-(frequencies * frequencies.log()).sum())

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (over every position for sequences)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 512) -> dict[str, float]:
        data = self.splits[split]
        was_training = model.training
        model.eval()
        total_loss, correct, count = 0.0, 0, 0
        for start in range(0, len(data.targets), batch_size):
            logits = model(data.inputs[start : start + batch_size])
            targets = data.targets[start : start + batch_size]
            total_loss += self.loss(logits, targets).item() * targets.numel()
            correct += (logits.argmax(-1) == targets).sum().item()
            count += targets.numel()
        model.train(was_training)
        return {"loss": total_loss / count, "accuracy": correct / count}


def _char_transformer_task(
    device: torch.device,
    corpus_chars: int = 100_000,
    context: int = 32,
    width: int = 64,
    heads: int = 4,
    layers: int = 2,
    evaluation_windows: int = 256,
) -> Task:
    splits, vocabulary_size = char_splits(corpus_chars, context, evaluation_windows)
    return Task(
        "char-transformer",
        splits,
        lambda: CharTransformer(vocabulary_size, context, width, heads, layers),
        sequence_length=context,
        device=device,
    )


def _digits_task(device: torch.device, batch_norm: bool, channels: int = 16) -> Task:
    name = "digits-cnn-bn" if batch_norm else "digits-cnn"
    return Task(name, digits_splits(), lambda: DigitsCNN(channels, batch_norm), device=device)


def _mnist1d_task(device: torch.device, hidden: int = 128, depth: int = 2) -> Task:
    return Task("mnist1d-mlp", mnist1d_splits(), lambda: MLP(40, hidden, depth, 10), device=device)


TASKS: Mapping[str, Callable[..., Task]] = {
    "char-transformer": _char_transformer_task,
    "digits-cnn-bn": functools.partial(_digits_task, batch_norm=True),
    "digits-cnn": functools.partial(_digits_task, batch_norm=False),
    "mnist1d-mlp": _mnist1d_task,
}
"""Task name → builder ``(device, **sizes) -> Task``. Sizes: char-transformer ``corpus_chars, context, width,
heads, layers, evaluation_windows``; digits-cnn(-bn) ``channels``; mnist1d-mlp ``hidden, depth``."""


def build_task(name: str, device: str | torch.device = "cpu", **sizes: Any) -> Task:
    """Build task ``name`` (one of ``TASKS``) on ``device`` with the given model/data sizes."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](torch.device(device), **sizes)
