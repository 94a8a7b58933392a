r"""Does the stability monitor warn before a run blows up? Its validation protocol.

**Runs.** Each run trains one task with ``torch.optim.Adam`` (or AdamW) for a fixed number of steps
while a :class:`kadam.monitor.StabilityMonitor` records every step. A *knob* is set to a value known to
break training or to a healthy value, all else equal (:data:`KNOBS`):

- ``lr``: the learning rate past the edge vs a usual one (the failing arm diverges within a few steps);
- ``ramp``: the learning rate grows geometrically over the run, past the edge vs to a usual value, so the
  failure, where there is one, comes late and a warning can precede it (char-transformer only: the MLP's
  cross-entropy saturates near ln 10 at large rates, below twice its minimum, so its loss never doubles);
- ``region``: (β, γ) outside the stable region γ > β² (THEORY §2) vs inside, same β;
- ``warmup``: no warmup at a high learning rate vs a linear warmup to the same rate (char-transformer only).
  Both models are pre-LayerNorm or have no attention and train without warmup at usual rates, so the rate
  is one where a warmup matters: at 0.1 the quick profile's transformer trains with a warmup as well as at
  a usual rate and worse without one (it does not blow up); at a higher rate neither arm learns more than
  the character frequencies, and the "healthy" arm would be no healthy run. The full profile's larger
  transformer needs a smaller rate for the same contrast (``MonitorConfig.knob_settings``). The MLP has no
  rate where a warmup matters (both arms train alike, or neither learns);
- ``silence``: one embedding row whose gradient is held at zero for most of the run and then
  multiplied by a large factor (a rare token returning), with γ close to 1, vs the same silence without
  the spike (char-transformer only).

**Instability event** (:func:`instability_step`, the definition in code): the first step after
``settle`` steps (and after the learning-rate warmup) whose training loss is non-finite, or whose median
over the last :data:`LOSS_WINDOW` steps is above twice the running minimum of those medians. The median
keeps one unlucky mini-batch from counting (single-batch losses of a healthy run late in training reach
twice their running minimum, which is itself an outlier). Its *onset* is the first step at which the same
condition held counting from step 2: a failure whose onset lies within the first ``LEAD`` steps cannot be
warned ``LEAD`` steps ahead by anything, so it is reported apart and left out of recall.

**Warnings.** The monitor's: every :class:`~kadam.monitor.StabilityEvent` at its default thresholds
plus the argument thresholds in :data:`MONITOR_THRESHOLDS`. Two baselines computed from the same runs
(:func:`baseline_warnings`): a gradient-norm spike detector (global gradient norm above
``GRAD_SPIKE_FACTOR`` times the median of the previous ``GRAD_WINDOW`` steps), and an update/parameter
ratio threshold (largest per-tensor :math:`|\Delta\theta|/|\theta|` above ``UPDATE_RATIO``, the
quantity Composer's ``OptimizerMonitor`` logs). The thresholds are fixed in this module, not fitted to
the runs, with one exception that the report's numbers carry: the monitor's spike-factor check is off by
default because on these knobs it warned healthy runs and no failure first, so the default monitor's share
of healthy runs warned is not independent of these knobs (the ``monitor_with_spike_factor`` row is the check
left on). The median in the event definition, the ramp knob and leaving never-updated coordinates out of
the sharpness were likewise chosen on these runs; they correct what was measured (mini-batch noise,
failures no warning could precede, an estimate dominated by coordinates the optimizer never moved), and
they change recall and false alarms alike.

**Healthy runs** are the healthy-arm runs without an instability event that trained (:func:`trained`: the
median loss of their last :data:`FINAL_LOSS_STEPS` steps below the task's
:meth:`~kadam.experiments.workloads.Task.constant_predictor_loss`, the loss of predicting the class
frequencies whatever the input). A run that learned nothing from its inputs is no healthy run, and a
warning on it is no false alarm; such runs are counted apart. (This criterion, too, was chosen on these
runs.)

**Scores** (:func:`score`): recall (failing runs, onset after ``LEAD``, warned at least ``LEAD`` steps before their event),
lead-time distribution, false alarms (warnings in healthy runs; share of healthy runs warned).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from kadam.experiments.workloads import build_task, seeded_initialisation  # the one workload import of this slice
from kadam import stability
from kadam.monitor import StabilityMonitor, Thresholds

__all__ = ["KNOBS", "KNOB_TASKS", "RunSpec", "baseline_warnings", "instability_step", "monitored_run", "score",
           "sharpness_factor_sweep", "sharpness_run", "split_healthy_arm", "trained", "warning_steps",
           "with_sharpness_factor"]

LEAD = 10
"""Steps a warning must precede the instability event to count for recall."""
SETTLE = 20
"""Steps after the start (and after the warmup) before the instability definition applies."""
LOSS_WINDOW = 5
"""Steps of training loss whose median the instability definition compares with its running minimum."""
FINAL_LOSS_STEPS = 10
"""A run's final training loss is the median of its last this many steps."""
GRAD_SPIKE_FACTOR = 5.0
GRAD_WINDOW = 20
UPDATE_RATIO = 0.05
MONITOR_THRESHOLDS = Thresholds(spike_factor=1e6)
"""The monitor's thresholds in the protocol: its defaults (the theory's thresholds; the spike-factor check off),
plus the spike-factor check at 1e6, so that the runs also record what it adds (``monitor_with_spike_factor``)."""
SHARPNESS_EVERY = 5
SHARPNESS_ITERATIONS = 4
"""The monitor estimates the preconditioned sharpness every 5 steps on one fixed batch with 4 Lanczos steps
(a rough, low estimate: the largest Ritz value after few steps lies below λ_max)."""

