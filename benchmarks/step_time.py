r"""Time per optimizer step: KAdam (loop, foreach, fused; k = 1, 2, 3; float32 and bfloat16 state) against
torch's AdamW.

An optimizer step streams its tensors through memory, so its floor is set by bandwidth. Per float32
parameter a step must read θ and g, write θ, and read and write every stored moment: every level's m
(the default meta levels, β = 0, store none) and every elementwise level's v (a tensor-mode level's v is
one scalar per tensor), each of ``state_dtype``'s size (4 bytes in float32, 2 in bfloat16). That is 28
bytes for AdamW, 28 for the default k-Adam (any k), 4·(3 + 4k) with every level elementwise with momentum,
20 for the default k-Adam with bfloat16 state. A tensor-mode level that ends a pass needs its input again
in the next pass: the default k-Adam rebuilds it from level 1's m and v, which the fused kernel keeps in
a group-sized buffer for tensors that fit it (2^20 elements, :mod:`kadam.optimizer._cpu_kernel`) and
re-reads otherwise: the floor of a tensor larger than the buffer adds one read of m and v (36 bytes in
float32, 24 in bfloat16). The main table steps tensors that fit the buffer; a second table (``--large``)
steps the same parameter count in tensors larger than it; each row states the floor it is held against.
The bandwidth is measured in the same run by an in-place triad a += s·b over arrays as large as the
parameters (12 bytes per element, updated in place as an optimizer updates its state, so no write-allocate
traffic is hidden), timed interleaved with the optimizers so that all rows see the same machine (each table
in a process of its own, below). Before every timing a read of twice the last-level cache evicts it, so each
step starts cold, as it does in training after a forward and backward pass (``--warm-cache`` skips that; a
large L3 then holds part of a 16M-parameter step).
Each table row reports:

* median ms and best ms per step over the repeats (rows are timed round-robin, so contention spreads
  evenly; on a shared machine the best is the closer estimate of the uncontended time);
* GB/s: the floor's bytes divided by the best time (what the step achieves against its minimal traffic);
* × fused AdamW: the ratio to ``torch.optim.AdamW(fused=True)`` in the same run: the median over
  rounds of the ratio within a round (the issue's targets; pairing cancels slow drifts in load), and
  the ratio of bests;
* × floor: the best time over the floor's bytes at the triad's best bandwidth;
* floor B/param: the floor's bytes per parameter that the row is held against (above);
* state B/param: bytes of optimizer state (all tensors in ``optimizer.state``) per parameter after a step;
* peak extra MB: the highest net allocation through torch's allocator during one step, beyond the
  parameters, gradients and state that exist before it (the fused kernel's own buffers are a few
  scalars per tensor, a 16 KiB (32 KiB in float64) block buffer per thread and the replay buffer of at most 2^20
  elements, outside torch's allocator).

A second table sweeps the parameter count (fused rows only) to show scaling.

OpenMP's wait policy matters on a shared machine: torch's fused and foreach kernels fork and join
threads once per tensor, and with libgomp's default (spin, then sleep) a contended machine can add a
scheduler delay to every join (measured here under load: fused AdamW on 1M parameters took ~950 ms a
step instead of 1-5 ms), while the KAdam kernel joins at most once per tensor-mode level. So that the
comparison is of kernels, not of join latency, the script restarts itself with
``OMP_WAIT_POLICY=PASSIVE`` unless a policy is set or ``--omp-default`` is given; the title shows the
policy in force.

Where a row's tensors live matters too. glibc raises its mmap threshold after a large block is freed, so later
large allocations come from recycled heap memory instead of fresh mappings: which rows get which depends on the
order in which rows and tables allocate and free. Measured on the development machine, one process, 8 tensors of
2^21 elements: torch's fused AdamW took 21.1 ms a step as the process's first table and 18.3-18.5 ms as a later
one, KAdam's default k = 2 gained less, and its ratio moved from 1.23 to 1.31-1.36; with the threshold fixed the
later table gave 21.3 ms and 1.25, as the first did. So the script restarts itself with
``MALLOC_MMAP_THRESHOLD_=131072`` (glibc's initial threshold, held fixed: every allocation of 128 KiB or more
is a fresh mapping) unless it is set or ``--malloc-default`` is given, and measures each table (main, large,
each sweep size) in a fresh process of its own; the title shows the threshold in force. Which kind of memory a
training process hands its optimizer is its own history's: the fixed threshold makes the rows comparable, not
any one of them typical.

The targets (a median of paired ratios to fused AdamW, measured on a quiet machine; the title shows the load
average at the start and the end): fused k = 1 ≤ 1.05×, the default k = 2 ≤ 1.15× in tensors that fit the
buffer (floor 28 B/param: AdamW's bytes) and ≤ 1.35× in tensors larger than it (floor 36), k = 3 ≤ 1.3×,
foreach k = 1 ≤ 1.10× foreach AdamW. Rows with bfloat16 state are held against their own floor: the
"× floor" column, and the floor's share of AdamW's bytes (20/28 = 0.71 in the buffer) beside it.

On a shared machine, ``--clock cpu`` (with ``--threads 1``) times each step by the thread's CPU time, which
leaves out the time another process holds the core (not the caches it evicts meanwhile); the title says which
clock timed the table.

Usage: ``python benchmarks/step_time.py`` (about 16.8M parameters in 64 tensors, 2 threads); ``--quick``
for a smaller, shorter run; ``--json PATH`` to keep the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kadam import KAdam

MIB = 2**20
TRIAD_BYTES_PER_ELEMENT = 12  # a += s·b in place: read a and b, write a (no write-allocate of a third array)


@dataclass
class Row:
    """One implementation: how to build its optimizer and the floor of its traffic."""

    name: str
    build: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    floor_bytes_per_param: int
    target: float | None = None  # the issues' bound on the ratio to the reference row
    reference: str = "torch AdamW fused"


def _floor_bytes(stored_moments: int, state_bytes: int = 4, replay: bool = False) -> int:
    """θ read and written and g read (4 bytes each), each stored moment read and written (``state_bytes``
    each), and with ``replay`` one more read of level 1's m and v (a tensor larger than the group buffer)."""
    return 4 * 3 + state_bytes * (2 * stored_moments + (2 if replay else 0))


