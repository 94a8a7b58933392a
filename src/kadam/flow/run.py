"""Simulate the continuous model, run the discrete optimizer from the same start, compare (THEORY §3).

:func:`simulate` integrates :class:`~kadam.flow.ode.AdamFlow` with ``torchdiffeq.odeint`` and reads the
solution at integer steps; :func:`discrete` runs the real :class:`~kadam.KAdam` on the same full-batch
loss; :func:`compare` gives the per-step relative error ``‖θ_cont(n) − θ_disc(n)‖ / ‖θ_disc(n) − θ₀‖``
and the cosine between the two update directions.

Hyperparameters are :class:`~kadam.KAdam`'s keyword arguments (``lr``, ``k``, ``betas``, ``eps``,
``weight_decay``, ``decoupled_weight_decay``, ``norm``, ``meta_betas``, ``meta_norm``, ``maximize``),
validated by ``KAdam`` itself and with its defaults: ``k=1`` is AdamW
(``decoupled_weight_decay=True``) or Adam (``False``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from kadam.flow.loss import FlatLoss
from kadam.flow.modified import ModifiedAdamFlow
from kadam.flow.ode import AdamFlow, FlowSolveError
from kadam.optimizer.kadam import KAdam, state_keys
from kadam.optimizer.levels import group_levels


@dataclass
class Trajectory:
    """A run read at integer steps.

    Attributes:
        steps: the recorded step numbers (``0, every, 2·every, …, steps``).
        theta: ``θ`` at those steps, one row each.
        loss: ``L(θ)`` at those steps.
        moments: optional per-level read-outs, keys ``m{i}``, ``v{i}`` (uncorrected, as ``KAdam`` stores
            them; one column per tensor in tensor mode) and, for the model, ``u{i}``.
        gradient_evaluations: gradients computed to produce the run (ODE right-hand sides, or steps).
        seconds: wall time of the run.
    """

    steps: Tensor
    theta: Tensor
    loss: Tensor
    moments: dict[str, Tensor] = field(default_factory=dict)
    gradient_evaluations: int = 0
    seconds: float = 0.0


@dataclass
class Comparison:
    """Continuous against discrete at the recorded steps ``n > 0`` (THEORY §3).

    ``relative_error[n] = ‖θ_cont(n) − θ_disc(n)‖ / ‖θ_disc(n) − θ₀‖``; ``cosine[n]`` is the cosine
    between ``θ(n) − θ(n')`` of the two runs, ``n'`` the previous recorded step.
    """

    steps: Tensor
    relative_error: Tensor
    cosine: Tensor

    @property
    def final_rel_error(self) -> float:
        return float(self.relative_error[-1])

    @property
    def max_rel_error(self) -> float:
        return float(self.relative_error.max())

    @property
    def min_cosine(self) -> float:
        return float(self.cosine.min())

    def summary(self) -> dict[str, float]:
        """The error table: final and maximum relative error, smallest cosine."""
        return {
            "final_rel_error": self.final_rel_error,
            "max_rel_error": self.max_rel_error,
            "min_cosine": self.min_cosine,
        }


def _recorded_steps(steps: int, record_every: int) -> Tensor:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, int) or not 1 <= record_every <= steps:
        raise ValueError(f"record_every must be an integer in [1, steps = {steps}], got {record_every!r}")
    recorded = torch.arange(0, steps + 1, record_every)
    return recorded if recorded[-1] == steps else torch.cat([recorded, torch.tensor([steps])])


@contextmanager
def _progress(enabled: bool, description: str, total: float) -> Iterator[Callable[[float], None]]:
    """A rich progress bar over ``[0, total]``; yields ``advance_to(position)``."""
    if not enabled:
        yield lambda position: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # the kadam[experiments] extra

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        reached = [0.0]

        def advance_to(position: float) -> None:
            if position > reached[0] + total / 200 or position >= total:
                reached[0] = position
                bar.update(task, completed=min(position, total))

        yield advance_to


def simulate(
    loss: FlatLoss,
    steps: int,
    *,
    rates: str = "exact",
    order: int = 1,
    method: str = "dopri5",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    options: dict[str, Any] | None = None,
    record_every: int = 1,
    return_moments: bool = False,
    progress: bool = False,
    warm_start: int = 0,
    modified: bool = False,
    **hyperparameters: Any,
) -> Trajectory:
    """Integrate the continuous model of ``KAdam(**hyperparameters)`` on ``loss`` for ``steps`` steps.

    The ODE (THEORY §3, :mod:`kadam.flow.ode`) starts from ``θ₀`` with every moment at its τ = 0 limit
    and is solved by ``torchdiffeq.odeint(method=method, rtol=rtol, atol=atol, options=options)``
    (adaptive Dormand–Prince by default), read at ``τ = 0, record_every, …, steps``.

    Args:
        loss: the full-batch loss, from a function of a flat vector or a module plus data.
        steps: the horizon in optimizer steps.
        rates: ``"exact"`` (``a = −ln β``) or ``"paper"`` (``a = (1−β)/β``).
        order: 1 (``θ̇ = F``) or 2 (``½θ̈ + θ̇ = F``).
        method, rtol, atol, options: passed to ``torchdiffeq.odeint``.
        record_every: read the solution every this many steps (and at ``steps``).
        return_moments: also return every level's ``m``, ``v`` (uncorrected) and ``u``.
        progress: show a progress bar over τ.
        warm_start: run this many discrete steps of ``KAdam`` first (:func:`discrete`), then integrate
            from its state at ``τ = warm_start``: ``θ_s`` and every level's bias-corrected moments
            ``m̂ = m_s/(1 − β^s)``, ``v̂ = v_s/(1 − γ^s)`` (THEORY §1, §3: the corrections the model
            applies at ``τ = s`` are the discrete run's, ``1 − e^{−a s} = 1 − β^s`` with exact rates).
            The recorded steps before ``s`` are the discrete run's. ``0`` (default): start from τ = 0.
        modified: integrate the O(η²) modified equations of the whole recursion
            (:class:`~kadam.flow.modified.ModifiedAdamFlow`; needs ``rates="exact"``, ``order=1``).
        **hyperparameters: ``KAdam``'s arguments (``lr``, ``k``, ``betas``, …), with its defaults.

    Raises:
        FlowSolveError: the solve failed (non-finite loss or field, step size underflow, too many
            steps); the message gives τ and the reason.
    """
    recorded = _recorded_steps(steps, record_every)
    if isinstance(warm_start, bool) or not isinstance(warm_start, int) or not 0 <= warm_start < steps:
        raise ValueError(f"warm_start must be an integer in [0, steps - 1 = {steps - 1}], got {warm_start!r}")
    start = time.perf_counter()
    field_class = ModifiedAdamFlow if modified else AdamFlow
    with _progress(progress, f"continuous ({rates}, order {order})", steps) as advance_to:
        field_ = field_class.for_optimizer(loss, rates=rates, order=order, on_evaluation=advance_to, **hyperparameters)
        if warm_start:
            warm = discrete(loss, warm_start, return_moments=True, **hyperparameters)
            initial_state = _state_after_discrete_steps(field_, warm)
        else:
            warm, initial_state = None, field_.initial_state()
        later = recorded[recorded > warm_start]
        times = torch.cat([torch.tensor([warm_start]), later]).to(dtype=loss.theta0.dtype, device=loss.theta0.device)
        try:
            solution = odeint(field_, initial_state, times, rtol=rtol, atol=atol, method=method, options=options)
        except AssertionError as failure:  # torchdiffeq reports step-size underflow and step limits this way
            raise FlowSolveError(
                field_.last_tau,
                f"{failure} (stiff or blowing up: try a smaller lr, looser tolerances or method='dopri8')",
                field_.last_good_tau,
            ) from failure
    if warm is not None:  # keep the discrete rows before s and the model's rows from s on
        kept = 0 if warm_start in set(recorded.tolist()) else 1
        solution = tuple(part[kept:] for part in solution)
        times = times[kept:]
    head = recorded[recorded < warm_start]
    theta = solution[0] if warm is None else torch.cat([warm.theta[head], solution[0]])
    losses = torch.stack([loss.fn(row).detach() for row in theta])
    seconds = time.perf_counter() - start
    moments: dict[str, Tensor] = {}
    if return_moments:
        per_step = []
        for index, tau in enumerate(times.tolist()):
            values = field_.read_out(float(tau), [part[index] for part in solution])
            per_step.append((values, field_.raw_moments(float(tau), values)))
        for i in range(len(field_.levels)):
            model_rows = {
                "m": torch.stack([raw[i][0] for _, raw in per_step]),
                "v": torch.stack([raw[i][1] for _, raw in per_step]),
                "u": torch.stack([values[i].u for values, _ in per_step]),
            }
            for name, rows in model_rows.items():
                if warm is not None and name != "u":
                    rows = torch.cat([warm.moments[f"{name}{i + 1}"][head], rows])
                elif warm is not None:  # the discrete run does not store u: NaN before s
                    rows = torch.cat([torch.full((len(head), *rows.shape[1:]), math.nan, dtype=rows.dtype), rows])
                moments[f"{name}{i + 1}"] = rows
    evaluations = field_.evaluations + warm_start
    return Trajectory(recorded, theta, losses, moments, evaluations, seconds)


def _state_after_discrete_steps(field_: AdamFlow, warm: Trajectory) -> tuple[Tensor, ...]:
    """The model's state at ``τ = s`` from the discrete run ``warm`` of ``s`` steps (moments recorded).

    Bias-corrected moments ``m̂ = m_s / (1 − β^s)``; a level with ``β = 0`` (``γ = 0``) is not in the state.
    For ``order=2`` the velocity starts at the drift ``F(θ_s)`` (as at τ = 0).
    """
    s = int(warm.steps[-1])

    def correction(rate: float) -> float:  # 1 − decay^s, the decay recovered from its rate
        if math.isinf(rate):
            return 1.0
        log_decay = -rate if field_.rates == "exact" else -math.log1p(rate)
        return -math.expm1(log_decay * s)

    moments = []
    for i, level in enumerate(field_.levels, start=1):
        m_scale, v_scale = correction(level.a), correction(level.b)
        moments.append((warm.moments[f"m{i}"][-1] / m_scale, warm.moments[f"v{i}"][-1] / v_scale))
    theta = warm.theta[-1]
    velocity = None
    if field_.order == 2:
        values = field_.cascade(field_.level_input(theta, field_.loss.value_and_grad(theta)[1]), moments)
        velocity = field_.drift(theta, values[-1].u)
    return field_.join_state(theta, velocity, moments)


class DiscreteRunError(FlowSolveError):
    """The discrete optimizer's loss became non-finite at step ``tau`` (not a failure of the model).

    A subclass of :class:`FlowSolveError`, so that code catching any failed run keeps working; its message
    names the discrete run.
    """

    def __init__(self, step: int, reason: str) -> None:
        RuntimeError.__init__(self, f"the discrete optimizer diverged at step {step}: {reason}")
        self.tau = float(step)
        self.reason = reason
        self.last_good_tau = None


def discrete(
    loss: FlatLoss,
    steps: int,
    *,
    record_every: int = 1,
    return_moments: bool = False,
    progress: bool = False,
    **hyperparameters: Any,
) -> Trajectory:
    """Run the real ``KAdam(**hyperparameters)`` full-batch on ``loss`` from ``θ₀`` for ``steps`` steps.

    Each step evaluates ``L`` at the current parameters (one tensor per entry of
    ``loss.tensor_shapes``), back-propagates and calls ``KAdam.step``. Arguments are those of
    :func:`simulate`; the moments returned are ``KAdam``'s state (``m{i}``, ``v{i}``).

    Raises:
        DiscreteRunError: the loss became non-finite (``tau`` is then the step).
    """
    recorded = _recorded_steps(steps, record_every)
    params = [piece.detach().clone().requires_grad_(True) for piece in loss.split(loss.theta0)]
    optimizer = KAdam(params, **hyperparameters)
    wanted = set(recorded.tolist())
    levels = optimizer.param_groups[0]["k"]
    thetas, losses = [], torch.empty(steps + 1, dtype=loss.theta0.dtype, device=loss.theta0.device)
    moments: dict[str, list[Tensor]] = {}

    def flat() -> Tensor:
        return torch.cat([p.reshape(-1) for p in params])

    hyperparameters_of_levels = group_levels(optimizer.param_groups[0])

    def first_moment(param: Tensor, i: int) -> Tensor:
        """Level i's m; a level with β₁ = 0 stores none, its m is its input, level i − 1's output."""
        state = optimizer.state[param]
        if state_keys(i)[0] in state:
            return state[state_keys(i)[0]]
        below, n = hyperparameters_of_levels[i - 2], float(state["step"])
        v = state[state_keys(i - 1)[1]]
        return (first_moment(param, i - 1) / (1 - below.beta**n)) / ((v / (1 - below.gamma**n)).sqrt() + below.eps)

    def record() -> None:
        thetas.append(flat().detach().clone())
        if return_moments and len(thetas) > 1:
            for i in range(1, levels + 1):
                for name, key in zip(("m", "v"), state_keys(i), strict=True):
                    values = [first_moment(p, i) if name == "m" else optimizer.state[p][key] for p in params]
                    column = torch.cat(
                        [
                            value.expand_as(p).reshape(-1) if name == "m" else value.reshape(-1)
                            for value, p in zip(values, params)
                        ]
                    )
                    moments.setdefault(f"{name}{i}", []).append(column)

    start = time.perf_counter()
    record()
    with _progress(progress, "discrete", steps) as advance_to:
        for n in range(1, steps + 2):
            optimizer.zero_grad(set_to_none=True)
            value = loss.fn(flat())
            losses[n - 1] = value.detach()
            if not torch.isfinite(value):
                raise DiscreteRunError(n - 1, f"the loss is {value.item()}")
            if n == steps + 1:
                break
            value.backward()
            optimizer.step()
            if n in wanted:
                record()
            advance_to(n)
    seconds = time.perf_counter() - start
    stacked = {name: torch.stack([torch.zeros_like(rows[0]), *rows]) for name, rows in moments.items()}
    return Trajectory(recorded, torch.stack(thetas), losses[recorded], stacked, steps, seconds)


def compare(continuous: Trajectory, discrete_run: Trajectory) -> Comparison:
    """Per-step relative error and update-direction cosine of ``continuous`` against ``discrete_run``.

    Both must be recorded at the same steps from the same ``θ₀``. Step 0 (where both errors are 0/0)
    is left out.
    """
    if not torch.equal(continuous.steps, discrete_run.steps):
        raise ValueError("continuous and discrete_run must be recorded at the same steps")
    theta0 = discrete_run.theta[0]
    if not torch.equal(continuous.theta[0], theta0):
        raise ValueError("continuous and discrete_run must start from the same theta0")
    travelled = torch.linalg.vector_norm(discrete_run.theta[1:] - theta0, dim=1)
    gap = torch.linalg.vector_norm(continuous.theta[1:] - discrete_run.theta[1:], dim=1)
    updates_c = continuous.theta.diff(dim=0)
    updates_d = discrete_run.theta.diff(dim=0)
    cosine = torch.nn.functional.cosine_similarity(updates_c, updates_d, dim=1, eps=1e-300)
    relative = torch.where(travelled > 0, gap / travelled, torch.where(gap > 0, math.inf, 0.0))
    return Comparison(continuous.steps[1:], relative, cosine)
