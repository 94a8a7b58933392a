"""KAdam for k >= 2 against the float64 loop written straight from THEORY §1 (tests/optimizer/reference.py).

The gradient is that of a fixed quadratic, computed the same way on both sides, so the two runs see the
same inputs up to rounding: agreement ≤ 1e-10 relative over 100 steps. Loop and foreach agree
≤ 1e-6 relative in float32 (their operation orders differ for tensor-mode levels).
"""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kadam import KAdam
from tests.optimizer.reference import reference_kadam

SHAPES = [(4, 5), (7,), (2, 3, 2)]


def _problem(seed: int, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    theta0 = [rng.standard_normal(shape) for shape in shapes]
    targets = [rng.standard_normal(shape) for shape in shapes]
    scales = [rng.uniform(0.1, 10.0, size=shape) for shape in shapes]

    def gradient(n, thetas):
        return [s * (t - c) + 0.1 * np.sin(n) for t, c, s in zip(thetas, targets, scales)]

    return theta0, gradient


def _run_kadam(theta0, gradient, steps, dtype=torch.float64, **kwargs):
    params = [torch.nn.Parameter(torch.tensor(t, dtype=dtype)) for t in theta0]
    optimizer = KAdam(params, **kwargs)
    for n in range(1, steps + 1):
        grads = gradient(n, [p.detach().double().numpy() for p in params])
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=dtype)
        optimizer.step()
    return [p.detach().double().numpy() for p in params], optimizer


def _max_relative_error(actual, expected):
    return max(np.max(np.abs(a - e)) / np.max(np.abs(e)) for a, e in zip(actual, expected))


LEVEL_CASES = [
    # (betas per level, modes per level, eps per level)
    ([(0.9, 0.999), (0.0, 0.999)], ["elementwise", "tensor"], [1e-8, 1e-8]),
    ([(0.9, 0.999), (0.9, 0.999)], ["elementwise", "elementwise"], [1e-8, 1e-6]),
    ([(0.8, 0.99), (0.5, 0.9), (0.0, 0.999)], ["tensor", "elementwise", "tensor"], [1e-8, 1e-7, 1e-8]),
    ([(0.9, 0.95), (0.0, 0.99), (0.9, 0.999)], ["elementwise", "tensor", "tensor"], [0.0, 1e-8, 1e-8]),
]


@pytest.mark.parametrize(
    "levels,foreach,weight_decay,decoupled",
    list(itertools.product(LEVEL_CASES, [False, True], [0.0, 0.05], [True, False])),
)
def test_matches_float64_reference(levels, foreach, weight_decay, decoupled):
    betas, norms, eps = levels
    theta0, gradient = _problem(seed=len(betas))
    expected = reference_kadam(
        theta0,
        gradient,
        100,
        lr=1e-2,
        levels=list(zip(*zip(*betas), eps, norms)),
        weight_decay=weight_decay,
        decoupled=decoupled,
    )
    actual, optimizer = _run_kadam(
        theta0,
        gradient,
        100,
        lr=1e-2,
        k=len(betas),
        betas=betas,
        norm=norms,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled,
        foreach=foreach,
    )
    assert _max_relative_error(actual, expected) <= 1e-10
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    for i, norm in enumerate(norms, start=1):
        key = "exp_avg_sq" if i == 1 else f"exp_avg_sq_{i}"
        assert state[key].dim() == (0 if norm == "tensor" else 2)