def _rows(implementations: list[str], ks: list[int], large: bool = False, bfloat16: bool = True) -> list[Row]:
    """The table's rows; ``large``: its tensors are larger than the fused kernel's group buffer (the default
    k-Adam's floor then re-reads level 1's m and v)."""
    rows = []
    torch_kinds = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    for kind in implementations:
        rows.append(Row(f"torch AdamW {kind}", lambda p, o=torch_kinds[kind]: torch.optim.AdamW(p, lr=1e-3, **o), 28))
    # Fused against fused AdamW: k = 1 (issue 29), the default k = 2 in tensors that fit the buffer and in
    # larger ones (issue 29), k = 3 (issue 29); foreach k = 1 against foreach AdamW (issue 7).
    targets = {1: 1.05, 2: 1.35 if large else 1.15, 3: 1.3}
    for k in ks:
        for kind in implementations:
            target, reference = {"fused": (targets[k], "torch AdamW fused")}.get(kind, (None, "torch AdamW fused"))
            if (k, kind) == (1, "foreach"):
                target, reference = 1.10, "torch AdamW foreach"
            rows.append(
                Row(
                    f"KAdam k={k} {kind}",
                    lambda p, k=k, o=torch_kinds[kind]: KAdam(p, lr=1e-3, k=k, **o),
                    _floor_bytes(2, replay=large and k > 1),
                    target,
                    reference,
                )
            )
    if "fused" in implementations and bfloat16:
        for k in ks:
            rows.append(
                Row(
                    f"KAdam k={k} fused, bf16 state",
                    lambda p, k=k: KAdam(p, lr=1e-3, k=k, fused=True, state_dtype=torch.bfloat16),
                    _floor_bytes(2, 2, replay=large and k > 1),
                )
            )
        if 2 in ks:
            rows.append(
                Row(
                    "KAdam k=2 fused, bf16 state, SR",
                    lambda p: KAdam(p, lr=1e-3, k=2, fused=True, state_dtype=torch.bfloat16, stochastic_rounding=True),
                    _floor_bytes(2, 2, replay=large),
                )
            )
    for k in ks:
        if k > 1 and "fused" in implementations and not large:
            rows.append(
                Row(
                    f"KAdam k={k} fused, all elementwise",
                    lambda p, k=k: KAdam(p, lr=1e-3, k=k, meta_betas=(0.9, 0.999), meta_norm="elementwise", fused=True),
                    _floor_bytes(2 * k),
                )
            )
    return rows


