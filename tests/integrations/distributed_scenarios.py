"""KAdam under torch.distributed on CPU (gloo, 2 processes): the scenarios that test_distributed.py checks.

One ``torch.multiprocessing.spawn`` runs every scenario (process start-up and imports dominate the cost);
rank 0 writes one JSON record per scenario, and the tests assert on the records. A scenario that raises
records the error instead of stopping the others.

Every scenario trains the same tiny model on the same data: at step t the global batch is ``BATCH``
samples, rank r takes the half ``[r·BATCH/2, (r+1)·BATCH/2)``, and the loss is the mean over the local half,
so the averaged gradient equals the single-process gradient on the concatenated batch.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor, Shard
from torch.nn.parallel import DistributedDataParallel

from kadam import KAdam

WORLD_SIZE = 2
BATCH = 16
STEPS = 6
IN_FEATURES, HIDDEN, OUT_FEATURES = 8, 16, 4

# Optimizer settings the scenarios run: the default 2-Adam (level 1 elementwise, level 2 tensor mode) and a
# 3-level configuration entirely in tensor mode with momentum at every level and coupled decay.
CONFIGS: dict[str, dict[str, Any]] = {
    "k2_default": {"lr": 1e-2, "k": 2, "weight_decay": 0.1},
    "k3_tensor": {
        "lr": 1e-2,
        "k": 3,
        "betas": [(0.9, 0.999), (0.5, 0.99), (0.0, 0.999)],
        "norm": ["tensor", "tensor", "tensor"],
        "weight_decay": 0.1,
        "decoupled_weight_decay": False,
    },
}
IMPLEMENTATIONS = {"loop": False, "foreach": True}


def make_model() -> nn.Module:
    """The shared model: Linear → LayerNorm → Tanh → Linear, float32, fixed initialization."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(IN_FEATURES, HIDDEN), nn.LayerNorm(HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT_FEATURES)
    )


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    inputs = torch.randn(BATCH, IN_FEATURES, generator=generator)
    targets = torch.randn(BATCH, OUT_FEATURES, generator=generator)
    return inputs, targets