@pytest.mark.parametrize("levels", LEVEL_CASES, ids=range(len(LEVEL_CASES)))
def test_foreach_in_cache_sized_chunks_matches_float64_reference(levels, monkeypatch):
    """On the CPU the foreach step runs its tensors in chunks; with a chunk of 8 elements the three tensors
    (20, 7 and 12 elements) split into three chunks, each with its own step counts and moments."""
    import kadam.optimizer.kadam as kadam_module

    monkeypatch.setattr(kadam_module, "_CPU_FOREACH_CHUNK_ELEMENTS", 8)
    shapes = [torch.empty(shape) for shape in SHAPES]
    assert kadam_module._cache_sized_chunks(shapes) == [range(0, 1), range(1, 2), range(2, 3)]
    monkeypatch.setattr(kadam_module, "_CPU_FOREACH_CHUNK_ELEMENTS", 27)
    assert kadam_module._cache_sized_chunks(shapes) == [range(0, 2), range(2, 3)]  # 20 + 7 fit, 12 more do not
    betas, norms, eps = levels
    theta0, gradient = _problem(seed=len(betas))
    expected = reference_kadam(
        theta0, gradient, 50, lr=1e-2, levels=list(zip(*zip(*betas), eps, norms)), weight_decay=0.05, decoupled=True
    )
    actual, _ = _run_kadam(
        theta0, gradient, 50, lr=1e-2, k=len(betas), betas=betas, norm=norms, eps=eps, weight_decay=0.05, foreach=True
    )
    assert _max_relative_error(actual, expected) <= 1e-10


def test_default_meta_levels_are_tensor_mode_without_momentum():
    theta0, gradient = _problem(seed=7)
    expected = reference_kadam(
        theta0,
        gradient,
        60,
        lr=3e-3,
        levels=[(0.9, 0.999, 1e-8, "elementwise"), (0.0, 0.999, 1e-8, "tensor"), (0.0, 0.999, 1e-8, "tensor")],
        weight_decay=1e-2,
    )
    actual, _ = _run_kadam(theta0, gradient, 60, lr=3e-3, k=3)
    assert _max_relative_error(actual, expected) <= 1e-10


@pytest.mark.parametrize("meta_norm", ["elementwise", "tensor"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_loop_and_foreach_agree_in_float32(k, meta_norm):
    theta0, gradient = _problem(seed=3)
    runs = [
        _run_kadam(
            theta0,
            gradient,
            100,
            dtype=torch.float32,
            lr=1e-2,
            k=k,
            meta_norm=meta_norm,
            meta_betas=(0.5, 0.99),
            foreach=foreach,
        )[0]
        for foreach in (False, True)
    ]
    assert _max_relative_error(*runs) <= 1e-6


@st.composite
def _configurations(draw):
    k = draw(st.integers(1, 3))
    unit = st.floats(0.0, 0.95)
    betas = []
    for _ in range(k):  # stay in the stable region gamma > beta**2 so no warning fires
        beta = draw(unit)
        betas.append((beta, draw(st.floats(min(beta**2 + 0.01, 0.999), 0.999))))
    return dict(
        k=k,
        betas=betas,
        norm=[draw(st.sampled_from(["elementwise", "tensor"])) for _ in range(k)],
        eps=[draw(st.sampled_from([0.0, 1e-8, 1e-3])) for _ in range(k)],
        lr=draw(st.floats(1e-4, 1e-1)),
        weight_decay=draw(st.sampled_from([0.0, 0.01, 0.3])),
        decoupled_weight_decay=draw(st.booleans()),
        maximize=draw(st.booleans()),
        shapes=draw(st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=3)),
    )


@given(_configurations())
def test_property_matches_reference_and_foreach(config):
    shapes = config.pop("shapes")
    theta0, gradient = _problem(seed=11, shapes=shapes)
    sign = -1.0 if config["maximize"] else 1.0
    levels = [(b, g, e, n) for (b, g), e, n in zip(config["betas"], config["eps"], config["norm"])]
    expected = reference_kadam(
        theta0,
        lambda n, t: [sign * g for g in gradient(n, t)],
        20,
        lr=config["lr"],
        levels=levels,
        weight_decay=config["weight_decay"],
        decoupled=config["decoupled_weight_decay"],
    )
    for foreach in (False, True):
        actual, _ = _run_kadam(theta0, gradient, 20, foreach=foreach, **config)
        for a, e in zip(actual, expected):
            np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)
