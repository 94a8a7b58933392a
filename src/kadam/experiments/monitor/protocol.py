r"""Does the stability monitor warn before a run blows up, stay quiet otherwise, and can its guard act?

**Runs** (:func:`validation_run`). One workload (:data:`WORKLOADS`) trained by ``torch.optim.AdamW`` with a
:class:`kadam.monitor.StabilityMonitor` at its defaults attached (``every=1``), whose per-step series are
recorded so that any detector can be replayed on them afterwards. A *family* (:data:`FAMILIES`) sets up a
known cause of failure in its ``failing`` arm and the same run without it in its ``healthy`` arm:

- ``lr``: a learning rate far past the usual one from the start;
- ``ramp``: the learning rate grows geometrically over the run, to far past the usual one (failing) or to a
  usual one (healthy);
- ``jump``: the learning rate jumps mid-run (a schedule bug), to far past the usual one or by a factor 2;
- ``region``: (β, γ) outside the stable region γ > β² (THEORY §2) vs inside at the same β;
- ``silence``: one embedding row's gradient held at zero for most of the run, then multiplied by a large
  factor once (a rare token returning), γ close to 1 (char-transformer only);
- ``small_gamma``: γ too small for the batch's gradient noise, inside the stable region (β = 0.5,
  γ = 0.3, small batch), vs the default (0.9, 0.999);
- ``corrupt``: one training batch with its inputs multiplied by 1e3 mid-run;
- ``warmup``: a high learning rate without warmup vs with a linear warmup (char-transformer only).

**Outcome, decided by the run alone** (:func:`outcome`): ``failed`` if the run has an instability event
(:func:`instability_step`: a non-finite loss, or the median of the last :data:`LOSS_WINDOW` losses above twice
the running minimum of those medians or, once the run has learned, above the loss of ignoring the inputs;
after :data:`SETTLE` steps and the warmup); else ``healthy`` if it
trained (:func:`trained`: its final loss below the task's constant-predictor loss); else ``untrained``
(counted apart). The arm that set a run up is not consulted: a failing-arm run that trains is a healthy
run, and a warning on it is a false alarm. A failure whose onset comes within the first :data:`LEAD` steps
is *early* (no warning can precede it by :data:`LEAD` steps); of the others, one is *sudden* when the median
of the losses just before its onset was within :data:`SUDDEN_FACTOR` of its running minimum (nothing in the
loss announced it: a corrupted batch), else *developing*.

**Detectors**, each replayed on the recorded series (:mod:`kadam.experiments.monitor.analysis`, which also
scores them):

- ``monitor``: the running checks of the monitor at :data:`MONITOR_THRESHOLDS` (those on by default:
  non-finite values, loss growth, the rise of the update/parameter ratio; :mod:`kadam.monitor.rules`), the
  same state machines it runs live, with the loss handed over. Its attach-time configuration check
  (the region) is reported apart (:func:`configuration_flags`);
- ``loss_spike``: llm-foundry's ``KillLossSpike`` as it is configured there: a loss above 2× the mean of
  the last 100 losses for 5 consecutive steps;
- ``grad_norm_spike``: the global gradient norm above 5× the median of the previous 20 steps (or non-finite);
- ``update_param_ratio``: the largest per-tensor :math:`|\Delta\theta|/|\theta|` above 0.05 (Composer's
  ``OptimizerMonitor`` quantity);
- ``stableadamw_rms``: StableAdamW's clipping indicator (Wortsman et al. 2023), the largest per-tensor
  :math:`\mathrm{RMS}(g^2/\hat v)` above 1.

**Development, seen and held-out** (:func:`split_of`, declared here before any held-out run): the development
set is the runs of :data:`DEVELOPMENT_WORKLOADS` × :data:`DEVELOPMENT_FAMILIES` (any seed): the monitor's
thresholds, the guard's defaults and the families' settings were chosen on these runs only. Every other run is
held out, and it is *fresh* when its seed is in :data:`HELD_OUT_SEEDS` or its workload is in
:data:`NEW_WORKLOADS` (``digits-cnn-bn``, which no earlier version of this protocol ran): these runs informed
no choice, and the report's headline numbers are theirs. The other held-out runs (seeds of :data:`SEEN_SEEDS` on
``digits-cnn``, ``diabetes-mlp`` and the families ``jump`` and ``small_gamma``) were scored by an earlier version
of the protocol and looked at before the present defaults were chosen: they are *seen*, reported apart and
labelled so.

**Interventions** (``intervention``): ``none``; ``guard``, a :class:`kadam.monitor.StabilityGuard` at its
defaults with the monitor; ``clip``, ``torch.nn.utils.clip_grad_norm_`` at 1.0; ``stableadamw``, the guard's
per-tensor update clipping alone. :func:`guard_scores` counts failing runs rescued (final loss within the
band of the workload's healthy runs without intervention) and compares healthy runs with and without each
intervention, paired by seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from kadam import stability
from kadam.experiments.workloads import Split, Task, build_task, seeded_initialisation
from kadam.monitor import StabilityMonitor, Thresholds
from kadam.monitor.monitor import global_grad_norm

__all__ = [
    "DEVELOPMENT_FAMILIES",
    "DEVELOPMENT_WORKLOADS",
    "FAMILIES",
    "HELD_OUT_SEEDS",
    "NEW_WORKLOADS",
    "SEEN_SEEDS",
    "FAMILY_WORKLOADS",
    "INTERVENTIONS",
    "LEAD",
    "PAIR_FAMILY",
    "MONITOR_THRESHOLDS",
    "WORKLOADS",
    "RunSpec",
    "applies",
    "final_loss",
    "instability_step",
    "outcome",
    "sharpness_run",
    "split_of",
    "trained",
    "validation_run",
]

LEAD = 10
"""Steps a warning must precede the instability event to count for recall."""
SETTLE = 20
"""Steps after the start (and after the warmup) before the instability definition applies."""
LOSS_WINDOW = 5
"""Steps of training loss whose median the instability definition compares with its running minimum."""
FINAL_LOSS_STEPS = 10
"""A run's final training loss is the median of its last this many steps."""
LEARNED = 0.8
"""A run has learned something once its running minimum loss is below this share of the constant-predictor loss."""
SUDDEN_FACTOR = 1.2
"""A failure is sudden when the losses just before its onset were within this factor of their running minimum."""