KNOBS: Mapping[str, Mapping[str, Mapping[str, Any]]] = {
    "lr": {"failing": {"lr": 1.0}, "healthy": {"lr": 3e-3}},
    "ramp": {"failing": {"lr": 1e-3, "ramp_to": 3.0}, "healthy": {"lr": 1e-3, "ramp_to": 1e-2}},
    "region": {"failing": {"betas": (0.99, 0.1), "lr": 3e-3}, "healthy": {"betas": (0.99, 0.999), "lr": 3e-3}},
    "warmup": {"failing": {"lr": 0.1, "warmup": 0}, "healthy": {"lr": 0.1, "warmup": 50}},
    "silence": {"failing": {"lr": 1e-2, "betas": (0.9, 0.99999), "spike": 1e4},
                "healthy": {"lr": 1e-2, "betas": (0.9, 0.99999), "spike": 1.0}},
}
"""Knob → arm → the run settings that differ from :class:`RunSpec`'s defaults."""
KNOB_TASKS: Mapping[str, tuple[str, ...]] = {"silence": ("char-transformer",), "ramp": ("char-transformer",),
                                             "warmup": ("char-transformer",)}
"""Knobs that apply to some tasks only (the others apply to every task); the reasons are in the module docstring."""


@dataclass(frozen=True)
class RunSpec:
    """One protocol run: task and sizes, optimizer settings, the knob it varies and its arm."""

    task: str
    knob: str
    arm: str
    seed: int
    steps: int
    batch_size: int
    sizes: Mapping[str, Any]
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 0
    ramp_to: float | None = None
    spike: float | None = None
    silence_start: float = 0.1
    silence_end: float = 0.6


def instability_step(losses: Sequence[float], start: int, window: int = LOSS_WINDOW) -> int | None:
    """The first step n > ``start`` (1-based) whose loss is non-finite or whose median over the last ``window``
    losses (fewer at the start) exceeds twice the running minimum of those medians before n; None if none."""
    running = math.inf
    for n in range(1, len(losses) + 1):
        if not math.isfinite(losses[n - 1]):
            if n > start:
                return n
            continue
        recent = losses[max(0, n - window):n]
        median = float(np.median(recent)) if all(math.isfinite(loss) for loss in recent) else math.inf
        if n > start and median > 2.0 * running:
            return n
        running = min(running, median)
    return None


