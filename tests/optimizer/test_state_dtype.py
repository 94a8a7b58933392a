"""Optimizer state in another dtype (``state_dtype``) and stochastic rounding (kadam.optimizer.precision).

Criteria, stated before the runs:

* Exactness against the float64 reference of THEORY §1 with every moment rounded to bfloat16 after its update
  (tests/optimizer/reference.py, ``round_state``): the implementations compute in float32 and round once, the
  reference in float64, so a rounding can fall the other way where float32's error (2⁻²⁴ relative) crosses a
  rounding boundary of bfloat16 (2⁻⁹ relative): about one moment in 10⁴ moves by one bfloat16 unit, which moves
  θ by at most lr·2⁻⁸ per step and level. Parameters must agree to ``lr * 1e-2`` per step (absolute) and no
  moment may differ by more than one bfloat16 unit. A guard shows the criterion is not met without the
  rounding (the float64 reference without ``round_state``).
* Paths against each other: the loop, foreach and fused CPU kernel store the same bfloat16 moments (stochastic
  rounding included: one hash, computed alike) except where a float32 value differs by a few units in the last
  place between paths, which can move a rounding by one bfloat16 unit: at most 1 moment in 10³, none by more.
* Unbiasedness of stochastic rounding (a statistical test): the mean of N roundings of a value is within 5
  standard errors of the value (false alarm about 6e-7 for independent bits), while rounding to nearest misses
  by more than 20 standard errors in the same test (so the test can fail).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from kadam import KAdam
from kadam.optimizer.precision import (
    check_state_options,
    hash32,
    random_bits,
    rounding_key,
    stochastic_round,
)
from kadam.optimizer.state import level_states, level_updates, param_group_levels
from tests.optimizer.reference import reference_kadam, round_to_bfloat16

PATHS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
CONFIGS = {
    "k1": {"k": 1},
    "k2-default": {"k": 2},
    "k3-default": {"k": 3},
    "k2-elementwise-meta": {"k": 2, "meta_betas": (0.9, 0.99), "meta_norm": "elementwise"},
    "k2-tensor-level-1": {"k": 2, "norm": "tensor", "meta_betas": (0.5, 0.99)},
}
SHAPES = [(37, 21), (5,), (1,), (3, 1024)]
BF16_UNIT = 2.0**-7  # bfloat16's spacing relative to the leading power of two (8 bits of precision)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _params(dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)) for shape in SHAPES
    ]


def _gradients(step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in SHAPES]


def _train(params, optimizer, steps, start=0):
    for step in range(start, start + steps):
        for param, grad in zip(params, _gradients(step)):
            param.grad = grad.to(param.dtype)
        optimizer.step()


def _levels(config):
    optimizer = KAdam([torch.nn.Parameter(torch.zeros(1))], **config)
    return [(lv.beta, lv.gamma, lv.eps, lv.norm) for lv in param_group_levels(optimizer, optimizer.param_groups[0])]


def _within_one_bfloat16_unit(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Elementwise: |a - e| <= one bfloat16 unit of max(|a|, |e|) (its spacing there)."""
    a, e = actual.double(), expected.double()
    magnitude = torch.maximum(a.abs(), e.abs())
    spacing = torch.where(magnitude > 0, torch.exp2(torch.floor(torch.log2(magnitude))) * BF16_UNIT, 0.0)
    return (a - e).abs() <= spacing + 1e-38


# ----------------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"state_dtype": torch.int8}, "state_dtype must be None"),
        ({"state_dtype": "bfloat16"}, "state_dtype must be None"),
        ({"state_dtype": torch.float64}, "state_dtype must be None"),
        ({"state_dtype": torch.float16}, "float16's range"),
        ({"stochastic_rounding": True}, "stochastic_rounding=True rounds moments stored in bfloat16"),
        ({"stochastic_rounding": True, "state_dtype": torch.float32}, "needs state_dtype=torch.bfloat16"),
        ({"stochastic_rounding": 1, "state_dtype": torch.bfloat16}, "stochastic_rounding must be True or False"),
    ],
)
def test_bad_state_options_are_refused_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KAdam([torch.nn.Parameter(torch.zeros(3))], **kwargs)