WORKLOADS = ("mnist1d-mlp", "char-transformer", "digits-cnn", "diabetes-mlp", "digits-cnn-bn")
"""An MLP classifier, a character transformer, a CNN, an MLP regression and a CNN with batch normalisation."""
DEVELOPMENT_WORKLOADS = ("mnist1d-mlp", "char-transformer")
DEVELOPMENT_FAMILIES = ("lr", "ramp", "region", "silence", "corrupt", "warmup")
NEW_WORKLOADS = ("digits-cnn-bn",)
"""Workloads no earlier version of this protocol ran: every run of theirs is fresh held-out."""
SEEN_SEEDS = (1, 2, 3, 4, 5)
"""Seeds the earlier versions of this protocol ran (runs and healthy pairs): held-out runs with them are seen."""
HELD_OUT_SEEDS = tuple(range(11, 31))
"""Seeds reserved for fresh held-out runs: no run with them existed before this declaration."""
INTERVENTIONS = ("none", "guard", "clip", "stableadamw")
PAIR_FAMILY = "lr"
"""The family whose healthy arm, run with and without each intervention, measures what an intervention costs a
healthy run (the usual learning rate, nothing else changed)."""

FAMILIES: Mapping[str, Mapping[str, Mapping[str, Any]]] = {
    "lr": {"failing": {"lr": 1.0}, "healthy": {"lr": 3e-3}},
    "ramp": {"failing": {"lr": 1e-3, "ramp_to": 3.0}, "healthy": {"lr": 1e-3, "ramp_to": 1e-2}},
    "jump": {"failing": {"lr": 1e-3, "jump_to": 0.5}, "healthy": {"lr": 1e-3, "jump_to": 2e-3}},
    "region": {"failing": {"betas": (0.99, 0.1), "lr": 3e-3}, "healthy": {"betas": (0.99, 0.999), "lr": 3e-3}},
    "silence": {
        "failing": {"lr": 1e-2, "betas": (0.9, 0.99999), "spike": 1e4},
        "healthy": {"lr": 1e-2, "betas": (0.9, 0.99999), "spike": 1.0},
    },
    "small_gamma": {
        "failing": {"lr": 1e-2, "betas": (0.5, 0.3), "batch_divisor": 4},
        "healthy": {"lr": 1e-2, "betas": (0.9, 0.999), "batch_divisor": 4},
    },
    "corrupt": {"failing": {"corrupt_scale": 1e3}, "healthy": {"corrupt_scale": 1.0}},
    "warmup": {"failing": {"lr": 0.1, "warmup": 0}, "healthy": {"lr": 0.1, "warmup": 50}},
}
"""Family → arm → the run settings that differ from :class:`RunSpec`'s defaults."""
FAMILY_WORKLOADS: Mapping[str, tuple[str, ...]] = {"silence": ("char-transformer",), "warmup": ("char-transformer",)}
"""Families that apply to some workloads only: the silence needs a token embedding; only the transformer has
a learning rate where a warmup decides the outcome."""

