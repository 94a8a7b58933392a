"""The Triton k-Adam kernel on a CUDA GPU: against the loop, torch's fused AdamW, inside a CUDA graph,
under ``torch.compile`` and with ``torch.amp.GradScaler`` (run by ``benchmarks/gpu_check.sh``).

Skipped, with that reason, where torch sees no CUDA device; the same arithmetic is checked on every
machine by test_triton_kernel.py (Triton's interpreter) and test_triton_compile.py (sm_90 build).
"""

from __future__ import annotations

import pytest
import torch

from kadam import KAdam
from kadam.vocabulary import Level

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)

DEVICE = "cuda"
SHAPES = [(0,), (1,), (7,), (1000,), (4097,), (300, 257)]


def Lvl(beta: float, gamma: float, eps: float, tensor_mode: bool) -> Level:
    """A :class:`kadam.vocabulary.Level` from (β, γ, ε, tensor mode)."""
    return Level(beta, gamma, eps, "tensor" if tensor_mode else "elementwise")


DEFAULT_2 = [Lvl(0.9, 0.999, 1e-8, False), Lvl(0.0, 0.999, 1e-8, True)]
CONFIGS = {
    "k1": [Lvl(0.9, 0.999, 1e-8, False)],
    "k2-default": DEFAULT_2,
    "k3-default": DEFAULT_2 + [Lvl(0.0, 0.999, 1e-8, True)],
    "k2-tensor-kept-m": [Lvl(0.9, 0.999, 1e-8, True), Lvl(0.5, 0.99, 1e-8, True)],
    "k2-replay-gradient": [Lvl(0.0, 0.99, 1e-8, True), Lvl(0.9, 0.999, 1e-8, False)],
}


def _kernel():
    import kadam.optimizer._triton as module  # noqa: PLC0415 (imports triton)

    if module._is_interpreted():
        pytest.skip("TRITON_INTERPRET=1 is set for this session: these tests are for the compiled kernel")
    return module


def _state_keys(level: int) -> tuple[str, str]:
    return ("exp_avg", "exp_avg_sq") if level == 1 else (f"exp_avg_{level}", f"exp_avg_sq_{level}")


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def _initial(shapes, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype).to(DEVICE) for s in shapes]


def _gradients(shapes, steps, dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype).to(DEVICE) for s in shapes]
        for _ in range(steps)
    ]


class KernelRun:
    """Parameters and state stepped by the kernel; steps and lr on the device, as a capturable step."""

    def __init__(self, params, levels, state_dtype=None):
        self.params = [p.clone() for p in params]
        self.levels = levels
        self.exp_avgs = [
            None if lv.beta == 0.0 else [torch.zeros_like(p, dtype=state_dtype or p.dtype) for p in self.params]
            for lv in levels
        ]
        self.exp_avg_sqs = [
            [
                torch.zeros((), device=DEVICE, dtype=state_dtype or p.dtype)
                if lv.tensor_mode
                else torch.zeros_like(p, dtype=state_dtype or p.dtype)
                for p in self.params
            ]
            for lv in levels
        ]
        self.steps = [torch.zeros((), device=DEVICE) for _ in self.params]

    def step(self, grads, lr=1e-2, **options):
        _kernel().triton_fused_kadam_(
            self.params,
            grads,
            self.exp_avgs,
            self.exp_avg_sqs,
            self.steps,
            levels=self.levels,
            lr=lr,
            **{"weight_decay": 0.0, "decoupled": True, "maximize": False, **options},
        )

    def snapshot(self):
        tensors = [*self.params, *self.steps]
        for ms, vs in zip(self.exp_avgs, self.exp_avg_sqs):
            tensors += [*(ms or []), *vs]
        return [t.clone() for t in tensors]


def _loop(params, levels, lr=1e-2, weight_decay=0.0, decoupled=True, maximize=False):
    torch_params = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = KAdam(
        torch_params,
        lr=lr,
        k=len(levels),
        betas=[(lv.beta, lv.gamma) for lv in levels],
        eps=[lv.eps for lv in levels],
        norm=["tensor" if lv.tensor_mode else "elementwise" for lv in levels],
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled,
        maximize=maximize,
        foreach=False,
    )
    return torch_params, optimizer


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize(
    "options",
    [
        {"weight_decay": 0.1, "decoupled": True, "maximize": False},
        {"weight_decay": 0.1, "decoupled": False, "maximize": True},
    ],
    ids=["adamw", "adam-l2-maximize"],
)
def test_triton_matches_loop(config, options):
    levels = CONFIGS[config]
    initial = _initial(SHAPES)
    run = KernelRun(initial, levels)
    torch_params, optimizer = _loop(initial, levels, **options)
    for grads in _gradients(SHAPES, 5):
        for param, grad in zip(torch_params, grads):
            param.grad = grad.clone()
        optimizer.step()
        run.step([g.clone() for g in grads], **options)
    for j, (actual, expected) in enumerate(zip(run.params, torch_params)):
        assert _relative_error(actual, expected) <= 1e-6, j
    # States relative to their largest magnitude over all tensors: a one-element tensor's m can cancel
    # to a few ulps of its inputs, where the loop's and the kernel's roundings differ by an ulp.
    nonempty = [j for j, p in enumerate(torch_params) if p.numel() > 0]
    for i, _level in enumerate(levels):
        for key, kernel_states in zip(_state_keys(i + 1), (run.exp_avgs[i], run.exp_avg_sqs[i])):
            if kernel_states is None:
                continue
            actual = torch.cat([kernel_states[j].reshape(-1) for j in nonempty])
            expected = torch.cat([optimizer.state[torch_params[j]][key].reshape(-1) for j in nonempty])
            assert _relative_error(actual, expected) <= 1e-6, key