def test_bad_state_options_in_a_param_group_are_refused():
    optimizer = KAdam([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="state_dtype must be None"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "state_dtype": torch.int32})
    with pytest.raises(ValueError, match="stochastic_rounding=True"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "stochastic_rounding": True})
    assert len(optimizer.param_groups) == 1


def test_complex_parameters_keep_their_own_state_dtype():
    with pytest.raises(ValueError, match="complex"):
        KAdam([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))], state_dtype=torch.bfloat16)


def test_stochastic_rounding_of_bfloat16_parameters_needs_no_state_dtype():
    check_state_options(None, True, [torch.zeros(2, dtype=torch.bfloat16)])
    with pytest.raises(ValueError, match="stochastic_rounding"):
        check_state_options(None, True, [torch.zeros(2)])


# ----------------------------------------------------------------------------------------------------
# The state itself


def _state_bytes(optimizer) -> int:
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for key, value in state.items()
        if key != "step"
    )


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_moment_of_every_level_is_bfloat16_and_state_bytes_halve(path, config):
    kwargs = {**CONFIGS[config], **PATHS[path]}
    full_params, half_params = _params(), _params()
    full = KAdam(full_params, lr=1e-2, **kwargs)
    half = KAdam(half_params, lr=1e-2, state_dtype=torch.bfloat16, **kwargs)
    _train(full_params, full, 2)
    _train(half_params, half, 2)
    for param in half_params:
        for key, value in half.state[param].items():
            assert value.dtype == (torch.float32 if key == "step" else torch.bfloat16), key
    assert sorted(half.state[half_params[0]]) == sorted(full.state[full_params[0]])
    assert 2 * _state_bytes(half) == _state_bytes(full)


@pytest.mark.parametrize("path", list(PATHS))
def test_bfloat16_parameters_can_keep_float32_state(path):
    params = _params(torch.bfloat16)
    optimizer = KAdam(params, lr=1e-2, state_dtype=torch.float32, **PATHS[path])
    _train(params, optimizer, 2)
    assert all(v.dtype == torch.float32 for p in params for v in optimizer.state[p].values())
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("decoupled", [True, False])
def test_bfloat16_state_matches_the_float64_reference_with_bfloat16_rounding(path, config, decoupled):
    lr, steps, weight_decay = 1e-2, 8, 0.1
    params = _params()
    theta0 = [p.detach().double().numpy().copy() for p in params]
    optimizer = KAdam(
        params,
        lr=lr,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled,
        state_dtype=torch.bfloat16,
        **CONFIGS[config],
        **PATHS[path],
    )
    _train(params, optimizer, steps)

    def gradient(n, thetas):
        return [g.numpy() for g in _gradients(n - 1)]

    common = dict(lr=lr, levels=_levels(CONFIGS[config]), weight_decay=weight_decay, decoupled=decoupled)
    expected = reference_kadam(theta0, gradient, steps, round_state=round_to_bfloat16, **common)
    unrounded = reference_kadam(theta0, gradient, steps, **common)
    far = 1e-5  # about 20 float32 units of |θ| <= 4 over 8 steps; a moment rounded the other way moves θ by more
    off = [np.abs(p.detach().double().numpy() - e) for p, e in zip(params, expected)]
    n_far = sum(int((o > far).sum()) for o in off)
    n_total = sum(o.size for o in off)
    assert n_far <= 1e-3 * n_total, f"{n_far} of {n_total} parameters are further than {far} from the reference"
    bound = lr * 2.0**-6 * steps  # a few moments rounded the other way, one bfloat16 unit each
    assert max(o.max() for o in off) <= bound
    # Guard: without the rounding the reference is far from most parameters.
    n_far_unrounded = sum(int((np.abs(p.detach().double().numpy() - e) > far).sum()) for p, e in zip(params, unrounded))
    assert n_far_unrounded > 0.5 * n_total, f"the rounding is not resolved: {n_far_unrounded} of {n_total}"