MONITOR_THRESHOLDS = Thresholds()
"""The monitor's thresholds in the protocol: its defaults, the ones users get."""


def applies(family: str, workload: str) -> bool:
    """Whether ``family`` is run on ``workload`` (:data:`FAMILY_WORKLOADS`)."""
    return workload in FAMILY_WORKLOADS.get(family, WORKLOADS)


def split_of(workload: str, family: str, seed: int) -> str:
    """``"development"`` for :data:`DEVELOPMENT_WORKLOADS` × :data:`DEVELOPMENT_FAMILIES`; else ``"held-out"`` (fresh)
    for a seed of :data:`HELD_OUT_SEEDS` or a workload of :data:`NEW_WORKLOADS`; else ``"seen"``."""
    if workload in DEVELOPMENT_WORKLOADS and family in DEVELOPMENT_FAMILIES:
        return "development"
    return "held-out" if seed in HELD_OUT_SEEDS or workload in NEW_WORKLOADS else "seen"


@dataclass(frozen=True)
class RunSpec:
    """One protocol run: workload and sizes, the family and arm that set it up, optimizer settings,
    and the intervention."""

    workload: str
    family: str
    arm: str
    seed: int
    steps: int
    batch_size: int
    sizes: Mapping[str, Any]
    intervention: str = "none"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 0
    ramp_to: float | None = None
    jump_to: float | None = None
    jump_at: float = 0.5
    spike: float | None = None
    silence_start: float = 0.1
    silence_end: float = 0.6
    corrupt_scale: float | None = None
    corrupt_at: float = 0.5
    batch_divisor: int = 1


# ----------------------------------------------------------------------------------------------------
# the regression workload


def _diabetes_task(device: torch.device, hidden: int = 32) -> Task:
    """scikit-learn's diabetes data (442 patients, 10 features), standardised, targets standardised; an MLP
    regression with the mean squared error. Split 60/20/20 with a fixed permutation."""
    from sklearn.datasets import load_diabetes

    inputs, targets = load_diabetes(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(targets))
    inputs = (inputs - inputs.mean(0)) / inputs.std(0)
    targets = (targets - targets.mean()) / targets.std()
    x = torch.tensor(inputs[order], dtype=torch.float32)
    y = torch.tensor(targets[order], dtype=torch.float32).unsqueeze(1)
    cut1, cut2 = int(0.6 * len(y)), int(0.8 * len(y))
    splits = {
        "train": Split(x[:cut1], y[:cut1]),
        "validation": Split(x[cut1:cut2], y[cut1:cut2]),
        "test": Split(x[cut2:], y[cut2:]),
    }

    def make_model() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(10, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, 1),
        )

    return _RegressionTask("diabetes-mlp", splits, make_model, device=device)


class _RegressionTask(Task):
    """A :class:`~kadam.experiments.workloads.Task` with the mean squared error; its constant predictor is the
    training targets' mean, whose loss is their variance."""

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.nn.functional.mse_loss(logits, targets)

    def constant_predictor_loss(self) -> float:
        targets = self.splits["train"].targets.double()
        return float(((targets - targets.mean()) ** 2).mean())


