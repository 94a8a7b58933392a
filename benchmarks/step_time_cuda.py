r"""Time per optimizer step on a GPU: the Triton k-Adam kernel against torch's fused AdamW.

Rows, each timed on the same parameters (float32, split into ``--tensors`` tensors) in the same run:

* ``torch AdamW fused``: ``torch.optim.AdamW(fused=True)``, the reference of every ratio;
* ``KAdam loop k=2``: ``KAdam(foreach=False)``, the single-tensor implementation, default 2-Adam;
* ``KAdam foreach k=2``: ``KAdam(foreach=True)``;
* ``triton k=1`` / ``k=2`` / ``k=3``: :func:`kadam.optimizer._triton.triton_fused_kadam_` called directly
  with the default levels (level 1 (0.9, 0.999) elementwise, levels 2..k (0, 0.999) in tensor mode), step
  counts and a tensor lr on the device, as a capturable optimizer would hold them.

Columns: median and best ms per step (CUDA events, after warm-up), × fused AdamW (ratio of medians),
state bytes per parameter, the kernel's designed traffic in bytes per parameter
(:func:`~kadam.optimizer._triton.stream_counts` × 4; torch's fused AdamW moves 28), and × floor: the
median time over the time that traffic takes at the bandwidth of an in-place triad ``a += s·b`` over
arrays as large as the parameters (12 bytes per element), measured in the same run. The issue's GPU
targets at ≥ 64M parameters: k = 1 ≤ 1.05×, k = 2 ≤ 1.3×, k = 3 ≤ 1.7× fused AdamW, each ≤ 1.25× its floor.

``--device cpu`` runs the torch and loop rows only (no Triton kernel on the CPU): a check of the script.

Usage: ``python benchmarks/step_time_cuda.py [--sizes 1M,4M,16M,64M,256M] [--tensors 64] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from kadam import KAdam
from kadam.vocabulary import Level

DEFAULT_LEVEL = (0.9, 0.999, 1e-8, "elementwise")
META_LEVEL = (0.0, 0.999, 1e-8, "tensor")
TRIAD_BYTES_PER_ELEMENT = 12


def default_levels(k: int) -> list[Level]:
    return [Level(*DEFAULT_LEVEL)] + [Level(*META_LEVEL) for _ in range(k - 1)]


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def make_params(n_params: int, n_tensors: int, device: torch.device) -> list[torch.nn.Parameter]:
    """``n_tensors`` float32 tensors of about equal size, with a fixed gradient each."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    sizes = [n_params // n_tensors + (1 if j < n_params % n_tensors else 0) for j in range(n_tensors)]
    params = []
    for size in sizes:
        param = torch.nn.Parameter(torch.randn(size, generator=generator).to(device))
        param.grad = torch.randn(size, generator=generator).to(device) * 1e-3
        params.append(param)
    return params


