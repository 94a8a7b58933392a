"""The models the experiments train: one MLP, a digits CNN, a character-level transformer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CharTransformer", "DigitsCNN", "MLP", "parameter_count"]


class MLP(nn.Sequential):
    """``inputs → [Linear → (normalization) → activation] × depth → Linear → outputs``.

    ``norm`` None: plain Linear layers with biases. ``norm`` "batch" or "layer": each hidden Linear has no
    bias and is followed by BatchNorm1d or LayerNorm, which makes its weight scale-invariant in train mode
    (THEORY §4); the classifier is not. Layers are created in order, so a seed fixes the initialisation.
    """

    def __init__(
        self,
        inputs: int,
        hidden: int,
        depth: int,
        outputs: int,
        norm: Literal["batch", "layer"] | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        if norm not in (None, "batch", "layer"):
            raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")
        widths = [inputs] + [hidden] * depth
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers.append(nn.Linear(fan_in, fan_out, bias=norm is None))
            if norm is not None:
                layers.append(nn.BatchNorm1d(fan_out) if norm == "batch" else nn.LayerNorm(fan_out))
            layers.append(activation())
        super().__init__(*layers, nn.Linear(widths[-1], outputs))


class DigitsCNN(nn.Module):
    """Two 3×3 convolutions (each optionally followed by BatchNorm), ReLU, 2×2 max-pool, a linear classifier.

    Input (batch, 1, 8, 8); output logits (batch, 10). With ``batch_norm=True`` both convolution weights are
    scale-invariant (THEORY §4), so the pair "with / without BatchNorm" isolates the normalization layers.
    """

    def __init__(self, channels: int = 16, batch_norm: bool = True) -> None:
        super().__init__()

        def conv_block(inputs: int, outputs: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(inputs, outputs, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(outputs))
            return [*layers, nn.ReLU()]

        self.features = nn.Sequential(*conv_block(1, channels), *conv_block(channels, 2 * channels), nn.MaxPool2d(2))
        self.classifier = nn.Linear(2 * channels * 16, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1))


class _PreLayerNormBlock(nn.Module):
    """``x + Attention(LN(x))`` then ``x + MLP(LN(x))``: the pre-LN transformer block (causal); LN is the
    identity when ``layer_norm`` is False."""

    def __init__(self, width: int, heads: int, layer_norm: bool = True) -> None:
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


class CharTransformer(nn.Module):
    """A small pre-LayerNorm, causal, character-level transformer (GPT-style, learned positions).

    ``forward(tokens)`` maps integer tokens of shape (batch, length ≤ context) to next-character logits
    of shape (batch, length, vocab_size). ``layer_norm=False`` removes every LayerNorm (the same
    parameters otherwise, drawn in the same order, so a seed gives the same weights with and without).
    """

    def __init__(
        self, vocab_size: int, context: int, width: int = 64, heads: int = 4, layers: int = 2, layer_norm: bool = True
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width must be a multiple of heads, got width={width}, heads={heads}")
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(_PreLayerNormBlock(width, heads, layer_norm) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.head = nn.Linear(width, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