def build_workload(workload: str, device: str | torch.device = "cpu", **sizes: Any) -> Task:
    """Workload ``workload`` (one of :data:`WORKLOADS`) at the given sizes; built once per process (a task's data
    is read, never written, by its runs)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    return _built(workload, str(device), tuple(sorted(sizes.items())))


@functools.lru_cache(maxsize=8)
def _built(workload: str, device: str, sizes: tuple[tuple[str, Any], ...]) -> Task:
    if workload == "diabetes-mlp":
        return _diabetes_task(torch.device(device), **dict(sizes))
    return build_task(workload, device, **dict(sizes))


# ----------------------------------------------------------------------------------------------------
# outcome


def instability_step(
    losses: Sequence[float], start: int, constant_loss: float = math.inf, window: int = LOSS_WINDOW
) -> int | None:
    """The first step n > ``start`` (1-based) whose loss is non-finite, or whose median over the last ``window``
    losses (fewer at the start) exceeds twice the running minimum of those medians before n, or exceeds
    ``constant_loss`` (the loss of ignoring the inputs) after that minimum was below :data:`LEARNED` of it (the
    run had learned and lost it); None if none."""
    running = math.inf
    for n in range(1, len(losses) + 1):
        if not math.isfinite(losses[n - 1]):
            if n > start:
                return n
            continue
        recent = losses[max(0, n - window) : n]
        median = float(np.median(recent)) if all(math.isfinite(loss) for loss in recent) else math.inf
        collapsed = running < LEARNED * constant_loss and median > constant_loss
        if n > start and (median > 2.0 * running or collapsed):
            return n
        running = min(running, median)
    return None


def final_loss(run: Mapping[str, Any]) -> float:
    """The median training loss of the run's last :data:`FINAL_LOSS_STEPS` steps (NaN if any is non-finite or
    the run stopped early)."""
    if len(run["losses"]) < run["spec"]["steps"]:
        return math.nan
    last = run["losses"][-FINAL_LOSS_STEPS:]
    return float(np.median(last)) if last and all(math.isfinite(v) for v in last) else math.nan


def trained(run: Mapping[str, Any]) -> bool:
    """Whether the run ran all its steps and its :func:`final_loss` is below the task's constant-predictor loss."""
    return final_loss(run) < run["constant_loss"]


def outcome(run: Mapping[str, Any]) -> str:
    """``"failed"``, ``"healthy"`` or ``"untrained"`` (module docstring), from the run's losses alone."""
    if run["instability_step"] is not None:
        return "failed"
    return "healthy" if trained(run) else "untrained"


def _sudden(losses: Sequence[float], onset: int) -> bool:
    """Whether the median of the :data:`LOSS_WINDOW` losses before ``onset`` was within :data:`SUDDEN_FACTOR` of
    the running minimum of such medians: the loss gave no sign before the step that failed."""
    before = [v for v in losses[: onset - 1] if math.isfinite(v)]
    if len(before) < LOSS_WINDOW:
        return False
    medians = [float(np.median(before[max(0, i - LOSS_WINDOW + 1) : i + 1])) for i in range(len(before))]
    return medians[-1] <= SUDDEN_FACTOR * min(medians)


# ----------------------------------------------------------------------------------------------------
# a run


def _schedule(spec: RunSpec) -> Callable[[int], float]:
    """The lr multiplier at (0-based) step index ``i``: warmup, geometric ramp or a jump, else 1."""
    if spec.warmup:
        return lambda i: min(1.0, (i + 1) / spec.warmup)
    if spec.ramp_to is not None:
        growth = (spec.ramp_to / spec.lr) ** (1.0 / max(spec.steps - 1, 1))
        return lambda i: growth**i
    if spec.jump_to is not None:
        at = int(spec.jump_at * spec.steps)
        factor = spec.jump_to / spec.lr
        return lambda i: factor if i >= at else 1.0
    return lambda i: 1.0


def _silence_hook(model: torch.nn.Module, spec: RunSpec) -> dict[str, int]:
    """Zero the gradient of one embedding row during the silence, then multiply it by ``spec.spike`` once."""
    embedding = getattr(model, "token_embedding", None)
    if embedding is None:
        raise ValueError(f"family 'silence' needs a model with token_embedding, workload {spec.workload!r} has none")
    clock = {"step": 0}
    row = 1
    first, last = int(spec.silence_start * spec.steps), int(spec.silence_end * spec.steps)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        step = clock["step"]
        if first <= step < last:
            grad = grad.clone()
            grad[row] = 0.0
        elif step == last and spec.spike is not None:
            grad = grad.clone()
            grad[row] = grad[row] * spec.spike
        return grad

    embedding.weight.register_hook(hook)
    return clock


