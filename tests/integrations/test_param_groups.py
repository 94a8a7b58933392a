"""param_groups_for: biases and normalization weights out of weight decay (issue 8)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kadam import KAdam
from kadam.optimizer.param_groups import is_normalization_layer, param_groups_for


class LibraryRMSNorm(nn.Module):
    """A normalization layer as libraries write their own (not derived from torch's classes)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)


class Zoo(nn.Module):
    """One of each kind of parameter, with a tied embedding / output weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 8)
        self.attention = nn.MultiheadAttention(8, 2)
        self.layer_norm = nn.LayerNorm(8)
        self.rms_norm = nn.RMSNorm(8)
        self.library_norm = LibraryRMSNorm(8)
        self.conv = nn.Conv1d(8, 8, 3)
        self.batch_norm = nn.BatchNorm1d(8)
        self.group_norm = nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embedding.weight
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


EXPECTED_DECAY = {
    "embedding.weight",
    "attention.in_proj_weight",
    "attention.out_proj.weight",
    "conv.weight",
    "frozen.weight",
}
EXPECTED_NO_DECAY = {
    "attention.in_proj_bias",
    "attention.out_proj.bias",
    "layer_norm.weight",
    "layer_norm.bias",
    "rms_norm.weight",
    "library_norm.weight",
    "conv.bias",
    "batch_norm.weight",
    "batch_norm.bias",
    "group_norm.weight",
    "group_norm.bias",
    "frozen.bias",
}


def names(model: nn.Module, group: dict) -> set[str]:
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {by_id[id(p)] for p in group["params"]}


def test_groups_split_weights_from_biases_and_normalization_weights() -> None:
    model = Zoo()
    decay, no_decay = param_groups_for(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert names(model, decay) == EXPECTED_DECAY
    assert names(model, no_decay) == EXPECTED_NO_DECAY
    # Every parameter exactly once: the tied head weight is the embedding's.
    listed = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())


def test_normalization_layers_are_recognised_by_type_and_by_name() -> None:
    for layer in (
        nn.BatchNorm2d(3),
        nn.InstanceNorm1d(3, affine=True),
        nn.SyncBatchNorm(3),
        nn.LayerNorm(3),
        nn.GroupNorm(1, 3),
        nn.RMSNorm(3),
        LibraryRMSNorm(3),
    ):
        assert is_normalization_layer(layer), layer
    for layer in (nn.Linear(3, 3), nn.Embedding(3, 3), nn.Conv2d(3, 3, 1), nn.MultiheadAttention(4, 2)):
        assert not is_normalization_layer(layer), layer


def test_empty_group_is_left_out() -> None:
    groups = param_groups_for(nn.Linear(3, 3, bias=False), weight_decay=0.1)
    assert [len(group["params"]) for group in groups] == [1]


def test_kadam_decays_only_the_decay_group() -> None:
    # With zero gradients every level's output is 0 (m = 0), so one step is the decay alone:
    # θ ← (1 − ηλ) θ in the decay group, θ unchanged in the other.
    model = Zoo()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lr, weight_decay = 0.1, 0.5
    optimizer = KAdam(param_groups_for(model, weight_decay), lr=lr, k=2)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - lr * weight_decay if name in EXPECTED_DECAY else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=0, atol=0)


@pytest.mark.parametrize("weight_decay", [-0.1, math.nan, math.inf, True, "0.1"])
def test_bad_weight_decay_names_the_argument_and_range(weight_decay: object) -> None:
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0"):
        param_groups_for(nn.Linear(2, 2), weight_decay)  # type: ignore[arg-type]
