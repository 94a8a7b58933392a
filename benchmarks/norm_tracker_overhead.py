"""Overhead of NormTracker: the same training run with and without it, in alternating blocks.

One model (the BatchNorm MLP of ``kadam.experiments.workloads`` on digits) and one AdamW optimizer
train continuously; blocks of ``--block`` steps alternate between no tracker, a tracker recording every
step and one recording every 10th step (attached at the start of a block, removed at its end), for
``--rounds`` rounds in rotating order, so that all modes share the run's machine state. Reported: the
median over rounds of the per-step time of each mode and its overhead relative to no tracker.

    .venv/bin/python benchmarks/norm_tracker_overhead.py [--hidden 256] [--depth 3] [--block 100] [--rounds 15]

Timings on a shared machine are noisy; the median over rounds and the rotation limit, but do not remove,
the effect of other load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from kadam.experiments.workloads import MLP, digits_splits
from kadam.normalization import NormTracker, find_scale_invariant

MODES = ("none", "every 1", "every 10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block", type=int, default=100, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of one block per mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split = digits_splits()["train"]
    inputs, targets = split.inputs.flatten(1), split.targets
    torch.manual_seed(0)
    model = MLP(64, args.hidden, args.depth, 10, norm="batch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    report = find_scale_invariant(model, lambda m, b: loss_of(b), (inputs[:256], targets[:256]))
    parameters = dict(model.named_parameters())
    tracked = [(name, parameters[name]) for name in report.invariant]
    generator = torch.Generator().manual_seed(0)

    def block() -> float:
        started = time.perf_counter()
        for _ in range(args.block):
            index = torch.randint(len(targets), (args.batch_size,), generator=generator)
            loss = loss_of((inputs[index], targets[index]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - started) / args.block

    block()  # warm-up
    per_step: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_index in range(args.rounds):
        for offset in range(len(MODES)):
            mode = MODES[(round_index + offset) % len(MODES)]
            if mode == "none":
                per_step[mode].append(block())
            else:
                with NormTracker(optimizer, tracked, every=1 if mode == "every 1" else 10):
                    per_step[mode].append(block())
    baseline = statistics.median(per_step["none"])
    summary = {
        "model": f"BatchNorm MLP 64-{args.hidden}x{args.depth}-10, batch {args.batch_size}, AdamW, CPU, "
        f"{args.threads} thread(s)",
        "tracked": [name for name, _ in tracked],
        "tracked_elements": sum(p.numel() for _, p in tracked),
        "parameters": sum(p.numel() for p in model.parameters()),
        "median_ms_per_step": {mode: 1e3 * statistics.median(times) for mode, times in per_step.items()},
        "overhead": {mode: statistics.median(per_step[mode]) / baseline - 1 for mode in MODES[1:]},
        "rounds": args.rounds,
        "block": args.block,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