def _spec(
    workload: str,
    family: str,
    arm: str,
    seed: int,
    steps: int,
    batch_size: int,
    sizes: Mapping[str, Any],
    intervention: str,
    settings: Mapping[str, Any] | None,
) -> RunSpec:
    if family not in FAMILIES or arm not in ("failing", "healthy"):
        raise ValueError(f"family must be one of {sorted(FAMILIES)} and arm failing|healthy, got {family!r}, {arm!r}")
    if intervention not in INTERVENTIONS:
        raise ValueError(f"intervention must be one of {INTERVENTIONS}, got {intervention!r}")
    settings = FAMILIES[family][arm] if settings is None else settings
    return RunSpec(workload, family, arm, seed, steps, batch_size, dict(sizes), intervention, **settings)


def validation_run(
    workload: str,
    family: str,
    arm: str,
    seed: int,
    steps: int,
    batch_size: int,
    sizes: Mapping[str, Any],
    intervention: str = "none",
    device: str = "cpu",
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one protocol run with the monitor at every step; a JSON-serialisable record.

    Per step: the training loss (of the batch the step used), the global gradient norm, the largest
    per-tensor update/parameter ratio, and from the monitor the secant curvature and the edge, the largest
    per-tensor StableAdamW RMS and spike factor; the monitor's events (live, at its defaults); the guard's
    actions; the outcome's ingredients (instability step, onset, constant-predictor loss).
    """
    spec = _spec(workload, family, arm, seed, steps, batch_size, sizes, intervention, settings)
    built = build_workload(spec.workload, device, **spec.sizes)
    with seeded_initialisation(spec.seed):
        model = built.make_model().to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay
    )
    factor = _schedule(spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    monitor = StabilityMonitor(optimizer, every=1, names=model, thresholds=MONITOR_THRESHOLDS, warn=False)
    guard = None
    if spec.intervention in ("guard", "stableadamw"):
        from kadam.monitor import StabilityGuard

        only_clip = {"clip_updates": True, "skip_nonfinite": False, "skip_outliers": False, "lower_lr": False}
        guard = (
            StabilityGuard(optimizer, monitor=monitor, warn=False)
            if spec.intervention == "guard"
            else StabilityGuard(optimizer, warn=False, **only_clip)
        )
    generator = torch.Generator().manual_seed(spec.seed)
    parameters = list(model.parameters())
    silenced = _silence_hook(model, spec) if spec.family == "silence" else None
    corrupt_step = int(spec.corrupt_at * spec.steps) if spec.corrupt_scale not in (None, 1.0) else None
    batch = max(1, spec.batch_size // spec.batch_divisor)
    losses, grad_norms, update_ratios, lrs = [], [], [], []
    # not workloads.train: the gradient norm and the parameters are read between backward and step, and the
    # families change the batch, the gradient or the learning rate inside the loop
    for step in range(1, spec.steps + 1):
        if silenced is not None:
            silenced["step"] = step
        inputs, targets = built.sample_batch(generator, batch)
        if step == corrupt_step:
            inputs = inputs * spec.corrupt_scale if inputs.is_floating_point() else inputs
        loss = built.loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == corrupt_step and not inputs.is_floating_point():  # token inputs: corrupt the gradient instead
            for p in parameters:
                if p.grad is not None:
                    p.grad.mul_(spec.corrupt_scale)
        grad_norms.append(float(global_grad_norm([p.grad for p in parameters if p.grad is not None])))
        if spec.intervention == "clip":
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        before = [p.detach().clone() for p in parameters]
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        monitor.observe_loss(loss)
        if guard is not None:
            guard.observe_loss(loss)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            changes = torch._foreach_norm(torch._foreach_sub([p.detach() for p in parameters], before))
            norms = torch._foreach_norm(before)
            ratios = [float(c / n) for c, n in zip(changes, norms) if float(n) > 0]
        losses.append(loss.item())
        update_ratios.append(max(ratios) if ratios else math.nan)
        if not math.isfinite(losses[-1]):
            break
    monitor.remove()
    if guard is not None:
        guard.remove()
    start = SETTLE + spec.warmup
    constant = built.constant_predictor_loss()
    event = instability_step(losses, start, constant)
    onset = instability_step(losses, 1, constant)
    history = monitor.history
    steps_recorded = history.steps.tolist()

    def per_step(values: Sequence[float]) -> list[float | None]:
        by_step = dict(zip(steps_recorded, values))
        return [_finite_or_none(by_step.get(n, math.nan)) for n in range(1, len(losses) + 1)]

    def tensor_max(quantity: str) -> list[float | None]:
        table = history.values[:, :, history.quantities.index(quantity)]
        return per_step([float(np.nanmax(row)) if np.isfinite(row).any() else math.nan for row in table])

    return {
        "spec": {**asdict(spec), "sizes": dict(spec.sizes)},
        "split": split_of(spec.workload, spec.family, spec.seed),
        "constant_loss": constant,
        "losses": losses,
        "grad_norms": grad_norms,
        "update_ratios": update_ratios,
        "lrs": lrs,
        "instability_step": event,
        "onset_step": onset,
        "settle": start,
        "sudden": bool(onset is not None and _sudden(losses, onset)),
        "corrupt_step": corrupt_step,
        "curvature": per_step(history.model["curvature"]),
        "edge": per_step(history.model["edge"]),
        "clip_rms": tensor_max("update_clip_rms"),
        "spike_factor": tensor_max("spike_factor"),
        "monitor_update_ratio": tensor_max("update_param_ratio"),
        "monitor_events": [
            {"step": e.step, "quantity": e.quantity, "kind": e.kind, "value": e.value, "source": e.source}
            for e in monitor.events
        ],
        "guard_events": [
            {"step": e.step, "quantity": e.quantity, "value": e.value}
            for e in (guard.events if guard is not None else [])
        ],
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------------
# the sharpness estimate with a closure


def sharpness_run(
    lr: float,
    seed: int,
    steps: int,
    batch_size: int,
    sizes: Mapping[str, Any],
    every: int,
    iterations: int,
    task: str = "char-transformer",
    beta: float = 0.9,
    device: str = "cpu",
) -> dict[str, Any]:
    """Preconditioned sharpness λ_max(ηP⁻¹H) over training at one learning rate (THEORY §7, Cohen et al.).

    Adam (β, 0.999), mini-batches of ``batch_size``; every ``every`` steps the monitor estimates the
    sharpness on one fixed batch (``iterations`` Lanczos steps) against (2 + 2β)/(1 − β). Returns the
    loss curve, the sharpness series and its threshold, the share of estimates above it, and the seconds
    per step with and without the estimate (the option's cost).
    """
    import time

    built = build_workload(task, device, **sizes)
    with seeded_initialisation(seed):
        model = built.make_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(beta, 0.999))
    generator = torch.Generator().manual_seed(seed)
    probe = built.sample_batch(torch.Generator().manual_seed(seed + 10_000), batch_size)
    monitor = StabilityMonitor(
        optimizer,
        every=every,
        names=model,
        sharpness_every=1,
        warn=False,
        sharpness_closure=lambda: built.loss(model(probe[0]), probe[1]),
        sharpness_iterations=iterations,
    )
    start = time.perf_counter()
    losses = built.fit(model, optimizer, steps, batch_size, generator).losses  # ends at the first non-finite loss
    seconds = time.perf_counter() - start
    monitor.remove()
    history = monitor.history
    sharpness = [_finite_or_none(v) for v in history.model["sharpness"]]
    threshold = float(stability.edge_of_stability(beta))
    finite = [v for v in sharpness if v is not None]
    return {
        "lr": lr,
        "seed": seed,
        "beta": beta,
        "losses": losses,
        "sharpness_steps": history.steps.tolist(),
        "sharpness": sharpness,
        "sharpness_threshold": threshold,
        "seconds_per_step": seconds / max(len(losses), 1),
        "share_above": sum(v > threshold for v in finite) / len(finite) if finite else None,
        "final_over_threshold": finite[-1] / threshold if finite else None,
    }
