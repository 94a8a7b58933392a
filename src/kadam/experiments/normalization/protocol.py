r"""Experiments of THEORY §4: norms of scale-invariant tensors, and the meta-adaptive link to 2-Adam.

Each function takes explicit sizes and returns a JSON-serialisable dict;
:mod:`kadam.experiments.normalization.plots` draws them.

- :func:`random_walk`: a scale-invariant tensor driven by noise gradients orthogonal to it, AdamW at
  several β; measured equilibrium norm and angular update against the corrected and the orthogonal
  predictions of :mod:`kadam.normalization.predictions`.
- :func:`meta_adaptive_exact`: AdamW (level 1 a normalized gradient) against explicit 2-Adam on the unit
  sphere (:class:`~kadam.normalization.SphericalTwoAdam`); equal up to rounding.
- :func:`meta_adaptive_drift`: the same pair with memory in level 1; how far the directions drift apart,
  against THEORY §4's correlation factor.
- :func:`meta_adaptive_network`: the same comparison on a LayerNorm MLP trained on digits.
- :func:`digits_norms`: an MLP with BatchNorm or LayerNorm trained on digits with mini-batches (AdamW or
  Adam); per-layer norms and angular updates against both predictions.
- :func:`scale_invariant_census`: which tensors of each training task's model are scale-invariant.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kadam.experiments.workloads import MLP, build_task, digits_splits, parameter_count, seeded_initialisation, train
from kadam.normalization.detection import find_scale_invariant
from kadam.normalization.level import adaptive_level
from kadam.normalization.predictions import (
    correlation_factor,
    equilibrium_angular_update,
    equilibrium_norm,
    noise_update_sq_norm,
    norm_trajectory,
    relaxation_steps,
)
from kadam.normalization.sphere import SphericalTwoAdam
from kadam.normalization.tracker import STATISTICS, NormTracker, step_statistics
from kadam.optimizer import KAdam

__all__ = [
    "batched_adamw",
    "digits_norms",
    "meta_adaptive_drift",
    "meta_adaptive_exact",
    "meta_adaptive_network",
    "random_walk",
    "scale_invariant_census",
    "spherical_noise_gradient",
]

Progress = Callable[[int, int], None] | None

EQUILIBRIUM_START = 3.0
"""Relaxation times τ = 1/(2ηλ) after which a real run's norm is read as equilibrated (THEORY §4)."""
EQUILIBRIUM_MIN_RUN = 4.0
"""A real run is long enough to test an equilibrium when it lasts at least this many relaxation times (a
window of at least one τ after :data:`EQUILIBRIUM_START`)."""


def spherical_noise_gradient(weight: Tensor, noise: Tensor, curvature: Tensor | None = None) -> Tensor:
    r"""Gradient of the scale-invariant ``L(W) = ½ Ŵᵀ diag(curvature) Ŵ + ⟨ξ, Ŵ⟩`` at W, ``Ŵ = W/|W|``.

    ``∇L(W) = (I − ŴŴᵀ)(diag(curvature) Ŵ + ξ) / |W|``: orthogonal to W and scaling as ``1/|W|``, as for
    any scale-invariant loss (THEORY §4). ``curvature=None`` is pure noise (a random walk). Vectors lie
    along the last axis (leading axes: independent tensors).
    """
    norm = torch.linalg.vector_norm(weight, dim=-1, keepdim=True)
    direction = weight / norm
    field = noise if curvature is None else curvature * direction + noise
    return (field - direction * torch.linalg.vecdot(direction, field).unsqueeze(-1)) / norm