def test_k1_matches_torch_fused_adamw():
    initial = _initial(SHAPES[1:])
    run = KernelRun(initial, CONFIGS["k1"])
    torch_params = [torch.nn.Parameter(p.clone()) for p in initial]
    adamw = torch.optim.AdamW(torch_params, lr=1e-2, weight_decay=0.1, fused=True)
    for grads in _gradients(SHAPES[1:], 5):
        for param, grad in zip(torch_params, grads):
            param.grad = grad.clone()
        adamw.step()
        run.step([g.clone() for g in grads], weight_decay=0.1)
    for actual, expected in zip(run.params, torch_params):
        assert _relative_error(actual, expected) <= 1e-6


def test_bfloat16_parameters_with_float32_state_round_once():
    shapes = [(7,), (4097,)]
    initial = _initial(shapes, torch.bfloat16)
    run = KernelRun(initial, DEFAULT_2, state_dtype=torch.float32)
    torch_params, optimizer = _loop([p.float() for p in initial], DEFAULT_2, weight_decay=0.1)
    ulp = torch.finfo(torch.bfloat16).eps
    for grads in _gradients(shapes, 3, torch.bfloat16):
        for param, low, grad in zip(torch_params, run.params, grads):
            param.data.copy_(low.float())
            param.grad = grad.float()
        optimizer.step()
        run.step([g.clone() for g in grads], weight_decay=0.1)
        for low, param in zip(run.params, torch_params):
            expected = param.detach()
            assert ((low.float() - expected).abs() <= ulp * expected.abs() + torch.finfo(torch.bfloat16).tiny).all()


@pytest.mark.parametrize("config", ["k1", "k2-default", "k3-default"])
def test_capturable_inside_a_cuda_graph(config):
    """The step (device steps, tensor lr) captured once and replayed equals the same steps run eagerly."""
    levels = CONFIGS[config]
    initial = _initial(SHAPES)
    eager, graphed = KernelRun(initial, levels), KernelRun(initial, levels)
    static_grads = [torch.zeros_like(p) for p in initial]
    lr = torch.tensor(1e-2, device=DEVICE)
    all_grads = _gradients(SHAPES, 5)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compiles the kernels) outside the capture
        for static, grad in zip(static_grads, all_grads[0]):
            static.copy_(grad)
        graphed.step(static_grads, lr=lr, weight_decay=0.1)
    torch.cuda.current_stream().wait_stream(stream)
    eager.step([g.clone() for g in all_grads[0]], lr=lr.clone(), weight_decay=0.1)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.step(static_grads, lr=lr, weight_decay=0.1)
    for n, grads in enumerate(all_grads[1:], start=1):
        lr.fill_(1e-2 / (n + 1))  # a scheduler changing the tensor lr between replays
        for static, grad in zip(static_grads, grads):
            static.copy_(grad)
        graph.replay()
        eager.step([g.clone() for g in grads], lr=lr.clone(), weight_decay=0.1)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(eager.snapshot(), graphed.snapshot()))
    assert graphed.steps[0].item() == len(all_grads)


