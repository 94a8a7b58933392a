"""Overhead of StabilityMonitor on the character transformer: the same run with and without it.

One CharTransformer (``kadam.experiments.workloads``) and one AdamW optimizer train continuously; blocks of
``--block`` steps alternate between no monitor, the default attach (a monitor recording every 10th step),
the default attach handed the loss at every step (``observe_loss``, as the Hugging Face and Lightning
callbacks do: its loss checks run every step) and a monitor recording every step (attached at the start of
a block, detached at its end), for ``--rounds`` rounds in rotating order, so that all modes share the run's
machine state. Reported: the median over rounds of the per-step
time of each mode and its ratio to no monitor (what every=1 costs per recorded step follows from it).

    PYTHONPATH=src .venv/bin/python benchmarks/monitor_overhead.py [--width 128] [--layers 2] [--rounds 9]

Timings on a shared machine are noisy; the median over rounds and the rotation limit, but do not remove,
the effect of other load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from kadam.experiments.workloads import build_task
from kadam.monitor import StabilityMonitor

MODES = ("none", "every 10", "every 10 + loss", "every 1")


def gpt_workload(
    description: str,
) -> tuple[argparse.Namespace, Any, torch.nn.Module, torch.optim.Optimizer, torch.Generator]:
    """The command line shared by the monitor's cost benchmarks and the char GPT they time, with AdamW on it:
    (arguments, task, model, optimizer, batch generator)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block", type=int, default=40, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of one block per mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = build_task(
        "char-transformer",
        args.device,
        corpus_chars=100_000,
        context=args.context,
        width=args.width,
        heads=4,
        layers=args.layers,
    )
    torch.manual_seed(0)
    model = task.make_model().to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return args, task, model, optimizer, torch.Generator().manual_seed(0)


def main() -> None:
    args, task, model, optimizer, generator = gpt_workload(__doc__.splitlines()[0])

    def block(monitor: StabilityMonitor | None = None) -> float:
        if args.device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.block):
            inputs, targets = task.sample_batch(generator, args.batch_size)
            loss = task.loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if monitor is not None:
                monitor.observe_loss(loss)
            optimizer.step()
        if args.device != "cpu":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / args.block

    block()  # warm-up
    per_step: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_index in range(args.rounds):
        for offset in range(len(MODES)):
            mode = MODES[(round_index + offset) % len(MODES)]
            if mode == "none":
                per_step[mode].append(block())
            else:
                every = 1 if mode == "every 1" else 10
                with StabilityMonitor(optimizer, names=model, every=every, warn=False) as monitor:
                    per_step[mode].append(block(monitor if mode == "every 10 + loss" else None))
    baseline = statistics.median(per_step["none"])
    every_one = statistics.median(per_step["every 1"])
    summary = {
        "model": f"CharTransformer width {args.width}, {args.layers} layers, context {args.context}, batch "
        f"{args.batch_size}, AdamW, {args.device}, {args.threads} thread(s)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensors": sum(1 for _ in model.parameters()),
        "median_ms_per_step": {mode: 1e3 * statistics.median(times) for mode, times in per_step.items()},
        "ratio_to_no_monitor": {mode: statistics.median(per_step[mode]) / baseline for mode in MODES[1:]},
        "ms_per_recorded_step": 1e3 * (every_one - baseline),
        "rounds": args.rounds,
        "block": args.block,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
