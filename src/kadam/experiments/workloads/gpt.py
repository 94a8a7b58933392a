"""A GPT-style character language model on CPython's ``pydoc_data.topics`` text, with or without LayerNorm.

The model (:class:`GPT`) is a causal decoder: token + learned position embeddings, ``layers`` blocks
``x + Attention(LN(x))``, ``x + MLP(LN(x))`` (pre-LN, GPT-2's arrangement), a final LN and a linear head.
``layer_norm=False`` replaces every LayerNorm by the identity and changes nothing else: the two models
create their random tensors in the same order, so one seed gives them the same initial weights wherever
the architectures agree (LayerNorm's own parameters start at 1 and 0, not at random). The pair isolates
the normalization layers for THEORY §4's question (does 2-Adam without normalization recover what
normalization gives Adam?).

The data are :func:`kadam.experiments.workloads.encode_characters`' tokens of the first ``corpus_chars``
characters, split 90/5/5 into contiguous train/validation/test parts; training batches are windows of
``context + 1`` characters at positions drawn from the task's generator, evaluation uses up to
``evaluation_windows`` fixed non-overlapping windows of each held-out part.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kadam.experiments.workloads.data import encode_characters
from kadam.experiments.workloads.models import CharTransformer
from kadam.experiments.workloads.tasks import Task, char_splits

__all__ = ["GPT", "build_gpt_task", "char_gpt_task"]


GPT = CharTransformer
"""The model: :class:`~kadam.experiments.workloads.models.CharTransformer` (``layer_norm=False`` for gpt-noln)."""


def build_gpt_task(
    device: str | torch.device = "cpu",
    layer_norm: bool = True,
    corpus_chars: int = 200_000,
    context: int = 64,
    width: int = 64,
    heads: int = 4,
    layers: int = 2,
    evaluation_windows: int = 256,
) -> Task:
    """The character-LM :class:`~kadam.experiments.workloads.Task` ("gpt" or "gpt-noln") at the given sizes."""
    sizes = (corpus_chars, context, width, heads, layers, evaluation_windows)
    return char_gpt_task("gpt" if layer_norm else "gpt-noln", device, layer_norm, encode_characters, *sizes)


def char_gpt_task(
    name: str,
    device: str | torch.device,
    layer_norm: bool,
    encode: Callable[[int], tuple[torch.Tensor, int]],
    corpus_chars: int,
    context: int,
    width: int,
    heads: int,
    layers: int,
    evaluation_windows: int,
) -> Task:
    """The task ``name``: :class:`GPT` on the characters ``encode(corpus_chars)`` returns (tokens, vocabulary
    size), split by :func:`~kadam.experiments.workloads.tasks.char_splits`; every size an integer ≥ 1."""
    for label, value in (
        ("corpus_chars", corpus_chars),
        ("context", context),
        ("width", width),
        ("heads", heads),
        ("layers", layers),
        ("evaluation_windows", evaluation_windows),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an integer ≥ 1, got {value!r}")
    splits, vocabulary_size = char_splits(corpus_chars, context, evaluation_windows, encode)
    return Task(
        name,
        splits,
        lambda: GPT(vocabulary_size, context, width, heads, layers, layer_norm),
        sequence_length=context,
        device=torch.device(device),
    )