class TritonStep:
    """The Triton kernel with its own state (β = 0 levels keep no first moment)."""

    def __init__(self, params: list[torch.nn.Parameter], k: int) -> None:
        from kadam.optimizer._triton import triton_fused_kadam_  # noqa: PLC0415 (needs triton and a GPU)

        self.kernel = triton_fused_kadam_
        self.params = [p.detach() for p in params]
        self.grads = [p.grad for p in params]
        self.levels = default_levels(k)
        device = params[0].device
        self.exp_avgs = [None if lv.beta == 0.0 else [torch.zeros_like(p) for p in self.params] for lv in self.levels]
        self.exp_avg_sqs = [
            [torch.zeros((), device=device) if lv.tensor_mode else torch.zeros_like(p) for p in self.params]
            for lv in self.levels
        ]
        self.steps = [torch.zeros((), device=device) for _ in self.params]
        self.lr = torch.tensor(1e-3, device=device)

    def step(self) -> None:
        self.kernel(
            self.params,
            self.grads,
            self.exp_avgs,
            self.exp_avg_sqs,
            self.steps,
            levels=self.levels,
            lr=self.lr,
            weight_decay=1e-2,
            decoupled=True,
            maximize=False,
        )

    def state_bytes(self) -> int:
        tensors = (
            [t for ms in self.exp_avgs if ms for t in ms] + [t for vs in self.exp_avg_sqs for t in vs] + self.steps
        )
        return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(function: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            function()
            times.append((time.perf_counter() - begin) * 1e3)
    return times


def triad_bandwidth(n_params: int, device: torch.device, repeats: int) -> float:
    """Bytes per second of a += s·b in place over arrays of ``n_params`` float32 (best of ``repeats``)."""
    a = torch.ones(n_params, device=device)
    b = torch.ones(n_params, device=device)
    best = min(time_ms(lambda: a.add_(b, alpha=1e-7), device, repeats, warmup=3))
    return TRIAD_BYTES_PER_ELEMENT * n_params / (best * 1e-3)


def rows_for(
    params: list[torch.nn.Parameter], device: torch.device
) -> list[tuple[str, Callable[[], None], Callable[[], int], int]]:
    """(name, step, state bytes, designed traffic bytes per parameter) per row."""
    rows = []
    adamw = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, fused=True)
    rows.append(("torch AdamW fused", adamw.step, lambda o=adamw: optimizer_state_bytes(o), 28))
    for name, options in (("KAdam loop k=2", {"foreach": False}), ("KAdam foreach k=2", {"foreach": True})):
        optimizer = KAdam(params, lr=1e-3, k=2, **options)
        rows.append((name, optimizer.step, lambda o=optimizer: optimizer_state_bytes(o), 0))
    if device.type == "cuda":
        from kadam.optimizer._triton import stream_counts  # noqa: PLC0415

        for k in (1, 2, 3):
            runner = TritonStep(params, k)
            reads, writes = stream_counts(runner.levels, weight_decay=1e-2, decoupled=True)
            rows.append((f"triton k={k}", runner.step, runner.state_bytes, 4 * (reads + writes)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--sizes", default="1M,4M,16M,64M,256M", help="parameter counts, e.g. 1M,64M")
    parser.add_argument("--tensors", type=int, default=64, help="tensors the parameters are split into")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    title = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (torch and loop rows only)"
    print(f"step time, {title}, torch {torch.__version__}, float32, {args.tensors} tensors, median of {args.repeats}")
    header = (
        f"{'params':>7} {'row':<20} {'median ms':>10} {'best ms':>9} {'x AdamW':>8} {'state B/p':>9} "
        f"{'traffic B/p':>11} {'x floor':>8}"
    )
    print(header)
    results = []
    for size_text in args.sizes.split(","):
        n_params = parse_size(size_text)
        params = make_params(n_params, args.tensors, device)
        bandwidth = triad_bandwidth(n_params, device, args.repeats)
        reference_median = None
        for name, step, state_bytes, traffic in rows_for(params, device):
            repeats = args.repeats if "loop" not in name or n_params <= 2**24 else max(3, args.repeats // 4)
            try:
                times = time_ms(step, device, repeats, warmup=3)
            except Exception as error:  # one failing row must not hide the others
                print(f"{size_text:>7} {name:<20} failed: {type(error).__name__}: {error}")
                results.append({"params": n_params, "row": name, "error": repr(error)})
                continue
            median, best = statistics.median(times), min(times)
            reference_median = reference_median or median
            floor_ms = traffic * n_params / bandwidth * 1e3 if traffic else float("nan")
            row = {
                "params": n_params,
                "row": name,
                "median_ms": median,
                "best_ms": best,
                "ratio_to_adamw": median / reference_median,
                "state_bytes_per_param": state_bytes() / n_params,
                "traffic_bytes_per_param": traffic or None,
                "ratio_to_floor": median / floor_ms if traffic else None,
                "triad_gb_per_s": bandwidth / 1e9,
            }
            results.append(row)
            floor_text = f"{row['ratio_to_floor']:8.2f}" if traffic else f"{'-':>8}"
            print(
                f"{size_text:>7} {name:<20} {median:10.3f} {best:9.3f} {row['ratio_to_adamw']:8.2f} "
                f"{row['state_bytes_per_param']:9.2f} {traffic or '-':>11} {floor_text}"
            )
        print(f"{size_text:>7} {'(triad bandwidth)':<20} {bandwidth / 1e9:10.1f} GB/s")
        del params
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