def batched_adamw(
    weights: Tensor,
    gradient: Callable[[Tensor, int], Tensor],
    steps: int,
    lr: float,
    weight_decay: float,
    betas: Sequence[float],
    gamma: float,
    eps: float = 1e-8,
    record_every: int = 1,
    progress: Progress = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""AdamW (THEORY §1, k = 1, elementwise) on the rows of ``weights`` at once, row i with ``β = betas[i]``.

    ``gradient(W, n)`` returns the gradients of all rows at step n. Each step is
    ``W ← (1 − ηλ)W − η·level(g)`` with :func:`~kadam.normalization.level.adaptive_level`, as
    ``torch.optim.AdamW`` does per tensor (the tests compare the two). ``weights`` is updated in place.
    Returns the recorded steps and :func:`~kadam.normalization.tracker.step_statistics` of each row at them,
    shape (recorded, rows, 5).
    """
    exp_avg, exp_avg_sq = torch.zeros_like(weights), torch.zeros_like(weights)
    beta_column = torch.tensor(list(betas), dtype=weights.dtype, device=weights.device).reshape(-1, 1)
    recorded, statistics = [], []
    # not workloads.train: AdamW written out on the rows of one tensor, gradients from a function, no model or loss
    for step in range(1, steps + 1):
        update = adaptive_level(exp_avg, exp_avg_sq, gradient(weights, step), beta_column, gamma, eps, step)
        before = weights.clone() if step % record_every == 0 else None
        weights.mul_(1 - lr * weight_decay).sub_(lr * update)
        if before is not None:
            recorded.append(step)
            statistics.append(step_statistics(before, weights, lr, weight_decay))
        if progress is not None and step % 1000 == 0:
            progress(step, steps)
    return np.asarray(recorded), torch.stack(statistics).numpy()


def _window_rms(values: np.ndarray, steps: np.ndarray, start: float) -> float:
    selected = values[steps > start]
    return float(np.sqrt(np.mean(selected**2)))


def _downsample(steps: np.ndarray, values: np.ndarray, points: int) -> dict[str, list[float]]:
    index = np.unique(np.linspace(0, len(steps) - 1, min(points, len(steps))).astype(int))
    return {"steps": steps[index].tolist(), "values": values[index].tolist()}


def random_walk(
    d: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    betas: Sequence[float] = (0.0, 0.5, 0.9, 0.99),
    gamma: float = 0.999,
    relaxation_times: float = 6.0,
    transient_times: float = 3.0,
    record_every: int = 5,
    seed: int = 0,
    curve_points: int = 300,
    progress: Progress = None,
) -> dict[str, Any]:
    r"""A scale-invariant d-element tensor under AdamW with noise gradients orthogonal to it (THEORY §4).

    One float64 tensor per β, all updated at once by :func:`batched_adamw` (AdamW with second-moment
    decay ``gamma``, ε = 1e-8), started at ``|W_0| = 1`` and driven by independent standard normal ξ
    through :func:`spherical_noise_gradient`, for ``relaxation_times`` × :func:`relaxation_steps` steps. The
    equilibrium norm is ``√mean |W|²`` and the angular update ``√mean θ²`` over the steps after
    ``transient_times`` relaxation times (recorded every ``record_every`` steps), compared with
    :func:`equilibrium_norm` and :func:`equilibrium_angular_update` under both assumptions. Also reports
    the mean cross term ``⟨W_{n−1}, u_n⟩`` against ``−η E|u|² β/(1 − qβ)``.
    """
    if not 0 <= transient_times < relaxation_times:
        raise ValueError(
            f"transient_times must be in [0, relaxation_times), got {transient_times} and {relaxation_times}"
        )
    tau = relaxation_steps(lr, weight_decay)
    steps = int(math.ceil(relaxation_times * tau))
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(len(betas), d, generator=generator, dtype=torch.float64)
    weights = start / torch.linalg.vector_norm(start, dim=-1, keepdim=True)

    def noise_gradient(w: Tensor, step: int) -> Tensor:
        return spherical_noise_gradient(w, torch.randn(w.shape, generator=generator, dtype=torch.float64))

    recorded, statistics = batched_adamw(
        weights,
        noise_gradient,
        steps,
        lr,
        weight_decay,
        betas,
        gamma,
        record_every=record_every,
        progress=progress,
    )
    names = [f"beta={beta}" for beta in betas]
    history = {key: {name: statistics[:, i, j] for i, name in enumerate(names)} for j, key in enumerate(STATISTICS)}
    shrink = 1 - lr * weight_decay
    rows = []
    curves = {}
    for name, beta in zip(names, betas):
        norm = _window_rms(history["norm"][name], recorded, transient_times * tau)
        angle = _window_rms(history["angular_update"][name], recorded, transient_times * tau)
        inner = float(np.mean(history["inner"][name][recorded > transient_times * tau]))
        row: dict[str, Any] = {
            "beta": beta,
            "measured_norm": norm,
            "measured_angular_update": angle,
            "measured_inner": inner,
            "predicted_inner": -lr * noise_update_sq_norm(d, beta) * beta / (1 - shrink * beta),
        }
        for assumption in ("corrected", "orthogonal"):
            predicted_norm = equilibrium_norm(lr, weight_decay, d, beta, assumption=assumption)
            predicted_angle = equilibrium_angular_update(lr, weight_decay, beta, assumption=assumption)
            row[f"{assumption}_norm"] = predicted_norm
            row[f"{assumption}_angular_update"] = predicted_angle
            row[f"{assumption}_norm_error"] = predicted_norm / norm - 1
            row[f"{assumption}_angular_error"] = predicted_angle / angle - 1
        rows.append(row)
        curves[name] = {
            "norm": _downsample(recorded, history["norm"][name], curve_points),
            "angular_update": _downsample(recorded, history["angular_update"][name], curve_points),
        }
    return {
        "d": d,
        "lr": lr,
        "weight_decay": weight_decay,
        "gamma": gamma,
        "relaxation_steps": tau,
        "steps": steps,
        "window_start": transient_times * tau,
        "seed": seed,
        "by_beta": rows,
        "curves": curves,
    }


def _direction(tensor: Tensor) -> Tensor:
    return tensor.detach() / torch.linalg.vector_norm(tensor.detach())


def _direction_comparison(
    adamw: NormTracker,
    sphere: NormTracker,
    name: str,
    cosine_steps: Sequence[int],
    cosines: Sequence[float],
    steps: int,
    curve_points: int,
) -> dict[str, Any]:
    """Cosine between the two directions over time, and the AdamW / 2-Adam ratio of RMS angular updates
    over the last third of the run."""
    adamw_history, sphere_history = adamw.history(), sphere.history()
    recorded = adamw_history["steps"]
    late = 2 * steps / 3
    cosine_array = np.asarray(cosines)
    return {
        "final_cosine": float(cosine_array[-1]),
        "min_cosine": float(cosine_array.min()),
        "angular_update_ratio": _window_rms(adamw_history["angular_update"][name], recorded, late)
        / _window_rms(sphere_history["angular_update"][name], recorded, late),
        "cosine_curve": _downsample(np.asarray(cosine_steps), cosine_array, curve_points),
    }


def _adamw_sphere_pair(
    d: int,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    norm: str,
    initial_norm: float,
    seed: int,
) -> tuple[nn.Parameter, KAdam, nn.Parameter, SphericalTwoAdam]:
    start = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    adamw_weight = nn.Parameter(start * (initial_norm / torch.linalg.vector_norm(start)))
    sphere_weight = nn.Parameter(adamw_weight.detach().clone())
    adamw = KAdam([adamw_weight], lr=lr, k=1, betas=betas, eps=eps, weight_decay=weight_decay, norm=norm)
    sphere = SphericalTwoAdam([sphere_weight], lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, norm=norm)
    return adamw_weight, adamw, sphere_weight, sphere


def _curvature(d: int, scale: float) -> Tensor:
    return torch.linspace(0.0, scale, d, dtype=torch.float64)


def meta_adaptive_exact(
    d: int = 256,
    steps: int = 2000,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    curvature: float = 1.0,
    noise: float = 1.0,
    initial_norm: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    r"""AdamW with level 1 a normalized gradient vs explicit 2-Adam on the sphere: equal directions (THEORY §4).

    Level 1 is ``(β, γ) = (0, 0)``, tensor mode, ε = 0 (``KAdam(k=1, norm="tensor")`` = AdamW with that
    level) on the noisy quadratic of :func:`spherical_noise_gradient` (curvatures evenly spread on
    ``[0, curvature]``, noise of standard deviation ``noise``); :class:`SphericalTwoAdam` with the same
    level, from the same start. Returns ``max_n |Ŵ^AdamW_n − Ŵ^2-Adam_n|`` and, as a check that the
    problem moved, the angle between the first and last directions.
    """
    adamw_weight, adamw, sphere_weight, sphere = _adamw_sphere_pair(
        d, lr, weight_decay, (0.0, 0.0), 0.0, "tensor", initial_norm, seed
    )
    start = _direction(adamw_weight)
    diagonal = _curvature(d, curvature)
    generator = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    # not workloads.train: two optimizers in lockstep on gradients computed in closed form from one noise draw
    for _ in range(steps):
        xi = noise * torch.randn(d, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            adamw_weight.grad = spherical_noise_gradient(adamw_weight, xi, diagonal)
            sphere_weight.grad = spherical_noise_gradient(sphere_weight, xi, diagonal)
        adamw.step()
        sphere.step()
        worst = max(worst, float(torch.linalg.vector_norm(_direction(adamw_weight) - sphere_weight.detach())))
    travelled = float(torch.arccos(torch.clamp(torch.dot(start, _direction(adamw_weight)), -1.0, 1.0)))
    return {
        "d": d,
        "steps": steps,
        "lr": lr,
        "weight_decay": weight_decay,
        "max_direction_error": worst,
        "angle_travelled": travelled,
    }


def meta_adaptive_drift(
    d: int = 256,
    steps: int = 20000,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    configs: Sequence[tuple[float, float, str]] = (
        (0.0, 0.999, "elementwise"),
        (0.9, 0.999, "elementwise"),
        (0.0, 0.999, "tensor"),
        (0.9, 0.999, "tensor"),
    ),
    curvature: float = 1.0,
    noise: float = 1.0,
    record_every: int = 10,
    seed: int = 0,
    curve_points: int = 200,
    progress: Progress = None,
) -> dict[str, Any]:
    r"""AdamW vs explicit 2-Adam on the sphere with memory in level 1: how far the directions drift apart.

    For each level-1 ``(β, γ, mode)`` (ε = 1e-8) both run on the noisy quadratic of
    :func:`meta_adaptive_exact` from the same start, ``|W_0|`` at the orthogonal equilibrium
    (:func:`equilibrium_norm` with ``assumption="orthogonal"``, where 2-Adam's level 2 is stationary).
    Reported: the cosine between the two directions over time, and the ratio AdamW / 2-Adam of the RMS
    angular update over the last third of the run, against THEORY §4's prediction
    ``1/√F = √((1 − qβ)/(1 + qβ))`` (the correlation term enlarges AdamW's norm by ``√F``), and the memory
    ratios ``2ηλ/(1 − β)`` and ``2ηλ/(1 − γ)`` (level 1's memory over the relaxation time 1/(2ηλ)).
    """
    diagonal = _curvature(d, curvature)
    shrink = 1 - lr * weight_decay
    results = []
    total = steps * len(configs)
    for index, (beta, gamma, norm) in enumerate(configs):
        initial = equilibrium_norm(lr, weight_decay, d, beta, assumption="orthogonal")
        adamw_weight, adamw, sphere_weight, sphere = _adamw_sphere_pair(
            d, lr, weight_decay, (beta, gamma), 1e-8, norm, initial, seed
        )
        generator = torch.Generator().manual_seed(seed + 1)
        cosines, cosine_steps = [], []
        with (
            NormTracker(adamw, [("w", adamw_weight)], every=record_every) as adamw_tracker,
            NormTracker(sphere, [("w", sphere_weight)], every=record_every) as sphere_tracker,
        ):
            # not workloads.train: two optimizers in lockstep on gradients computed in closed form from one noise draw
            for step in range(1, steps + 1):
                xi = noise * torch.randn(d, generator=generator, dtype=torch.float64)
                with torch.no_grad():
                    adamw_weight.grad = spherical_noise_gradient(adamw_weight, xi, diagonal)
                    sphere_weight.grad = spherical_noise_gradient(sphere_weight, xi, diagonal)
                adamw.step()
                sphere.step()
                if step % record_every == 0:
                    cosines.append(float(torch.dot(_direction(adamw_weight), _direction(sphere_weight))))
                    cosine_steps.append(step)
                if progress is not None and step % 1000 == 0:
                    progress(index * steps + step, total)
        results.append(
            {
                "beta": beta,
                "gamma": gamma,
                "norm": norm,
                "initial_norm": initial,
                **_direction_comparison(adamw_tracker, sphere_tracker, "w", cosine_steps, cosines, steps, curve_points),
                "predicted_ratio": 1 / math.sqrt(correlation_factor(beta, shrink)),
                "momentum_memory_ratio": 2 * lr * weight_decay / (1 - beta),
                "second_moment_memory_ratio": 2 * lr * weight_decay / (1 - gamma),
                "final_norm": float(torch.linalg.vector_norm(adamw_weight.detach())),
                "corrected_equilibrium_norm": equilibrium_norm(lr, weight_decay, d, beta),
            }
        )
    return {
        "d": d,
        "steps": steps,
        "lr": lr,
        "weight_decay": weight_decay,
        "relaxation_steps": relaxation_steps(lr, weight_decay),
        "configs": results,
    }


def _digits_model_and_data(norm: str, hidden: int, depth: int, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    splits = digits_splits()
    data = {name: (split.inputs.flatten(1), split.targets) for name, split in splits.items()}
    with seeded_initialisation(seed):
        model = MLP(64, hidden, depth, 10, norm=norm)
    return model, data


def _cross_entropy(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _explained_invariant(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[list[str], dict[str, Any]]:
    """Tensors measured invariant *and* explained by structure (a weight feeding a normalization layer).

    Normalization gains can measure invariant at initialisation only because the biases after them start
    at zero; they are listed in the report but not tracked.
    """
    report = find_scale_invariant(model, _cross_entropy, batch)
    chosen = [row.name for row in report.rows if row.invariant and row.explanation]
    return chosen, report.to_dict()


def _accuracy(model: nn.Module, split: tuple[Tensor, Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        accuracy = float((model(split[0]).argmax(1) == split[1]).float().mean())
    model.train()
    return accuracy


def digits_norms(
    norm: Literal["batch", "layer"] = "batch",
    optimizer: Literal["adamw", "adam"] = "adamw",
    lr: float = 1e-2,
    weight_decay: float = 0.1,
    steps: int = 4000,
    batch_size: int = 32,
    hidden: int = 64,
    depth: int = 2,
    betas: tuple[float, float] = (0.9, 0.999),
    seed: int = 0,
    curve_points: int = 200,
    progress: Progress = None,
) -> dict[str, Any]:
    r"""Train an :class:`~kadam.experiments.workloads.MLP` with normalization layers on digits; compare per-layer
    norms with THEORY §4's predictions.

    ``optimizer`` is ``torch.optim.AdamW`` (λ = ``weight_decay``) or ``torch.optim.Adam`` (no decay; the
    ``weight_decay`` argument is then ignored). The scale-invariant hidden weights (found by
    :func:`~kadam.normalization.find_scale_invariant`) are tracked every step. Per layer:

    - norm trajectories predicted from the measured ``|u_n|²`` under both assumptions
      (:func:`norm_trajectory`), and the noise-dominated equilibrium from hyperparameters alone;
    - angular updates predicted as ``η|u_n| / (q|W_{n−1}|_pred)`` under both assumptions, and the
      noise-dominated :func:`equilibrium_angular_update`;
    - relative errors ``predicted/measured − 1`` of the RMS over a window of steps. With decay, a run of at
      least :data:`EQUILIBRIUM_MIN_RUN` relaxation times τ = :func:`relaxation_steps` is *equilibrated*: its
      window starts after :data:`EQUILIBRIUM_START` τ, where the norm has forgotten its start to
      ``e^{-3}``, and only there is the equilibrium from hyperparameters alone a test of the prediction.
      A shorter run (``equilibrated`` False) and Adam (no equilibrium) use the second half of the run, where
      only the replay from the measured ``|u_n|²`` is a test.
    """
    if optimizer not in ("adamw", "adam"):
        raise ValueError(f"optimizer must be 'adamw' or 'adam', got {optimizer!r}")
    decay = weight_decay if optimizer == "adamw" else 0.0
    model, data = _digits_model_and_data(norm, hidden, depth, seed)
    inputs, targets = data["train"]
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randperm(len(targets), generator=generator)[:256]
    tracked, detection = _explained_invariant(model, (inputs[probe], targets[probe]))
    parameters = dict(model.named_parameters())
    optimizer_instance = (
        torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=decay)
        if optimizer == "adamw"
        else torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    )

    def next_batch() -> tuple[Tensor, Tensor]:
        index = torch.randint(len(targets), (batch_size,), generator=generator)
        return inputs[index], targets[index]

    with NormTracker(optimizer_instance, [(name, parameters[name]) for name in tracked]) as tracker:
        initial = tracker.initial_norms()
        train(model, optimizer_instance, next_batch, F.cross_entropy, steps, progress=progress, progress_every=100)
    history = tracker.history()
    recorded = history["steps"]
    shrink = 1 - lr * decay
    tau = relaxation_steps(lr, decay) if decay > 0 else None
    equilibrated = tau is not None and steps >= EQUILIBRIUM_MIN_RUN * tau
    window_start = EQUILIBRIUM_START * tau if equilibrated else steps / 2
    layers = []
    for name in tracked:
        measured_norm = history["norm"][name]
        update_norm = history["update_norm"][name]
        d = parameters[name].numel()
        layer: dict[str, Any] = {
            "name": name,
            "d": d,
            "initial_norm": initial[name],
            "measured_norm": _window_rms(measured_norm, recorded, window_start),
            "measured_angular_update": _window_rms(history["angular_update"][name], recorded, window_start),
            "measured_update_sq_over_d": float(np.mean(update_norm[recorded > window_start] ** 2) / d),
            "noise_update_sq_over_d": noise_update_sq_norm(d, betas[0]) / d,
            "curves": {
                "measured_norm": _downsample(recorded, measured_norm, curve_points),
                "measured_angular_update": _downsample(recorded, history["angular_update"][name], curve_points),
            },
        }
        for assumption in ("corrected", "orthogonal"):
            trajectory = norm_trajectory(
                initial[name], lr, decay, betas[0], update_sq_norms=update_norm**2, assumption=assumption
            )
            angular = np.arctan(lr * update_norm / (shrink * trajectory[:-1]))
            layer[f"{assumption}_norm"] = _window_rms(trajectory[1:], recorded, window_start)
            layer[f"{assumption}_norm_error"] = layer[f"{assumption}_norm"] / layer["measured_norm"] - 1
            layer[f"{assumption}_angular_update"] = _window_rms(angular, recorded, window_start)
            layer[f"{assumption}_angular_error"] = (
                layer[f"{assumption}_angular_update"] / layer["measured_angular_update"] - 1
            )
            layer["curves"][f"{assumption}_norm"] = _downsample(recorded, trajectory[1:], curve_points)
            layer["curves"][f"{assumption}_angular_update"] = _downsample(recorded, angular, curve_points)
            if decay > 0:
                layer[f"{assumption}_equilibrium_norm"] = equilibrium_norm(
                    lr, decay, d, betas[0], assumption=assumption
                )
                layer[f"{assumption}_equilibrium_angular_update"] = equilibrium_angular_update(
                    lr, decay, betas[0], assumption=assumption
                )
        layers.append(layer)
    return {
        "task": f"digits-{'bn' if norm == 'batch' else 'ln'}",
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": decay,
        "betas": list(betas),
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "relaxation_steps": tau,
        "relaxation_times_run": None if tau is None else steps / tau,
        "equilibrated": equilibrated,
        "window_start": window_start,
        "detection": detection,
        "tracked": tracked,
        "layers": layers,
        "test_accuracy": _accuracy(model, data["test"]),
    }


CONTROL_BATCH_SEED_OFFSET = 1000
"""The control copy of :func:`meta_adaptive_network` draws its mini-batches from ``seed + CONTROL_BATCH_SEED_OFFSET``."""
DIVERGED_LOSS = 0.5 * math.log(10)
"""A copy of :func:`meta_adaptive_network` has diverged when its training loss over the last tenth of the run
is above half the loss of the uniform prediction on digits' 10 classes."""
NETWORK_COPIES = ("adamw", "sphere", "sphere_corrected", "control")


def meta_adaptive_network(
    steps: int = 3000,
    lr: float = 1e-2,
    weight_decay: float = 0.1,
    configs: Sequence[tuple[float, float, str]] = ((0.0, 0.999, "elementwise"), (0.9, 0.999, "elementwise")),
    batch_size: int = 32,
    hidden: int = 64,
    depth: int = 2,
    record_every: int = 10,
    seed: int = 0,
    curve_points: int = 200,
    progress: Progress = None,
) -> dict[str, Any]:
    r"""AdamW against explicit 2-Adam on the sphere for the invariant weights of a LayerNorm MLP on digits,
    beside a seed-to-seed control.

    Four copies start from one initialisation (``seed``) and train in lockstep:

    - ``adamw``: ``KAdam(k=1)`` (AdamW) on every parameter, mini-batches drawn from ``seed``;
    - ``sphere``: :class:`SphericalTwoAdam` (same η, λ, level 1) on the scale-invariant hidden weights and the
      same ``KAdam(k=1)`` on the rest, on the same mini-batches;
    - ``sphere_corrected``: the same with 2-Adam's step multiplied by ``c = 1/√F = √((1 − qβ)/(1 + qβ))``,
      the factor by which momentum correlation makes AdamW's angular update smaller in equilibrium
      (THEORY §4). Level 2's statistic is kept at ``ν/c²`` (the invariant weights start scaled by ``1/c``,
      which leaves the loss unchanged, and each step's new term enters divided by ``c²``), so every step is
      ``c`` times 2-Adam's. At β = 0, ``c = 1`` and this copy is ``sphere``;
    - ``control``: AdamW again, mini-batches drawn from ``seed + CONTROL_BATCH_SEED_OFFSET``: how far two AdamW
      runs that differ only in batch order drift apart, the noise floor of the cosines.

    Per invariant weight and copy: the cosine between its direction and ``adamw``'s over time and at the
    end; for the 2-Adam copies the ratio AdamW / copy of the RMS angular update over the last third, with the
    noise-dominated prediction ``1/√F`` for ``sphere``. Per copy: the training-loss curve (mean over each
    recording window), the mean over the last tenth of the run, ``diverged`` (that mean above
    :data:`DIVERGED_LOSS`) and the test accuracy.
    """
    shrink = 1 - lr * weight_decay
    results = []
    total = steps * len(configs)
    for config_index, (beta, gamma, mode) in enumerate(configs):
        adamw_model, data = _digits_model_and_data("layer", hidden, depth, seed)
        inputs, targets = data["train"]
        generator = torch.Generator().manual_seed(seed)
        control_generator = torch.Generator().manual_seed(seed + CONTROL_BATCH_SEED_OFFSET)
        probe = torch.randperm(len(targets), generator=generator)[:256]
        tracked, _ = _explained_invariant(adamw_model, (inputs[probe], targets[probe]))
        level = {"lr": lr, "betas": (beta, gamma), "eps": 1e-8, "weight_decay": weight_decay, "norm": mode}
        scale = 1 / math.sqrt(correlation_factor(beta, shrink))
        copies = ("adamw", "sphere", "control") + (("sphere_corrected",) if beta > 0 else ())
        models = {name: (adamw_model if name == "adamw" else copy.deepcopy(adamw_model)) for name in copies}
        optimizers: dict[str, tuple[Any, ...]] = {}
        parameters = {name: dict(model.named_parameters()) for name, model in models.items()}
        for name in copies:
            if name in ("adamw", "control"):
                optimizers[name] = (KAdam(models[name].parameters(), k=1, **level),)
                continue
            invariant = [parameters[name][layer] for layer in tracked]
            if name == "sphere_corrected":
                with torch.no_grad():
                    for weight in invariant:
                        weight.div_(scale)  # ν₀ ∝ |W₀|²: level 2 starts at ν₀/c², the loss is unchanged
            rest = [p for layer, p in parameters[name].items() if layer not in tracked]
            optimizers[name] = (SphericalTwoAdam(invariant, **level), KAdam(rest, k=1, **level))
        cosines: dict[str, dict[str, list[float]]] = {name: {layer: [] for layer in tracked} for name in copies[1:]}
        losses: dict[str, list[float]] = {name: [] for name in copies}
        window: dict[str, float] = {name: 0.0 for name in copies}
        cosine_steps: list[int] = []
        trackers = {
            name: NormTracker(
                optimizers[name][0], [(layer, parameters[name][layer]) for layer in tracked], every=record_every
            )
            for name in ("adamw", "sphere", "sphere_corrected")
            if name in copies
        }
        gamma2 = shrink**2
        # not workloads.train: four models step in lockstep on shared mini-batches, two of them with two optimizers
        try:
            for step in range(1, steps + 1):
                index = torch.randint(len(targets), (batch_size,), generator=generator)
                control_index = torch.randint(len(targets), (batch_size,), generator=control_generator)
                for name in copies:
                    batch = control_index if name == "control" else index
                    loss = _cross_entropy(models[name], (inputs[batch], targets[batch]))
                    models[name].zero_grad(set_to_none=True)
                    loss.backward()
                    window[name] += float(loss.detach())
                    if name == "sphere_corrected":
                        sphere = optimizers[name][0]
                        weights = sphere.param_groups[0]["params"]
                        # ν'_{n−1}; at the first step the ν₀ the optimizer is about to set from |W₀|
                        before = [
                            sphere.state[p]["level2_sq"]
                            if sphere.state[p]
                            else (1 - gamma2) * torch.linalg.vector_norm(p.detach()) ** 2 / (lr**2 * p.numel())
                            for p in weights
                        ]
                    for optimizer in optimizers[name]:
                        optimizer.step()
                    if name == "sphere_corrected":
                        for p, old in zip(weights, before):
                            state = sphere.state[p]  # ν' = γ₂ν'_{n−1} + (1 − γ₂)·mean(u²)/c²
                            state["level2_sq"] = gamma2 * old + (state["level2_sq"] - gamma2 * old) / scale**2
                if step % record_every == 0:
                    cosine_steps.append(step)
                    for name in copies:
                        losses[name].append(window[name] / record_every)
                        window[name] = 0.0
                    reference = parameters["adamw"]
                    for name in copies[1:]:
                        for layer in tracked:
                            cosines[name][layer].append(
                                float(torch.sum(_direction(reference[layer]) * _direction(parameters[name][layer])))
                            )
                if progress is not None and step % 100 == 0:
                    progress(config_index * steps + step, total)
        finally:
            for tracker in trackers.values():
                tracker.remove()
        histories = {name: tracker.history() for name, tracker in trackers.items()}
        recorded = histories["adamw"]["steps"]
        late = 2 * steps / 3

        def ratio(name: str, layer: str, histories=histories, recorded=recorded, late=late) -> float:
            return _window_rms(histories["adamw"]["angular_update"][layer], recorded, late) / _window_rms(
                histories[name]["angular_update"][layer], recorded, late
            )

        steps_array = np.asarray(cosine_steps)
        per_layer = []
        for layer in tracked:
            entry: dict[str, Any] = {"name": layer}
            for name in copies[1:]:
                values = np.asarray(cosines[name][layer])
                entry[name] = {
                    "final_cosine": float(values[-1]),
                    "min_cosine": float(values.min()),
                    "cosine_curve": _downsample(steps_array, values, curve_points),
                }
                if name in histories:
                    entry[name]["angular_update_ratio"] = ratio(name, layer)
            # the uncorrected pair under the names the figures and tables have always read
            entry.update(
                {
                    key: entry["sphere"][key]
                    for key in ("final_cosine", "min_cosine", "cosine_curve", "angular_update_ratio")
                }
            )
            per_layer.append(entry)
        tail = max(1, len(cosine_steps) // 10)
        loss_summary = {
            name: {
                "final": float(np.mean(losses[name][-tail:])),
                "diverged": bool(np.mean(losses[name][-tail:]) > DIVERGED_LOSS),
                "curve": _downsample(steps_array, np.asarray(losses[name]), curve_points),
            }
            for name in copies
        }
        accuracy = {name: _accuracy(models[name], data["test"]) for name in copies}
        results.append(
            {
                "beta": beta,
                "gamma": gamma,
                "norm": mode,
                "layers": per_layer,
                "copies": list(copies),
                "step_scale": scale,
                "predicted_ratio": scale,
                "momentum_memory_ratio": 2 * lr * weight_decay / (1 - beta),
                "losses": loss_summary,
                "test_accuracy": accuracy,
                "adamw_test_accuracy": accuracy["adamw"],
                "sphere_test_accuracy": accuracy["sphere"],
            }
        )
    return {
        "task": "digits-ln",
        "steps": steps,
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "seed": seed,
        "control_batch_seed": seed + CONTROL_BATCH_SEED_OFFSET,
        "relaxation_steps": relaxation_steps(lr, weight_decay),
        "configs": results,
    }


def scale_invariant_census(
    task: str, task_sizes: Mapping[str, Any] | None = None, seed: int = 0, batch_size: int = 64, warmup_steps: int = 100
) -> dict[str, Any]:
    """Which parameter tensors of ``task``'s model are scale-invariant (THEORY §4), by measurement.

    The model (``seed``) first trains ``warmup_steps`` mini-batches with AdamW (lr 1e-3): at initialisation
    the loss is nearly flat (outputs near uniform), so scaling a tensor can leave it within tolerance by
    accident. Then :func:`kadam.normalization.find_scale_invariant` (train mode, its default tolerances)
    probes one training batch. Returns the evidence table and the share of scalars in invariant tensors.
    """
    built = build_task(task, "cpu", **(task_sizes or {}))
    with seeded_initialisation(seed):
        model = built.make_model()
    generator = torch.Generator().manual_seed(seed)
    built.fit(model, torch.optim.AdamW(model.parameters(), lr=1e-3), warmup_steps, batch_size, generator)
    batch = built.sample_batch(generator, batch_size)
    report = find_scale_invariant(model, lambda m, b: built.loss(m(b[0]), b[1]), batch)
    sizes = dict(model.named_parameters())
    invariant_scalars = sum(sizes[name].numel() for name in report.invariant)
    return {
        "task": task,
        "parameters": parameter_count(model),
        "warmup_steps": warmup_steps,
        "invariant_tensors": report.invariant,
        "invariant_share": invariant_scalars / parameter_count(model),
        "report": report.to_dict(),
    }
