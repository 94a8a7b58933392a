"""Cost of StabilityGuard on the character transformer: plain AdamW, + a default StabilityMonitor, + the guard.

One CharTransformer (``kadam.experiments.workloads``) and one AdamW optimizer train continuously; blocks of
``--block`` steps alternate between three modes, in rotating order within each of ``--rounds`` rounds:

- ``plain``: AdamW alone;
- ``monitor``: a default ``StabilityMonitor(optimizer, names=model)`` (records every 10th step), handed the
  loss at every step (``observe_loss``);
- ``guard``: the same monitor and ``StabilityGuard(optimizer, monitor=monitor, names=model)`` with its
  defaults (non-finite and outlier skipping, lowering the lr while the update ratio is above the monitor's
  rise threshold), which measures at every step, also handed the loss;
- ``guard + clip``: the same with StableAdamW's update clipping on (``clip_updates=True``).

Hooks are attached at the start of a block and removed at its end; the guard's windows carry from block to
block through ``state_dict``/``load_state_dict``, as in one long run. Each round gives a ratio of each mode's
per-step time to ``plain``'s in the same round (paired, so that slow drifts of the machine cancel);
reported: the median per-step time of each mode, and the median over rounds of these ratios.

    PYTHONPATH=src .venv/bin/python benchmarks/monitor_guard_overhead.py [--width 128] [--layers 2] [--rounds 9]

Timings on a shared machine are noisy; pairing and the median limit, but do not remove, the effect of other
load. A step the guard skips or clips costs no more than one it lets through, apart from the recomputation
of the update of each clipped tensor.
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import ExitStack
from typing import Any

import torch
from monitor_overhead import gpt_workload  # benchmarks/ is on sys.path when a script here runs

from kadam.monitor import StabilityGuard, StabilityMonitor

MODES = ("plain", "monitor", "guard", "guard + clip")


def main() -> None:
    args, task, model, optimizer, generator = gpt_workload(__doc__.splitlines()[0])
    guard_state: dict[str, Any] | None = None
    actions: dict[str, int] = {}

    def synchronize() -> None:
        if args.device != "cpu":
            torch.cuda.synchronize()

    def block(mode: str) -> float:
        nonlocal guard_state, actions
        with ExitStack() as hooks:
            guard = None
            if mode != "plain":
                monitor = hooks.enter_context(StabilityMonitor(optimizer, names=model, warn=False))
            if mode.startswith("guard"):
                guard = hooks.enter_context(
                    StabilityGuard(
                        optimizer, monitor=monitor, names=model, warn=False, clip_updates=mode == "guard + clip"
                    )
                )
                if guard_state is not None:
                    guard.load_state_dict(guard_state)
            synchronize()
            started = time.perf_counter()
            for _ in range(args.block):
                inputs, targets = task.sample_batch(generator, args.batch_size)
                loss = task.loss(model(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if mode != "plain":
                    monitor.observe_loss(loss)
                if guard is not None:
                    guard.observe_loss(loss)
                optimizer.step()
            synchronize()
            elapsed = (time.perf_counter() - started) / args.block
            if guard is not None:
                guard_state, actions = guard.state_dict(), dict(guard.counts)
        return elapsed

    block("plain")  # warm-up
    block("guard + clip")
    per_step: dict[str, list[float]] = {mode: [] for mode in MODES}
    ratios: dict[str, list[float]] = {mode: [] for mode in MODES[1:]}
    for round_index in range(args.rounds):
        times = {}
        for offset in range(len(MODES)):
            mode = MODES[(round_index + offset) % len(MODES)]
            times[mode] = block(mode)
            per_step[mode].append(times[mode])
        for mode in MODES[1:]:
            ratios[mode].append(times[mode] / times["plain"])
    summary = {
        "model": f"CharTransformer width {args.width}, {args.layers} layers, context {args.context}, batch "
        f"{args.batch_size}, AdamW, {args.device}, {args.threads} thread(s)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensors": sum(1 for _ in model.parameters()),
        "median_ms_per_step": {mode: round(1e3 * statistics.median(times), 3) for mode, times in per_step.items()},
        "median_paired_ratio_to_plain": {mode: round(statistics.median(values), 4) for mode, values in ratios.items()},
        "guard_actions_over_the_run": actions,
        "rounds": args.rounds,
        "block": args.block,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