def final_loss(run: Mapping[str, Any]) -> float:
    """The median training loss of the run's last :data:`FINAL_LOSS_STEPS` steps (NaN if any is non-finite)."""
    last = run["losses"][-FINAL_LOSS_STEPS:]
    return float(np.median(last)) if last and all(math.isfinite(v) for v in last) else math.nan


def trained(run: Mapping[str, Any]) -> bool:
    """Whether the run learned from its inputs: it ran all its steps and its :func:`final_loss` is below the
    task's constant-predictor loss (recorded as ``constant_loss``; a record without one counts as trained)."""
    if len(run["losses"]) < run["spec"]["steps"]:
        return False
    bar = run.get("constant_loss")
    return bar is None or final_loss(run) < bar


def split_healthy_arm(runs: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The healthy-arm runs without an instability event, split into those that :func:`trained` (the healthy
    runs that measure false alarms) and those that did not (counted apart)."""
    calm = [r for r in runs if r["spec"]["arm"] == "healthy" and r["instability_step"] is None]
    return [r for r in calm if trained(r)], [r for r in calm if not trained(r)]


def baseline_warnings(grad_norms: Sequence[float], update_ratios: Sequence[float]) -> dict[str, list[int]]:
    """Steps (1-based) at which each baseline warns: gradient-norm spikes and update/parameter ratio."""
    grad_spikes = []
    for n in range(GRAD_WINDOW + 1, len(grad_norms) + 1):
        history = [g for g in grad_norms[n - 1 - GRAD_WINDOW:n - 1] if math.isfinite(g)]
        current = grad_norms[n - 1]
        if history and (not math.isfinite(current) or current > GRAD_SPIKE_FACTOR * float(np.median(history))):
            grad_spikes.append(n)
    ratio = [n for n, r in enumerate(update_ratios, start=1) if not math.isfinite(r) or r > UPDATE_RATIO]
    return {"grad_norm_spike": grad_spikes, "update_param_ratio": ratio}


def _spec(task: str, knob: str, arm: str, seed: int, steps: int, batch_size: int,
          sizes: Mapping[str, Any], settings: Mapping[str, Any] | None) -> RunSpec:
    if knob not in KNOBS or arm not in ("failing", "healthy"):
        raise ValueError(f"knob must be one of {sorted(KNOBS)} and arm failing|healthy, got {knob!r}, {arm!r}")
    settings = KNOBS[knob][arm] if settings is None else settings
    return RunSpec(task, knob, arm, seed, steps, batch_size, dict(sizes), **settings)


def monitored_run(task: str, knob: str, arm: str, seed: int, steps: int, batch_size: int,
                  sizes: Mapping[str, Any], device: str = "cpu",
                  settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train one protocol run (:data:`KNOBS`) with the monitor at every step; a JSON-serialisable record.

    ``settings`` replaces the arm's settings in :data:`KNOBS` (a profile whose models need another rate).

    Returns the task's constant-predictor loss, the per-step loss, global gradient norm and largest
    per-tensor update/parameter ratio, the instability step (:func:`instability_step`), the monitor's events (step, tensor, quantity, value,
    source), the baselines' warning steps, and per recorded step the largest final-level bound ratio and
    spike factor over tensors with their tensors, and the model's update–gradient cosine.
    """
    spec = _spec(task, knob, arm, seed, steps, batch_size, sizes, settings)
    built = build_task(spec.task, device, **spec.sizes)
    with seeded_initialisation(spec.seed):
        model = built.make_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=spec.betas, eps=spec.eps,
                                  weight_decay=spec.weight_decay)
    scheduler = None
    if spec.warmup:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / spec.warmup))
    elif spec.ramp_to is not None:  # geometric from lr at step 1 to ramp_to at the last step
        growth = (spec.ramp_to / spec.lr) ** (1.0 / max(spec.steps - 1, 1))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: growth ** step)
    probe = built.sample_batch(torch.Generator().manual_seed(spec.seed + 10_000), spec.batch_size)
    monitor = StabilityMonitor(optimizer, every=1, names=model, thresholds=MONITOR_THRESHOLDS, warn=False,
                               sharpness_every=SHARPNESS_EVERY, sharpness_iterations=SHARPNESS_ITERATIONS,
                               sharpness_closure=lambda: built.loss(model(probe[0]), probe[1]))
    generator = torch.Generator().manual_seed(spec.seed)
    parameters = [p for p in model.parameters()]
    silenced = _silence_hook(model, spec) if spec.knob == "silence" else None
    losses, grad_norms, update_ratios = [], [], []
    # not workloads.train: the gradient norm and the parameters are read between backward and step
    for step in range(1, spec.steps + 1):
        if silenced is not None:
            silenced["step"] = step
        inputs, targets = built.sample_batch(generator, spec.batch_size)
        loss = built.loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in parameters if p.grad is not None]
        grad_norms.append(float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))))
        before = [p.detach().clone() for p in parameters]
        monitor.observe_loss(loss)
        optimizer.step()
        if scheduler is not None:
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
    start = SETTLE + spec.warmup
    event = instability_step(losses, start)
    history = monitor.history
    final = max((q for q in history.quantities if q.startswith("bound_ratio_L")), key=lambda q: q[-1])
    ratio_table = history.values[:, :, history.quantities.index(final)]
    spike_table = history.values[:, :, history.quantities.index("spike_factor")]
    return {
        "spec": {**asdict(spec), "sizes": dict(spec.sizes)},
        "constant_loss": built.constant_predictor_loss(),
        "losses": losses, "grad_norms": grad_norms, "update_ratios": update_ratios,
        "instability_step": event, "settle": start,
        "onset_step": instability_step(losses, 1),  # the same condition from step 2 on: when it first held
        "monitor_events": [{"step": e.step, "tensor": e.tensor, "quantity": e.quantity, "value": e.value,
                            "threshold": e.threshold, "source": e.source, "explanation": e.explanation}
                           for e in monitor.events],
        "baselines": baseline_warnings(grad_norms, update_ratios),
        "recorded_steps": history.steps.tolist(),
        "max_bound_ratio": _nanmax_rows(ratio_table), "max_bound_ratio_tensor": _argmax_names(ratio_table, history.names),
        "max_spike_factor": _nanmax_rows(spike_table), "max_spike_tensor": _argmax_names(spike_table, history.names),
        "model_cosine": [_finite_or_none(v) for v in history.model["model_cosine"]],
        "sharpness": [_finite_or_none(v) for v in history.model["sharpness"]],
        "sharpness_threshold": _finite_or_none(float(np.nanmax(history.model["sharpness_threshold"])))
        if np.isfinite(history.model["sharpness_threshold"]).any() else None,
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _nanmax_rows(table: np.ndarray) -> list[float | None]:
    return [_finite_or_none(float(np.nanmax(row))) if np.isfinite(row).any() else None for row in table]


def _argmax_names(table: np.ndarray, names: Sequence[str]) -> list[str | None]:
    return [names[int(np.nanargmax(row))] if np.isfinite(row).any() else None for row in table]


def _silence_hook(model: torch.nn.Module, spec: RunSpec) -> dict[str, int]:
    """Zero the gradient of one embedding row during the silence, then multiply it by ``spec.spike`` once."""
    embedding = getattr(model, "token_embedding", None)
    if embedding is None:
        raise ValueError(f"knob 'silence' needs a model with token_embedding, task {spec.task!r} has none")
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


def warning_steps(run: Mapping[str, Any]) -> dict[str, list[int]]:
    """Warning steps per detector: ``monitor`` is the monitor at its defaults (the runs also record spike-factor
    events, which the defaults leave off); the ablations add the spike-factor check at
    ``MONITOR_THRESHOLDS.spike_factor`` (``monitor_with_spike_factor``) or leave out the edge-of-stability check (``monitor_without_sharpness``)."""
    def steps(keep: Any) -> list[int]:
        return sorted({e["step"] for e in run["monitor_events"] if keep(e["quantity"])})

    return {"monitor": steps(lambda q: q != "spike_factor"),
            "monitor_with_spike_factor": steps(lambda q: True),
            "monitor_without_sharpness": steps(lambda q: q not in ("spike_factor", "sharpness")),
            **run["baselines"]}


SHARPNESS_FACTORS = (1.0, 2.0, 5.0, 10.0, 50.0)
"""Multiples of the adaptive edge of stability at which the sharpness check's trade-off is reported."""


def with_sharpness_factor(run: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """``run`` with its monitor's sharpness events replaced by those the check would raise at ``factor`` × the
    edge: every recorded estimate above ``factor`` × (2 + 2β)/(1 − β) from step ``sharpness_after`` on (the
    monitor's own rule, :class:`~kadam.monitor.Thresholds`), recomputed from the run's sharpness series."""
    threshold = run["sharpness_threshold"]
    after = MONITOR_THRESHOLDS.sharpness_after
    events = [e for e in run["monitor_events"] if e["quantity"] != "sharpness"]
    if threshold is not None:
        events += [{"step": step, "quantity": "sharpness", "value": value, "threshold": factor * threshold}
                   for step, value in zip(run["recorded_steps"], run["sharpness"])
                   if value is not None and step >= after and value > factor * threshold]
    return {**run, "monitor_events": events}


def sharpness_factor_sweep(runs: Sequence[Mapping[str, Any]], factors: Sequence[float] = SHARPNESS_FACTORS,
                           lead: int = LEAD) -> list[dict[str, Any]]:
    """The monitor's recall and share of healthy runs warned (:func:`score`) with the sharpness check at each
    multiple of the edge in ``factors``: the check's trade-off between missed failures and false alarms."""
    rows = []
    for factor in factors:
        monitor = score([with_sharpness_factor(run, factor) for run in runs], lead)["detectors"]["monitor"]
        rows.append({"factor": factor, "recall": monitor["recall"], "caught": monitor["caught"],
                     "healthy_runs_warned": monitor["healthy_runs_warned"]})
    return rows


def score(runs: Sequence[Mapping[str, Any]], lead: int = LEAD) -> dict[str, Any]:
    """Recall at ``lead``, lead times and false alarms of the monitor and both baselines over ``runs``.

    A failing-arm run counts as a *failure* only if it has an instability event whose onset
    (``onset_step``) comes after the first ``lead`` steps: no warning can precede an earlier onset by
    ``lead`` steps, so those failures are counted apart (``failures_with_onset_before_lead``) and left out
    of recall. A warning counts for a failure when it comes at least ``lead`` steps before the event (its
    lead time is event − first warning). Healthy-arm runs without an event that :func:`trained` measure
    false alarms: warnings per run (distinct warning steps) and the share of runs with any warning.
    Failing-arm runs that did not fail, healthy-arm runs that did and healthy-arm runs that did not train
    are counted separately.
    """
    detectors = ("monitor", "monitor_with_spike_factor", "monitor_without_sharpness", "grad_norm_spike",
                 "update_param_ratio")
    failed = [r for r in runs if r["spec"]["arm"] == "failing" and r["instability_step"] is not None]
    failures = [r for r in failed if (r.get("onset_step") or math.inf) > lead]
    healthy, untrained = split_healthy_arm(runs)
    result: dict[str, Any] = {
        "runs": len(runs), "failures": len(failures), "healthy": len(healthy),
        "failures_with_onset_before_lead": len(failed) - len(failures),
        "failing_arm_without_event": sum(1 for r in runs if r["spec"]["arm"] == "failing" and r["instability_step"] is None),
        "healthy_arm_with_event": sum(1 for r in runs if r["spec"]["arm"] == "healthy" and r["instability_step"] is not None),
        "healthy_arm_not_trained": len(untrained),
        "lead": lead, "detectors": {},
    }
    for detector in detectors:
        leads, caught, per_knob = [], 0, {}
        for run in failures:
            event = run["instability_step"]
            warned = [s for s in warning_steps(run)[detector] if s <= event]
            lead_time = event - warned[0] if warned else None
            hit = lead_time is not None and lead_time >= lead
            caught += hit
            knob = per_knob.setdefault(run["spec"]["knob"], {"failures": 0, "caught": 0})
            knob["failures"] += 1
            knob["caught"] += hit
            if lead_time is not None:
                leads.append(lead_time)
        alarms = [len(warning_steps(run)[detector]) for run in healthy]
        healthy_per_knob: dict[str, dict[str, int]] = {}
        for run, count in zip(healthy, alarms):
            knob = healthy_per_knob.setdefault(run["spec"]["knob"], {"runs": 0, "warned": 0})
            knob["runs"] += 1
            knob["warned"] += count > 0
        result["detectors"][detector] = {
            "recall": caught / len(failures) if failures else None,
            "caught": caught,
            "lead_times": sorted(leads),
            "lead_quartiles": [float(q) for q in np.percentile(leads, [25, 50, 75])] if leads else None,
            "false_alarms_per_healthy_run": float(np.mean(alarms)) if alarms else None,
            "healthy_warned": sum(1 for a in alarms if a),
            "healthy_runs_warned": sum(1 for a in alarms if a) / len(alarms) if alarms else None,
            "per_knob": per_knob,
            "healthy_per_knob": healthy_per_knob,
        }
    return result


def sharpness_run(lr: float, seed: int, steps: int, batch_size: int, sizes: Mapping[str, Any], every: int,
                  iterations: int, task: str = "char-transformer", beta: float = 0.9,
                  device: str = "cpu") -> dict[str, Any]:
    """Preconditioned sharpness λ_max(ηP⁻¹H) over training at one learning rate (THEORY §7, Cohen et al.).

    Adam (β, 0.999), mini-batches of ``batch_size``; every ``every`` steps the monitor estimates the
    sharpness on one fixed batch (``iterations`` Lanczos steps) against (2 + 2β)/(1 − β). Returns the
    loss curve, the sharpness series and its threshold, and the share of estimates above it.
    """
    built = build_task(task, device, **sizes)
    with seeded_initialisation(seed):
        model = built.make_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(beta, 0.999))
    generator = torch.Generator().manual_seed(seed)
    probe = built.sample_batch(torch.Generator().manual_seed(seed + 10_000), batch_size)
    monitor = StabilityMonitor(optimizer, every=every, names=model, sharpness_every=1, warn=False,
                               sharpness_closure=lambda: built.loss(model(probe[0]), probe[1]),
                               sharpness_iterations=iterations)
    losses = built.fit(model, optimizer, steps, batch_size, generator).losses  # ends at the first non-finite loss
    monitor.remove()
    history = monitor.history
    sharpness = [_finite_or_none(v) for v in history.model["sharpness"]]
    threshold = float(stability.edge_of_stability(beta))
    finite = [v for v in sharpness if v is not None]
    return {"lr": lr, "seed": seed, "beta": beta, "losses": losses, "sharpness_steps": history.steps.tolist(),
            "sharpness": sharpness, "sharpness_threshold": threshold,
            "share_above": sum(v > threshold for v in finite) / len(finite) if finite else None,
            "final_over_threshold": finite[-1] / threshold if finite else None}