def test_torch_compile_of_a_training_step_equals_eager():
    """A compiled training step (forward, backward, kernel; the kernel runs eagerly at a graph break)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(DEVICE)
    twin = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(DEVICE)
    twin.load_state_dict(model.state_dict())
    inputs, targets = torch.randn(64, 16, device=DEVICE), torch.randn(64, 4, device=DEVICE)
    runs = {}
    for name, net in (("eager", model), ("compiled", twin)):
        params = list(net.parameters())
        run = KernelRun([p.detach() for p in params], DEFAULT_2)
        run.params = [p.detach() for p in params]  # step the model's own parameters
        lr = torch.tensor(1e-2, device=DEVICE)

        def train_step(net=net, run=run, lr=lr):
            loss = ((net(inputs) - targets) ** 2).mean()
            loss.backward()
            run.step([p.grad for p in net.parameters()], lr=lr, weight_decay=0.01)
            for p in net.parameters():
                p.grad = None
            return loss.detach()

        step = torch.compile(train_step) if name == "compiled" else train_step
        for n in range(4):
            lr.fill_(1e-2 / (n + 1))
            step()
        runs[name] = [p.detach().clone() for p in params]
    for actual, expected in zip(runs["compiled"], runs["eager"]):
        assert _relative_error(actual, expected) <= 1e-6


def test_grad_scaler_unscales_and_skips_inf_steps():
    """torch.amp.GradScaler drives an optimizer on the kernel as it drives torch's fused Adam."""

    class TritonKAdam(torch.optim.Optimizer):
        def __init__(self, params, lr, levels):
            super().__init__(params, {"lr": lr})
            self.run = KernelRun([p.detach() for p in self.param_groups[0]["params"]], levels)
            self.run.params = [p.detach() for p in self.param_groups[0]["params"]]
            self._step_supports_amp_scaling = True

        def step(self, closure=None):
            grads = [p.grad for p in self.param_groups[0]["params"]]
            self.run.step(
                grads,
                lr=self.param_groups[0]["lr"],
                grad_scale=getattr(self, "grad_scale", None),
                found_inf=getattr(self, "found_inf", None),
            )

    shapes = [(7,), (4097,)]
    initial = _initial(shapes)
    params = [torch.nn.Parameter(p.clone()) for p in initial]
    optimizer = TritonKAdam(params, 1e-2, DEFAULT_2)
    reference = KernelRun(initial, DEFAULT_2)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0, growth_interval=1000)
    generator = torch.Generator().manual_seed(2)
    for step in range(4):
        coefficients = [torch.randn(s, generator=generator).to(DEVICE) for s in shapes]
        optimizer.zero_grad()
        scaler.scale(sum((p * c).sum() for p, c in zip(params, coefficients))).backward()  # grad = scale · c
        if step == 2:
            params[1].grad[0] = float("inf")
            before = optimizer.run.snapshot()
            scaler.step(optimizer)
            scaler.update()
            assert all(torch.equal(a, b) for a, b in zip(before, optimizer.run.snapshot()))
            continue
        scaler.step(optimizer)
        scaler.update()
        reference.step([c.clone() for c in coefficients])
        for param, coefficient in zip(params, coefficients):
            torch.testing.assert_close(param.grad, coefficient, rtol=1e-6, atol=0)  # unscaled in place
    for actual, expected in zip(params, reference.params):
        assert _relative_error(actual, expected) <= 1e-6
    assert optimizer.run.steps[0].item() == 3


@pytest.mark.parametrize(
    "options",
    [
        {"k": 2},
        {"k": 3},
        {"k": 2, "meta_norm": "elementwise"},
        {"k": 2, "betas": (0.0, 0.999), "decoupled_weight_decay": False},
    ],
)
def test_kadam_fused_on_cuda_runs_the_triton_kernel_and_matches_the_loop(options):
    """KAdam(fused=True)'s dispatch on CUDA (test_triton_dispatch.py checks it on the CPU, interpreted)."""
    import kadam.optimizer.kadam as kadam_module  # noqa: PLC0415

    calls = []
    original = kadam_module._triton_fused_kadam
    kadam_module._triton_fused_kadam = lambda *args, **kwargs: (calls.append(1), original(*args, **kwargs))
    try:
        shapes = [(7,), (4097,), (300, 257)]
        initial = _initial(shapes)
        runs = {}
        for flags in ({"fused": True}, {"foreach": False}):
            params = [torch.nn.Parameter(p.clone()) for p in initial]
            optimizer = KAdam(params, lr=1e-2, weight_decay=0.1, **flags, **options)
            for grads in _gradients(shapes, 3):
                for param, grad in zip(params, grads):
                    param.grad = grad.clone()
                optimizer.step()
            runs["fused" if flags.get("fused") else "loop"] = (params, optimizer)
    finally:
        kadam_module._triton_fused_kadam = original
    assert len(calls) == 3
    (fused_params, fused), (loop_params, loop) = runs["fused"], runs["loop"]
    for a, b in zip(fused_params, loop_params):
        assert _relative_error(a, b) <= 1e-6
        for key, value in loop.state[b].items():
            if isinstance(value, torch.Tensor):
                assert _relative_error(fused.state[a][key].to(value.device), value) <= 1e-6, key


def test_kadam_fused_float64_on_cuda_raises():
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64, device=DEVICE))
    param.grad = torch.ones_like(param)
    with pytest.raises(RuntimeError, match="runs the Triton kernel"):
        KAdam([param], k=2, fused=True).step()