def local_batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = global_batch(step)
    half = BATCH // WORLD_SIZE
    return inputs[rank * half : (rank + 1) * half], targets[rank * half : (rank + 1) * half]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range, batch: Callable[[int], Any]) -> None:
    for step in steps:
        inputs, targets = batch(step)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded copies of the parameters (a DTensor is gathered with ``full_tensor``)."""
    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for name, p in model.named_parameters()
    }


def reference_parameters(config: dict[str, Any], foreach: bool, steps: int) -> dict[str, torch.Tensor]:
    """Single-process KAdam on the concatenated (global) batch."""
    model = make_model()
    train(model, KAdam(model.parameters(), foreach=foreach, **config), range(steps), global_batch)
    return full_parameters(model)


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


def identical(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def ranks_identical(parameters: dict[str, torch.Tensor]) -> bool:
    gathered: list[Any] = [None] * WORLD_SIZE
    dist.all_gather_object(gathered, parameters)
    return all(identical(gathered[0], other) for other in gathered[1:])


def ddp_scenario(rank: int, config: dict[str, Any], foreach: bool, workdir: Path) -> dict[str, Any]:
    model = DistributedDataParallel(make_model())
    train(model, KAdam(model.parameters(), foreach=foreach, **config), range(STEPS), lambda s: local_batch(s, rank))
    parameters = full_parameters(model.module)
    return {
        "ranks_identical": ranks_identical(parameters),
        "max_difference_to_single_process": max_difference(parameters, reference_parameters(config, foreach, STEPS)),
    }


def zero_scenario(rank: int, config: dict[str, Any], foreach: bool, workdir: Path) -> dict[str, Any]:
    """ZeroRedundancyOptimizer(optimizer_class=KAdam): train, consolidate + save, load into a fresh run, resume."""

    def fresh() -> tuple[nn.Module, ZeroRedundancyOptimizer]:
        model = DistributedDataParallel(make_model())
        optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=KAdam, foreach=foreach, **config)
        return model, optimizer

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return local_batch(step, rank)

    half = STEPS // 2
    model, optimizer = fresh()
    train(model, optimizer, range(half), batch)
    optimizer.consolidate_state_dict(to=0)
    checkpoint = workdir / "zero.pt"
    if rank == 0:
        torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
    dist.barrier()
    local_state_sizes = [len(optimizer.optim.state)]
    train(model, optimizer, range(half, STEPS), batch)
    uninterrupted = full_parameters(model.module)

    resumed_model, resumed_optimizer = fresh()
    saved = torch.load(checkpoint, weights_only=True)
    resumed_model.module.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    train(resumed_model, resumed_optimizer, range(half, STEPS), batch)
    resumed = full_parameters(resumed_model.module)
    gathered_sizes: list[Any] = [None] * WORLD_SIZE
    dist.all_gather_object(gathered_sizes, local_state_sizes)
    return {
        "ranks_identical": ranks_identical(uninterrupted),
        "max_difference_to_single_process": max_difference(uninterrupted, reference_parameters(config, foreach, STEPS)),
        "resume_exact": identical(uninterrupted, resumed) and ranks_identical(resumed),
        "parameters_with_state_per_rank": [sizes[0] for sizes in gathered_sizes],
        "parameter_count": len(list(model.parameters())),
    }


def shard(model: nn.Module) -> nn.Module:
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def fsdp2_scenario(rank: int, config: dict[str, Any], foreach: bool, workdir: Path) -> dict[str, Any]:
    """FSDP2 (``fully_shard``): KAdam on DTensor parameters; optimizer state through torch.distributed.checkpoint."""

    def fresh() -> tuple[nn.Module, KAdam]:
        model = shard(make_model())
        return model, KAdam(model.parameters(), foreach=foreach, **config)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return local_batch(step, rank)

    half = STEPS // 2
    model, optimizer = fresh()
    train(model, optimizer, range(half), batch)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state_leaves = list(_tensors(optimizer_state["state"]))
    checkpoint = workdir / f"dcp-{'foreach' if foreach else 'loop'}-{config['k']}"
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
    train(model, optimizer, range(half, STEPS), batch)
    uninterrupted = full_parameters(model)

    resumed_model, resumed_optimizer = fresh()
    model_state, optimizer_state = get_state_dict(resumed_model, resumed_optimizer)
    dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
    set_state_dict(resumed_model, resumed_optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
    train(resumed_model, resumed_optimizer, range(half, STEPS), batch)
    resumed = full_parameters(resumed_model)
    return {
        "parameters_are_dtensors": all(isinstance(p, DTensor) for p in model.parameters()),
        "ranks_identical": ranks_identical(uninterrupted),
        "max_difference_to_single_process": max_difference(uninterrupted, reference_parameters(config, foreach, STEPS)),
        "resume_exact": identical(uninterrupted, resumed),
        "sharded_state_tensors": sum(
            isinstance(t, DTensor) and any(isinstance(p, Shard) for p in t.placements) for t in state_leaves
        ),
        "checkpoint_files": sorted(path.name for path in checkpoint.iterdir()),
    }


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)


SCENARIOS = {"ddp": ddp_scenario, "zero": zero_scenario, "fsdp2": fsdp2_scenario}


def scenario_names() -> list[str]:
    return [
        f"{kind}-{config}-{implementation}"
        for kind in SCENARIOS
        for config in CONFIGS
        for implementation in IMPLEMENTATIONS
    ]


def run_rank(rank: int, workdir: str) -> None:
    """Entry point of one spawned process: run every scenario, rank 0 writes ``results.json``."""
    directory = Path(workdir)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{directory / 'store'}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    try:
        for name in scenario_names():
            kind, config, implementation = name.split("-")
            try:
                results[name] = SCENARIOS[kind](rank, CONFIGS[config], IMPLEMENTATIONS[implementation], directory)
            except Exception:  # recorded for the test to report; the other scenarios still run
                results[name] = {"error": traceback.format_exc()}
            dist.barrier()
    finally:
        if rank == 0:
            (directory / "results.json").write_text(json.dumps(results, indent=1))
        dist.destroy_process_group()