def _parameters(total: int, tensors: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    params = []
    for _ in range(tensors):
        param = torch.nn.Parameter(torch.randn(total // tensors, generator=generator))
        param.grad = torch.randn(total // tensors, generator=generator)
        params.append(param)
    return params


def _last_level_cache_bytes() -> int:
    """Size of the CPU's last-level cache from sysfs (64 MiB where it cannot be read)."""
    for index in (3, 2):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size", encoding="utf-8") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return 64 * MIB


def _peak_extra_bytes(step: Callable[[], object]) -> int:
    """Highest running sum of torch allocations minus frees during ``step`` (profiler memory events)."""
    # The profiler's native side logs start/stop lines on stderr; keep them out of the table.
    saved_stderr = os.dup(2)
    with open(os.devnull, "w", encoding="utf-8") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            ) as profiler:
                step()
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def measure(
    rows: list[Row],
    total: int,
    tensors: int,
    repeats: int,
    progress: Progress,
    memory: bool,
    flush: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Median and best ms/step of every row and of the triad, timed round-robin, each from a cold cache
    when ``flush`` (a read of twice the last-level cache before every timing); ratios from the same run."""
    params = _parameters(total, tensors)  # shared: every optimizer steps the same tensors
    optimizers = [row.build(params) for row in rows]
    a, b = torch.randn(total), torch.randn(total)
    steps: dict[str, Callable[[], object]] = {row.name: opt.step for row, opt in zip(rows, optimizers)}
    steps["triad"] = lambda: a.add_(b, alpha=1e-6)
    times: dict[str, list[float]] = {name: [] for name in steps}
    evict = torch.ones(2 * _last_level_cache_bytes() // 4 if flush else 1)
    task = progress.add_task(f"{total / MIB:.0f}M params", total=repeats + 1)
    for step in steps.values():  # warm-up: state allocation, kernel build/load, first touch
        step()
    progress.advance(task)
    state_bytes = {
        row.name: sum(
            value.nbytes for state in opt.state.values() for value in state.values() if torch.is_tensor(value)
        )
        for row, opt in zip(rows, optimizers)
    }
    for _ in range(repeats):
        for name, step in steps.items():
            evict.sum()
            start = clock()
            step()
            times[name].append(clock() - start)
        progress.advance(task)
    medians = {name: statistics.median(values) for name, values in times.items()}
    bests = {name: min(values) for name, values in times.items()}
    bandwidth = TRIAD_BYTES_PER_ELEMENT * total / bests["triad"]
    results = {
        "params": total,
        "tensors": tensors,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "triad_GBps_best": bandwidth / 1e9,
        "triad_GBps_median": TRIAD_BYTES_PER_ELEMENT * total / medians["triad"] / 1e9,
        "rows": [],
    }
    for row in rows:
        floor_bytes = row.floor_bytes_per_param * total
        entry = {
            "name": row.name,
            "ms_median": 1e3 * medians[row.name],
            "ms_best": 1e3 * bests[row.name],
            "GBps_best": floor_bytes / bests[row.name] / 1e9,
            "vs_fused_adamw_median": statistics.median(
                mine / theirs for mine, theirs in zip(times[row.name], times["torch AdamW fused"])
            ),
            "vs_fused_adamw_best": bests[row.name] / bests["torch AdamW fused"],
            "vs_floor_best": bests[row.name] / (floor_bytes / bandwidth),
            "state_bytes_per_param": state_bytes[row.name] / total,
            "floor_bytes_per_param": row.floor_bytes_per_param,
            "target": row.target,
            "target_reference": row.reference,
            "vs_target_reference_median": statistics.median(
                mine / theirs for mine, theirs in zip(times[row.name], times.get(row.reference, times[row.name]))
            ),
        }
        if memory:
            entry["peak_extra_MB"] = _peak_extra_bytes(steps[row.name]) / 1e6
        results["rows"].append(entry)
    for k in (1, 2, 3):  # foreach against the loop, paired within each round
        loop, foreach = times.get(f"KAdam k={k} loop"), times.get(f"KAdam k={k} foreach")
        if loop and foreach:
            results.setdefault("foreach_vs_loop_median", {})[k] = statistics.median(
                f / lp for f, lp in zip(foreach, loop)
            )
    progress.remove_task(task)
    del optimizers, params
    return results


def _table(results: dict, title: str) -> Table:
    table = Table(title=title)
    columns = [
        "implementation",
        "median ms",
        "best ms",
        "GB/s (best)",
        "× fused AdamW (median)",
        "× fused AdamW (best)",
        "× floor (best)",
        "floor B/param (÷ 28)",
        "target (median ratio)",
        "state B/param",
    ]
    if "peak_extra_MB" in results["rows"][0]:
        columns.append("peak extra MB")
    for column in columns:
        table.add_column(column, justify="left" if column == "implementation" else "right")
    for row in results["rows"]:
        ratio, target = row["vs_fused_adamw_median"], row["target"]
        reached = row["vs_target_reference_median"]
        verdict = (
            ""
            if target is None
            else (
                f"{reached:.2f} ≤ {target:.2f} × {row['target_reference'].removeprefix('torch ')}: "
                f"{'met' if reached <= target else 'MISSED'}"
            )
        )
        cells = [
            row["name"],
            f"{row['ms_median']:.1f}",
            f"{row['ms_best']:.1f}",
            f"{row['GBps_best']:.2f}",
            f"{ratio:.2f}",
            f"{row['vs_fused_adamw_best']:.2f}",
            f"{row['vs_floor_best']:.2f}",
            f"{row['floor_bytes_per_param']} ({row['floor_bytes_per_param'] / 28:.2f})",
            verdict,
            f"{row['state_bytes_per_param']:.2f}",
        ]
        if "peak_extra_MB" in row:
            cells.append(f"{row['peak_extra_MB']:.1f}")
        table.add_row(*cells)
    return table


def _measure_in_fresh_process(table: str) -> dict:
    """One table measured by a new process of this script (same arguments and environment), so that no table's
    timings depend on what the tables before it allocated and freed."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "table.json")
        command = [
            sys.executable,
            os.path.abspath(__file__),
            *sys.argv[1:],
            "--one-table",
            table,
            "--one-table-out",
            path,
        ]
        subprocess.run(command, check=True)
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=16 * MIB, help="parameters in the main table (default 16M)")
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--sweep", type=str, default="1,4,16,64", help="parameter counts in M for the sweep ('' to skip)"
    )
    parser.add_argument(
        "--large",
        type=int,
        default=None,
        help="tensors of the second table: the same parameters in this many tensors, each larger than the fused "
        "kernel's group buffer of 2^20 elements (default: tensors of 2^21 elements; 0 to skip)",
    )
    parser.add_argument("--quick", action="store_true", help="4M parameters, 5 repeats, sweep 1M and 4M")
    parser.add_argument("--json", type=str, default=None, help="write all numbers to this file")
    parser.add_argument("--omp-default", action="store_true", help="keep libgomp's default wait policy")
    parser.add_argument(
        "--malloc-default",
        action="store_true",
        help="keep glibc's dynamic mmap threshold (large blocks then come from recycled heap memory or fresh "
        "mappings depending on what was freed before)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (the step time; needs a quiet machine); cpu: this thread's CPU time "
        "(time.thread_time, with --threads 1 only), which leaves out the time another process holds the core "
        "on a shared machine, though not the caches it evicts meanwhile",
    )
    # Internal: measure one table (main, large or sweep:N) and write it to --one-table-out as JSON.
    parser.add_argument("--one-table", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one-table-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="do not evict the last-level cache before each timing (steps may then run from cache)",
    )
    args = parser.parse_args()
    restart = False
    if "OMP_WAIT_POLICY" not in os.environ and not args.omp_default:
        # libgomp reads the policy when torch loads it, so it takes a fresh process.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        restart = True
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and not args.malloc_default:
        # glibc reads it at start-up: every allocation of 128 KiB or more a fresh mapping, whichever row makes it.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
        restart = True
    if restart:
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.quick:
        args.params, args.repeats, args.sweep = 4 * MIB, 5, "1,4"
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit(f"--clock cpu times one thread: it needs --threads 1, got {args.threads}")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    console = Console(width=max(Console().width, 150))
    report = {"load_average_start": os.getloadavg(), "clock": args.clock}
    buffer_elements = 2**20  # kBufferElements of csrc/fused_kadam_cpu.cpp
    if args.large is None:
        args.large = args.params // 2**21 if args.params > buffer_elements else 0
    if args.large and args.params // args.large <= buffer_elements:
        raise SystemExit(f"--large {args.large}: {args.params} parameters in {args.large} tensors fit the buffer")
    main_rows = _rows(["loop", "foreach", "fused"], [1, 2, 3], large=args.params // args.tensors > buffer_elements)
    large_rows = _rows(["fused"], [1, 2, 3], large=True)
    sweep_rows = [row for row in _rows(["fused"], [1, 2, 3]) if "elementwise" not in row.name]
    sizes = [int(float(size) * MIB) for size in args.sweep.split(",") if size]
    # Each table's (rows, parameters, tensors, memory column), by the key --one-table names it with.
    tables = {
        "main": (main_rows, args.params, args.tensors, True),
        "large": (large_rows, args.params, args.large, False),
        **{f"sweep:{size}": (sweep_rows, size, args.tensors, False) for size in sizes},
    }
    if args.one_table is not None:  # a child: measure this one table and hand it back
        rows, params, tensors, memory = tables[args.one_table]
        with Progress(console=console, transient=True) as progress:
            result = measure(rows, params, tensors, args.repeats, progress, memory, not args.warm_cache, clock)
        with open(args.one_table_out, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
        return
    report["main"] = _measure_in_fresh_process("main")
    if args.large:
        report["large"] = _measure_in_fresh_process("large")
    report["sweep"] = [_measure_in_fresh_process(f"sweep:{size}") for size in sizes]
    report["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    load = (
        f"load average {report['load_average_start'][0]:.1f} at the start, {report['load_average_end'][0]:.1f} at "
        f"the end on {os.cpu_count()} CPUs"
    )
    for key in ("main", "large"):
        if key not in report:
            continue
        result = report[key]
        size = result["params"] // result["tensors"]
        console.print(
            _table(
                result,
                f"{result['params'] / MIB:.0f}M float32 params in {result['tensors']} tensors of {size} "
                f"({'larger than' if size > buffer_elements else 'within'} the fused kernel's group buffer), "
                f"{result['threads']} threads, triad {result['triad_GBps_best']:.2f} GB/s best "
                f"({result['triad_GBps_median']:.2f} median), {result['repeats']} repeats, "
                f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
                f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}, {args.clock} clock, "
                f"{'warm' if args.warm_cache else 'cold'} cache, {load}",
            )
        )
    main = report["main"]
    ratios = main.get("foreach_vs_loop_median", {})
    if ratios:
        console.print(
            "KAdam foreach ÷ loop, median of paired rounds (issue 16's target: ≤ 1 with tensor-mode "
            "levels): "
            + ", ".join(
                f"k={k} {ratio:.2f}×{'' if int(k) == 1 else (' met' if ratio <= 1 else ' MISSED')}"
                for k, ratio in ratios.items()
            )
        )
    if not report["sweep"]:
        return
    sweep = Table(title="Scaling (fused): median ms/step (median × fused AdamW)")
    sweep.add_column("params")
    sweep.add_column("triad GB/s (best)", justify="right")
    for row in sweep_rows:
        sweep.add_column(row.name, justify="right")
    for result in report["sweep"]:
        sweep.add_row(
            f"{result['params'] / MIB:g}M",
            f"{result['triad_GBps_best']:.2f}",
            *[f"{r['ms_median']:.1f} ({r['vs_fused_adamw_median']:.2f}×)" for r in result["rows"]],
        )
    console.print(sweep)


if __name__ == "__main__":
    main()
