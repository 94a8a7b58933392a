"""kadam.optax: the optax transformation against torch KAdam and against THEORY §1 directly (issue 8).

Runs in float64 (``jax_enable_x64``); needs the ``kadam[jax]`` extra, which the test command installs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest
import torch

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from kadam import KAdam  # noqa: E402
from kadam.optax import ScaleByTensorAdamState, kadam, scale_by_kadam  # noqa: E402

STEPS = 25
BATCH, IN_FEATURES, HIDDEN, OUT_FEATURES = 6, 3, 5, 2
TOLERANCE = 1e-10
PER_LEVEL_BETAS = [(0.9, 0.999), (0.5, 0.99), (0.8, 0.95)]

Params = dict[str, Any]


def initial_parameters() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w1": rng.normal(size=(IN_FEATURES, HIDDEN)),
        "b1": rng.normal(size=HIDDEN) * 0.1,
        "w2": rng.normal(size=(HIDDEN, OUT_FEATURES)),
        "b2": rng.normal(size=OUT_FEATURES) * 0.1,
    }


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.normal(size=(BATCH, IN_FEATURES)), rng.normal(size=(BATCH, OUT_FEATURES))) for _ in range(STEPS)]


def jax_loss(params: Params, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    hidden = jnp.tanh(inputs @ params["w1"] + params["b1"])
    return jnp.mean(jnp.square(hidden @ params["w2"] + params["b2"] - targets))


def torch_loss(params: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    hidden = torch.tanh(inputs @ params["w1"] + params["b1"])
    return torch.mean(torch.square(hidden @ params["w2"] + params["b2"] - targets))


def optax_trajectory(transformation: optax.GradientTransformation) -> list[dict[str, np.ndarray]]:
    @jax.jit
    def step(params: Params, state: optax.OptState, inputs: jax.Array, targets: jax.Array) -> tuple[Params, Any]:
        grads = jax.grad(jax_loss)(params, inputs, targets)
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = jax.tree.map(jnp.asarray, initial_parameters())
    state = transformation.init(params)
    trajectory = []
    for inputs, targets in batches():
        params, state = step(params, state, jnp.asarray(inputs), jnp.asarray(targets))
        trajectory.append(jax.tree.map(np.asarray, params))
    return trajectory


def torch_trajectory(
    make_optimizer: Callable[[dict[str, torch.Tensor]], torch.optim.Optimizer],
    lr_factor: Callable[[int], float] | None = None,
) -> list[dict[str, np.ndarray]]:
    params = {name: torch.tensor(value, requires_grad=True) for name, value in initial_parameters().items()}
    optimizer = make_optimizer(params)
    scheduler = None if lr_factor is None else torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    trajectory = []
    for inputs, targets in batches():
        optimizer.zero_grad()
        torch_loss(params, torch.from_numpy(inputs), torch.from_numpy(targets)).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        trajectory.append({name: p.detach().numpy().copy() for name, p in params.items()})
    return trajectory


def max_difference(first: list[dict[str, np.ndarray]], second: list[dict[str, np.ndarray]]) -> float:
    assert len(first) == len(second) == STEPS
    return max(float(np.max(np.abs(a[name] - b[name]))) for a, b in zip(first, second) for name in a)


def level_settings(k: int, mode: str) -> dict[str, Any]:
    """k levels all in ``mode``, each with its own (β, γ) (momentum at every level)."""
    if k == 1:
        return {"k": 1, "betas": PER_LEVEL_BETAS[0], "norm": mode}
    return {"k": k, "betas": PER_LEVEL_BETAS[:k], "norm": [mode] * k}


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "coupled"])
@pytest.mark.parametrize("mode", ["elementwise", "tensor"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_trajectory_equals_torch_kadam_in_float64(k: int, mode: str, decoupled: bool) -> None:
    settings = {**level_settings(k, mode), "eps": 1e-8, "weight_decay": 0.05, "decoupled_weight_decay": decoupled}
    expected = torch_trajectory(lambda params: KAdam(params.values(), lr=3e-2, **settings))
    assert max_difference(optax_trajectory(kadam(3e-2, **settings)), expected) <= TOLERANCE


def test_defaults_equal_torch_defaults() -> None:
    # k = 2: level 1 elementwise (0.9, 0.999), level 2 tensor mode (0, 0.999), decoupled decay 1e-2.
    expected = torch_trajectory(lambda params: KAdam(params.values(), lr=3e-2))
    assert max_difference(optax_trajectory(kadam(3e-2)), expected) <= TOLERANCE


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_one_elementwise_level_is_exactly_optax_adamw(weight_decay: float) -> None:
    expected = optax_trajectory(optax.adamw(3e-2, b1=0.8, b2=0.99, eps=1e-7, weight_decay=weight_decay))
    got = optax_trajectory(kadam(3e-2, k=1, betas=(0.8, 0.99), eps=1e-7, weight_decay=weight_decay))
    assert max_difference(got, expected) == 0.0


def test_schedule_and_decay_mask_equal_torch_lambda_lr_and_param_groups() -> None:
    initial_lr = 5e-2
    schedule = optax.cosine_decay_schedule(initial_lr, decay_steps=STEPS, alpha=0.1)
    weights_only = {"w1": True, "b1": False, "w2": True, "b2": False}
    transformation = kadam(schedule, k=3, weight_decay=0.2, eps=[1e-8, 1e-6, 1e-7], mask=weights_only)

    def make_optimizer(params: dict[str, torch.Tensor]) -> KAdam:
        groups = [
            {"params": [p for name, p in params.items() if weights_only[name]]},
            {"params": [p for name, p in params.items() if not weights_only[name]], "weight_decay": 0.0},
        ]
        return KAdam(groups, lr=initial_lr, k=3, weight_decay=0.2, eps=[1e-8, 1e-6, 1e-7])

    expected = torch_trajectory(make_optimizer, lambda step: float(schedule(step)) / initial_lr)
    assert max_difference(optax_trajectory(transformation), expected) <= TOLERANCE


def theory_levels(inputs: list[np.ndarray], levels: list[tuple[float, float, float, str]]) -> list[np.ndarray]:
    """THEORY §1 written out: chained levels from zero states, shared step n, per-level bias corrections."""
    m = [np.zeros_like(inputs[0]) for _ in levels]
    v = [np.zeros_like(inputs[0]) if mode == "elementwise" else 0.0 for _, _, _, mode in levels]
    outputs = []
    for n, x in enumerate(inputs, start=1):
        for i, (beta, gamma, eps, mode) in enumerate(levels):
            m[i] = beta * m[i] + (1 - beta) * x
            v[i] = gamma * v[i] + (1 - gamma) * (x**2 if mode == "elementwise" else np.mean(x**2))
            x = (m[i] / (1 - beta**n)) / (np.sqrt(v[i] / (1 - gamma**n)) + eps)
        outputs.append(x)
    return outputs


def test_chained_levels_follow_theory_section_1() -> None:
    rng = np.random.default_rng(2)
    inputs = [rng.normal(size=(4, 3)) * rng.uniform(0.1, 10) for _ in range(STEPS)]
    levels = [(0.9, 0.999, 1e-8, "elementwise"), (0.5, 0.99, 1e-6, "tensor"), (0.0, 0.9, 1e-7, "elementwise")]
    transformation = scale_by_kadam(
        k=3,
        betas=[level[:2] for level in levels],
        eps=[level[2] for level in levels],
        norm=[level[3] for level in levels],
    )
    state = transformation.init(jnp.zeros((4, 3)))
    for x, expected in zip(inputs, theory_levels(inputs, levels), strict=True):
        u, state = transformation.update(jnp.asarray(x), state)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-12, atol=0)


def test_levels_are_optax_scale_by_adam_or_a_scalar_second_moment() -> None:
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    state = kadam(1e-3, k=3, norm=["elementwise", "tensor", "elementwise"]).init(params)
    level_states = jax.tree.leaves(
        state, is_leaf=lambda node: isinstance(node, (optax.ScaleByAdamState, ScaleByTensorAdamState))
    )
    kinds = [type(node) for node in level_states if isinstance(node, (optax.ScaleByAdamState, ScaleByTensorAdamState))]
    assert kinds == [optax.ScaleByAdamState, ScaleByTensorAdamState, optax.ScaleByAdamState]
    tensor_level = next(node for node in level_states if isinstance(node, ScaleByTensorAdamState))
    assert all(leaf.shape == () for leaf in jax.tree.leaves(tensor_level.nu))
    assert jax.tree.map(jnp.shape, tensor_level.mu) == jax.tree.map(jnp.shape, params)


@pytest.mark.parametrize("learning_rate", [1e-2, lambda count: 1e-2 * 0.8**count], ids=["float", "schedule"])
def test_jit_compiles_once(learning_rate: optax.ScalarOrSchedule) -> None:
    transformation = kadam(learning_rate, k=3, norm="tensor")
    traces = []

    @jax.jit
    def step(params: Params, state: optax.OptState, inputs: jax.Array, targets: jax.Array) -> tuple[Params, Any]:
        traces.append(1)
        grads = jax.grad(jax_loss)(params, inputs, targets)
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = jax.tree.map(jnp.asarray, initial_parameters())
    state = transformation.init(params)
    eager_params, eager_state = params, state
    for inputs, targets in batches()[:3]:
        params, state = step(params, state, jnp.asarray(inputs), jnp.asarray(targets))
        grads = jax.grad(jax_loss)(eager_params, jnp.asarray(inputs), jnp.asarray(targets))
        updates, eager_state = transformation.update(grads, eager_state, eager_params)
        eager_params = optax.apply_updates(eager_params, updates)
    assert len(traces) == 1
    assert step._cache_size() == 1
    for name in params:
        np.testing.assert_allclose(np.asarray(params[name]), np.asarray(eager_params[name]), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"k must be an integer >= 1"),
        ({"betas": (0.9, 1.0)}, r"gamma of level 1 must be a number in \[0, 1\)"),
        ({"meta_betas": (-0.1, 0.999)}, r"beta of level 2 must be a number in \[0, 1\)"),
        ({"norm": "batch"}, r"norm of level 1 must be one of \('elementwise', 'tensor'\)"),
        ({"eps": [1e-8, 1e-8, 1e-8]}, r"eps must be one number or a sequence of k = 2 numbers"),
        ({"eps": -1e-8}, r"eps of level 1 must be a number >= 0"),
        ({"betas": [(0.9, 0.999), (0.0, 0.99)], "meta_betas": (0.0, 0.9)}, r"meta_betas cannot be given"),
        ({"weight_decay": -0.1}, r"weight_decay must be ≥ 0"),
        ({"learning_rate": -1.0}, r"learning_rate must be a float ≥ 0 or an optax schedule"),
    ],
)
def test_bad_arguments_name_the_argument_and_range(kwargs: dict[str, Any], message: str) -> None:
    arguments = {"learning_rate": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=message):
        kadam(**arguments)


def test_level_outside_stable_region_warns() -> None:
    with pytest.warns(UserWarning, match=r"outside the stable region"):
        kadam(1e-3, k=1, betas=(0.9, 0.5))
