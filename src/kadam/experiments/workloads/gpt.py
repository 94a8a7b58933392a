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

import torch
import torch.nn.functional as F
from torch import nn

from kadam.experiments.workloads.data import Split, encode_characters
from kadam.experiments.workloads.tasks import Task

__all__ = ["GPT", "build_gpt_task"]


class _Block(nn.Module):
    """``x + Attention(LN(x))`` then ``x + MLP(LN(x))`` (causal); LN is the identity without normalization."""

    def __init__(self, width: int, heads: int, layer_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attention_out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """A causal character transformer; ``forward(tokens)`` maps (batch, length ≤ context) ids to logits
    (batch, length, vocab_size). ``layer_norm=False`` removes every LayerNorm (see the module docstring)."""

    def __init__(self, vocab_size: int, context: int, width: int = 64, heads: int = 4, layers: int = 2,
                 layer_norm: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width must be a multiple of heads, got width={width}, heads={heads}")
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(_Block(width, heads, layer_norm) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.head = nn.Linear(width, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))


def _splits(corpus_chars: int, context: int, evaluation_windows: int) -> tuple[dict[str, Split], int]:
    tokens, vocabulary_size = encode_characters(corpus_chars)
    train_end, validation_end = int(0.9 * len(tokens)), int(0.95 * len(tokens))

    def windows(stream: torch.Tensor) -> Split:
        count = min(evaluation_windows, len(stream) // (context + 1))
        if count < 1:
            raise ValueError(f"corpus_chars={corpus_chars} is too small for context={context}")
        blocks = stream[: count * (context + 1)].view(count, context + 1)
        return Split(blocks[:, :-1], blocks[:, 1:])

    train = tokens[:train_end]
    return {"train": Split(train, train), "validation": windows(tokens[train_end:validation_end]),
            "test": windows(tokens[validation_end:])}, vocabulary_size


def build_gpt_task(device: str | torch.device = "cpu", layer_norm: bool = True, corpus_chars: int = 200_000,
                   context: int = 64, width: int = 64, heads: int = 4, layers: int = 2,
                   evaluation_windows: int = 256) -> Task:
    """The character-LM :class:`~kadam.experiments.workloads.Task` ("gpt" or "gpt-noln") at the given sizes."""
    for name, value in (("corpus_chars", corpus_chars), ("context", context), ("width", width), ("heads", heads),
                        ("layers", layers), ("evaluation_windows", evaluation_windows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
    splits, vocabulary_size = _splits(corpus_chars, context, evaluation_windows)
    return Task("gpt" if layer_norm else "gpt-noln", splits,
                lambda: GPT(vocabulary_size, context, width, heads, layers, layer_norm),
                sequence_length=context, device=torch.device(device))