def _run_paths(config, steps=6, **kwargs):
    results = {}
    for path in PATHS:
        params = _params()
        optimizer = KAdam(params, lr=1e-2, state_dtype=torch.bfloat16, **CONFIGS[config], **PATHS[path], **kwargs)
        _train(params, optimizer, steps)
        results[path] = (params, optimizer)
    return results


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_paths_store_the_same_bfloat16_moments(config, stochastic):
    results = _run_paths(config, stochastic_rounding=stochastic)
    loop_params, loop = results["loop"]
    for path in ("foreach", "fused"):
        params, optimizer = results[path]
        differing = total = 0
        for p, q in zip(params, loop_params):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
            for key, expected in loop.state[q].items():
                actual = optimizer.state[p][key]
                assert actual.dtype == expected.dtype
                assert _within_one_bfloat16_unit(actual, expected).all(), (path, key)
                differing += int((actual != expected).sum())
                total += expected.numel()
        assert differing <= total * 1e-3, f"{path}: {differing} of {total} moments differ"


# ----------------------------------------------------------------------------------------------------
# Stochastic rounding


def _numpy_lowbias32(x: np.ndarray) -> np.ndarray:
    """An independent lowbias32 in numpy uint32 arithmetic (wrapping multiplication)."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x = (x * np.uint32(0x7FEB352D)).astype(np.uint32)
    x ^= x >> np.uint32(15)
    x = (x * np.uint32(0x846CA68B)).astype(np.uint32)
    x ^= x >> np.uint32(16)
    return x


def test_hash_is_lowbias32_for_ints_and_tensors():
    values = np.array([0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1], dtype=np.uint64)
    expected = _numpy_lowbias32(values)
    assert [hash32(int(v)) for v in values] == expected.tolist()
    assert hash32(torch.tensor(values.astype(np.int64))).tolist() == expected.tolist()
    assert hash32(2**32 + 5) == hash32(5)  # modulo 2**32


def test_stochastic_rounding_rounds_to_a_neighbour_and_keeps_specials():
    values = torch.tensor([1.0, -1.0 - 2**-10, 3.0e-30, 0.0, float("inf"), -float("inf"), float("nan"), 1e38])
    rounded = stochastic_round(values, key=12345).float()
    finite = torch.isfinite(values)
    below = values[finite].bfloat16().float()  # a neighbour; the other is one unit away
    assert _within_one_bfloat16_unit(rounded[finite], below).all()
    assert torch.equal(rounded[:1], values[:1]) and rounded[3] == 0.0  # representable values stay
    assert rounded[4] == float("inf") and rounded[5] == -float("inf") and torch.isnan(rounded[6])


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_stochastic_rounding_is_unbiased(fraction):
    n = 200_000
    low = 1.0 + 37 * 2.0**-7
    value = low + fraction * 2.0**-7  # exactly representable in float32
    values = torch.full((n,), value, dtype=torch.float32)
    rounded = stochastic_round(values, key=rounding_key(17, 3, 1)).double()
    assert set(torch.unique(rounded).tolist()) <= {low, low + 2.0**-7}
    standard_error = rounded.std().item() / math.sqrt(n)
    assert abs(rounded.mean().item() - value) <= 5 * standard_error
    # The same test fails for rounding to nearest.
    nearest = values.bfloat16().double()
    assert abs(nearest.mean().item() - value) > 20 * standard_error


def test_stochastic_rounding_keeps_an_exponential_average_unbiased_in_the_optimizer():
    """A constant gradient g = 1: exactly v_n = 1 - γⁿ. Rounded to nearest, a bfloat16 v stalls once its
    increment (1 - γ)(1 - v) falls under half a unit; stochastically rounded, the mean over elements (each with
    its own bits) is within 5 standard errors of 1 - γⁿ."""
    n_elements, steps, gamma = 4096, 600, 0.999
    exact = 1 - gamma**steps
    means = {}
    for stochastic in (False, True):
        param = torch.nn.Parameter(torch.zeros(n_elements))
        optimizer = KAdam(
            [param], lr=0.0, k=1, betas=(0.9, gamma), state_dtype=torch.bfloat16, stochastic_rounding=stochastic
        )
        for _ in range(steps):
            param.grad = torch.ones(n_elements)
            optimizer.step()
        v = optimizer.state[param]["exp_avg_sq"].double()
        means[stochastic] = (v.mean().item(), v.std().item() / math.sqrt(n_elements))
    mean, standard_error = means[True]
    assert abs(mean - exact) <= 5 * max(standard_error, 1e-12), (mean, exact, standard_error)
    nearest, _ = means[False]
    assert abs(nearest - exact) > 20 * standard_error, (nearest, exact, standard_error)


def test_stochastic_rounding_is_reproducible_and_leaves_the_global_rng_alone():
    def run():
        params = _params()
        optimizer = KAdam(params, lr=1e-2, state_dtype=torch.bfloat16, stochastic_rounding=True)
        _train(params, optimizer, 4)
        return params, optimizer

    rng = torch.get_rng_state()
    (first_params, first), (second_params, second) = run(), run()
    assert torch.equal(torch.get_rng_state(), rng)
    for p, q in zip(first_params, second_params):
        assert torch.equal(p, q)
        for key in first.state[p]:
            assert torch.equal(first.state[p][key], second.state[q][key])


def test_random_bits_differ_between_parameters_moments_and_steps():
    keys = [rounding_key(step, index, moment) for step in (1, 2) for index in (0, 1) for moment in (0, 1, 2)]
    assert len(set(keys)) == len(keys)
    bits = random_bits(keys[0], 1 << 16)
    assert bits.min() >= 0 and bits.max() < 1 << 16
    counts = torch.bincount(bits >> 12, minlength=16).double()  # 16 bins of 4096 expected each
    chi2 = ((counts - 4096) ** 2 / 4096).sum().item()
    assert chi2 < 50  # 15 degrees of freedom: P(chi2 > 50) is about 1e-5


def test_identical_parameters_at_different_positions_round_differently():
    a, b = torch.nn.Parameter(torch.zeros(1000)), torch.nn.Parameter(torch.zeros(1000))
    optimizer = KAdam([a, b], lr=1e-2, state_dtype=torch.bfloat16, stochastic_rounding=True)
    grad = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    a.grad, b.grad = grad.clone(), grad.clone()
    optimizer.step()
    assert not torch.equal(optimizer.state[a]["exp_avg"], optimizer.state[b]["exp_avg"])


# ----------------------------------------------------------------------------------------------------
# k = 1 with float32 state stays torch's AdamW


@pytest.mark.parametrize("path", list(PATHS))
def test_k1_float32_state_is_torch_adamw_bitwise(path):
    torch_params, kadam_params = _params(), _params()
    expected = torch.optim.AdamW(torch_params, lr=1e-2, **PATHS[path])
    actual = KAdam(kadam_params, lr=1e-2, k=1, state_dtype=torch.float32, **PATHS[path])
    _train(torch_params, expected, 5)
    _train(kadam_params, actual, 5)
    for p, q in zip(kadam_params, torch_params):
        assert torch.equal(p, q)
        assert torch.equal(actual.state[p]["exp_avg_sq"], expected.state[q]["exp_avg_sq"])


# ----------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_bfloat16_checkpoint_resumes_bitwise(path, stochastic):
    kwargs = {"lr": 1e-2, "state_dtype": torch.bfloat16, "stochastic_rounding": stochastic, **PATHS[path]}
    straight_params = _params()
    straight = KAdam(straight_params, **kwargs)
    _train(straight_params, straight, 6)

    params = _params()
    optimizer = KAdam(params, **kwargs)
    _train(params, optimizer, 3)
    buffer = io.BytesIO()
    torch.save({"model": [p.detach().clone() for p in params], "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    saved = checkpoint["optimizer"]
    assert saved["param_groups"][0]["state_dtype"] == torch.bfloat16
    assert all(v.dtype == torch.bfloat16 for s in saved["state"].values() for k, v in s.items() if k != "step")
    resumed_params = [torch.nn.Parameter(t) for t in checkpoint["model"]]
    resumed = KAdam(resumed_params, **kwargs)
    resumed.load_state_dict(saved)
    _train(resumed_params, resumed, 3, start=3)
    for p, q in zip(resumed_params, straight_params):
        assert torch.equal(p, q)


@pytest.mark.parametrize("saved_dtype, loaded_dtype", [(torch.bfloat16, None), (None, torch.bfloat16)])
def test_checkpoint_loads_into_another_state_dtype_with_a_cast(saved_dtype, loaded_dtype):
    params = _params()
    optimizer = KAdam(params, lr=1e-2, state_dtype=saved_dtype)
    _train(params, optimizer, 3)
    other = KAdam(_params(), lr=1e-2, state_dtype=loaded_dtype)
    other.load_state_dict(optimizer.state_dict())
    assert other.param_groups[0]["state_dtype"] == loaded_dtype
    for p, q in zip(other.param_groups[0]["params"], params):
        for key, value in optimizer.state[q].items():
            loaded = other.state[p][key]
            if key == "step":
                assert torch.equal(loaded, value)
            else:
                assert loaded.dtype == (loaded_dtype or torch.float32)
                assert torch.equal(loaded, value.to(loaded.dtype))
    _train(other.param_groups[0]["params"], other, 1)  # and it steps


def test_torch_adamw_checkpoint_loads_into_bfloat16_state():
    params = _params()
    adamw = torch.optim.AdamW(params, lr=1e-2)
    _train(params, adamw, 2)
    kadam_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimizer = KAdam(kadam_params, lr=1e-2, k=1, state_dtype=torch.bfloat16)
    optimizer.load_state_dict(adamw.state_dict())
    state = optimizer.state[kadam_params[0]]
    assert state["exp_avg"].dtype == torch.bfloat16
    assert torch.equal(state["exp_avg"], adamw.state[params[0]]["exp_avg"].bfloat16())


def test_checkpoint_without_state_dtype_loads():
    params = _params()
    optimizer = KAdam(params, lr=1e-2)
    _train(params, optimizer, 1)
    saved = optimizer.state_dict()
    for group in saved["param_groups"]:
        del group["state_dtype"], group["stochastic_rounding"]
    other = KAdam(_params(), lr=1e-2, state_dtype=torch.bfloat16)
    other.load_state_dict(saved)
    assert other.state[other.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------
# The state accessors


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("config", ["k2-default", "k3-default", "k2-tensor-level-1"])
def test_level_accessors_read_bfloat16_state(path, config):
    lr = 1e-2
    params = _params()
    optimizer = KAdam(params, lr=lr, weight_decay=0.0, state_dtype=torch.bfloat16, **CONFIGS[config], **PATHS[path])
    _train(params, optimizer, 3)
    before = [p.detach().clone() for p in params]
    _train(params, optimizer, 1, start=3)
    for param, previous in zip(params, before):
        states = level_states(optimizer, param)
        assert len(states) == CONFIGS[config]["k"]
        assert states[0].exp_avg.dtype == torch.bfloat16
        update = level_updates(optimizer, param)[-1]
        assert update.dtype == torch.float32
        torch.testing.assert_close(previous - lr * update, param.detach(), rtol=0, atol=1e-6)
