"""Fuzzing the constructor, ``step`` and ``load_state_dict`` with hypothesis (hostile input, no crash, no hang).

Each example either ends in a clean ``ValueError``/``KeyError``/``RuntimeError``/``TypeError`` with a message,
or steps, and then every parameter and state tensor equals what the loop implementation
(``foreach=False, fused=False``) computes from the same input: to 1e-6 of the largest magnitude in float32
(parameters and first moments: of at least 1, the size of their inputs, since a running mean can cancel)
(1e-12 in float64), with NaN where the loop has NaN. A fused step of bfloat16 parameters runs float32 math
where the loop rounds every op, so it is held against the float32 loop, to a few of its units in the last
place, parameters only. float16 steps are checked for clean errors and shapes only: a second moment
(1 - γ) g² underflows float16 at ordinary gradients (below 6e-8), after which the loop divides by zero and
no path's values mean anything. A refused checkpoint leaves the
optimizer as it was. Inputs: hyperparameters good and bad (out of range, non-finite, mis-typed, tensor lr
of several shapes), parameter shapes with zero-size ones, four float dtypes and complex, gradients missing
for some parameters, every path (default, loop, foreach, fused), and state dicts with missing, extra,
mis-shaped and mis-typed entries.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kadam import KAdam

CLEAN_ERRORS = (ValueError, KeyError, RuntimeError, TypeError)
PATHS = [{}, {"foreach": False}, {"foreach": True}, {"fused": True}]
TOLERANCE = {
    torch.float32: 1e-6,
    torch.float64: 1e-12,
    torch.float16: 2e-2,
    torch.bfloat16: 1e-1,
    torch.complex64: 1e-6,
}
FUZZ = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_INF, _NAN = math.inf, math.nan

GOOD = {
    "lr": st.sampled_from([1e-3, 1e-2, 0.0, 0.3]),
    "betas": st.sampled_from([(0.9, 0.999), (0.0, 0.99), (0.5, 0.9), (0.99, 0.9999)]),
    "eps": st.sampled_from([1e-8, 1e-3, 0.5]),
    "weight_decay": st.sampled_from([0.0, 1e-2, 0.5]),
    "k": st.sampled_from([1, 2, 3]),
    "norm": st.sampled_from(["elementwise", "tensor"]),
    "meta_betas": st.sampled_from([None, (0.0, 0.999), (0.5, 0.99)]),
    "meta_norm": st.sampled_from([None, "tensor", "elementwise"]),
    "maximize": st.booleans(),
    "decoupled_weight_decay": st.booleans(),
}


def _tensor_lr(value: float, num_dim: int) -> torch.Tensor:
    return torch.full((1,) * num_dim, value)


BAD = {
    "lr": st.one_of(
        st.sampled_from([-1e-3, _INF, -_INF, _NAN, "0.01", None, True, [1e-3]]),
        st.builds(_tensor_lr, st.sampled_from([1e-2, _NAN, _INF, -1.0]), st.integers(0, 2)),
        st.just(torch.tensor([1e-3, 1e-3])),
    ),
    "betas": st.sampled_from(
        [
            (1.0, 0.999),
            (0.9, -0.1),
            ("0.9", 0.99),
            (0.9,),
            0.9,
            (_NAN, 0.9),
            (0.9, _INF),
            [(0.9, 0.999)] * 5,
            (True, 0.99),
        ]
    ),
    "eps": st.sampled_from([-1e-8, _INF, _NAN, "1e-8", [1e-8] * 7]),
    "weight_decay": st.sampled_from([-0.1, _INF, _NAN, "0", None]),
    "k": st.sampled_from([0, -1, 2.0, True, "2"]),
    "norm": st.sampled_from(["layer", 3, ["tensor"] * 9]),
    "meta_betas": st.sampled_from([(1.5, 0.9), (0.0, 1.0), ("0", 0.99), [(0.0, 0.9)] * 9]),
    "meta_norm": st.sampled_from(["batch", 0]),
    "amsgrad": st.just(True),
    "differentiable": st.just(True),
}


@st.composite
def hyperparameters(draw: Any, valid: bool = False) -> dict[str, Any]:
    """Every argument good, or (unless ``valid``) one or two of them bad."""
    kwargs = {name: draw(strategy) for name, strategy in GOOD.items()}
    if draw(st.booleans()):  # lr as a tensor of 0, 1 or 2 dimensions
        kwargs["lr"] = _tensor_lr(kwargs["lr"], draw(st.integers(0, 2)))
    bad = [] if valid else draw(st.one_of(st.just([]), st.lists(st.sampled_from(list(BAD)), min_size=1, max_size=2)))
    for name in bad:
        kwargs[name] = draw(BAD[name])
    return {key: value for key, value in kwargs.items() if value is not None or key in bad}


SHAPES = st.lists(
    st.one_of(
        st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
        st.sampled_from([(0,), (1,), (300,), (17, 33)]),
    ),
    min_size=1,
    max_size=4,
)
DTYPES = st.sampled_from([torch.float32, torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64])


def _make_params(shapes: list[tuple[int, ...]], dtype: torch.dtype, seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)) for shape in shapes
    ]


def _step(pairs: list[tuple[list[torch.nn.Parameter], KAdam]], seed: int, skip: int | None) -> None:
    """One step of every optimizer with the same gradients (none for parameter ``skip``)."""
    params = pairs[0][0]
    generator = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) for p in params]
    for group_params, optimizer in pairs:
        for j, (param, grad) in enumerate(zip(group_params, grads)):
            param.grad = None if j == skip else grad.to(param.dtype, copy=True)
        optimizer.step()


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str, floor: float = 0.0
) -> None:
    """Equal non-finite entries, and finite ones within ``tolerance`` times the larger of the largest expected
    magnitude and ``floor``."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if actual.is_complex():
        actual, expected = torch.view_as_real(actual), torch.view_as_real(expected)
    actual, expected = actual.double(), expected.double()
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(actual)), what
    assert torch.equal(actual[~finite].isnan(), expected[~finite].isnan()), what
    assert torch.equal(actual[~finite & ~expected.isnan()], expected[~finite & ~expected.isnan()]), what
    if finite.any():
        scale = expected[finite].abs().max().clamp_min(max(floor, 1e-30))
        error = ((actual[finite] - expected[finite]).abs().max() / scale).item()
        assert error <= tolerance, f"{what}: relative error {error:.3g} > {tolerance:.1g}"


def _assert_same(tested: tuple[list, KAdam], reference: tuple[list, KAdam], tolerance: float) -> None:
    for j, (actual, expected) in enumerate(zip(tested[0], reference[0])):
        rounded = expected.dtype != actual.dtype  # a 16-bit fused step against the float32 loop
        if actual.dtype == torch.float16:
            assert actual.shape == expected.shape
        else:
            _assert_close(actual.detach(), expected.detach().to(actual.dtype), tolerance, f"parameter {j}", 1.0)
        state, expected_state = tested[1].state[actual], reference[1].state[expected]
        assert state.keys() == expected_state.keys(), j
        for key, value in expected_state.items():
            if not isinstance(value, torch.Tensor):  # a resumed level's step offset
                assert state[key] == value, key
            elif rounded or actual.dtype == torch.float16:
                assert state[key].shape == value.shape, key
            else:
                # A first moment is a running mean of inputs of size about 1 (gradients, level outputs) that can
                # cancel to far less: its error is measured against that size. A second moment cannot cancel.
                floor = 1.0 if key.startswith("exp_avg") and not key.startswith("exp_avg_sq") else 0.0
                _assert_close(state[key], value, tolerance, f"{key} of parameter {j}", floor)


def _assert_clean(error: BaseException) -> None:
    assert isinstance(error, CLEAN_ERRORS), repr(error)
    assert str(error).strip("'\" "), repr(error)


HALF = (torch.float16, torch.bfloat16)


def _build(shapes, dtype, seed, kwargs, path) -> tuple[tuple[list, KAdam], tuple[list, KAdam]]:
    """The optimizer under test and the loop reference. A fused step of 16-bit parameters runs float32 math
    (the loop rounds every op to 16 bits, where v underflows), so its reference is the float32 loop."""
    if dtype in HALF and not path:
        path = {"fused": True}
    lr = kwargs.get("lr")
    if dtype == torch.float64 and isinstance(lr, torch.Tensor) and lr.is_floating_point():
        # A float32 tensor lr rounds the loop's step size and decay factor to float32 (the fused step reads
        # lr as a double): a float64 run takes a float64 lr.
        kwargs = {**kwargs, "lr": lr.double()}
    tested_params = _make_params(shapes, dtype, seed)
    reference_dtype = torch.float32 if dtype in HALF and path.get("fused") else dtype
    reference_params = [torch.nn.Parameter(p.detach().to(reference_dtype, copy=True)) for p in tested_params]
    tested = KAdam(tested_params, **kwargs, **path)
    reference = KAdam(reference_params, **kwargs, foreach=False, fused=False)
    return (tested_params, tested), (reference_params, reference)


def _run_or_clean_error(action) -> bool:
    """True when ``action`` ran; False when it raised a clean error (anything else fails the test)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action()
    except CLEAN_ERRORS as error:
        _assert_clean(error)
        event(f"clean {type(error).__name__}")
        return False
    return True


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@FUZZ
@given(
    kwargs=hyperparameters(),
    shapes=SHAPES,
    dtype=DTYPES,
    path=st.sampled_from(PATHS),
    seed=st.integers(0, 2**16),
    skip=st.one_of(st.none(), st.integers(0, 3)),
)
def test_fuzz_constructor_and_step(kwargs, shapes, dtype, path, seed, skip):
    built: list = []
    if not _run_or_clean_error(lambda: built.append(_build(shapes, dtype, seed, kwargs, path))):
        return
    tested, reference = built[0]
    for n in range(3):
        if not _run_or_clean_error(lambda: _step([tested, reference], seed + n, skip)):
            return
    _assert_same(tested, reference, TOLERANCE[dtype])
    event("stepped, equal to the loop")


def _mutations() -> st.SearchStrategy:
    """A function that changes a state dict in place (given the parameters, for their shapes)."""
    values = st.sampled_from(
        [
            "zeros(3)",
            "zeros(())",
            "zeros(shape + (1,))",
            "float64",
            "int64",
            "complex",
            "bool",
            "str",
            "none",
            "float",
            "nan_tensor",
            "shape_zeros",
        ]
    )
    keys = st.sampled_from(
        [
            "step",
            "exp_avg",
            "exp_avg_sq",
            "exp_avg_2",
            "exp_avg_sq_2",
            "exp_avg_sq_3",
            "exp_avg_sq_9",
            "step_offset_2",
            "max_exp_avg_sq",
            "foo",
        ]
    )
    group_keys = st.sampled_from(
        [
            "lr",
            "betas",
            "eps",
            "weight_decay",
            "k",
            "params",
            "decoupled_weight_decay",
            "amsgrad",
            "meta_betas",
            "meta_norm",
            "maximize",
        ]
    )
    group_values = st.sampled_from([_NAN, -1.0, "x", None, (1.0, 0.9), True, 7, (), torch.tensor([1e-2])])
    return st.one_of(
        st.tuples(st.just("delete"), st.integers(0, 3), keys),
        st.tuples(st.just("set"), st.integers(0, 3), keys, values),
        st.tuples(st.just("drop_param"), st.integers(0, 3)),
        st.tuples(st.just("group_delete"), group_keys),
        st.tuples(st.just("group_set"), group_keys, group_values),
        st.tuples(st.just("extra_group")),
        st.tuples(st.just("none")),
    )


def _value(kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
    return {
        "zeros(3)": lambda: torch.zeros(3),
        "zeros(())": lambda: torch.zeros(()),
        "zeros(shape + (1,))": lambda: torch.zeros(shape + (1,)),
        "float64": lambda: torch.zeros(shape, dtype=torch.float64),
        "int64": lambda: torch.zeros(shape, dtype=torch.int64),
        "complex": lambda: torch.zeros(shape, dtype=torch.complex128),
        "bool": lambda: torch.zeros(shape, dtype=torch.bool),
        "str": lambda: "x",
        "none": lambda: None,
        "float": lambda: 2.5,
        "nan_tensor": lambda: torch.full((), _NAN),
        "shape_zeros": lambda: torch.zeros(shape, dtype=dtype),
    }[kind]()


def _mutate(state_dict: dict, mutation: tuple, params: list[torch.nn.Parameter]) -> None:
    kind, *rest = mutation
    state, group = state_dict["state"], state_dict["param_groups"][0]
    if kind in ("delete", "set", "drop_param"):
        j = rest[0] % len(params)
        if kind == "drop_param":
            state.pop(j, None)
        elif kind == "delete":
            state.get(j, {}).pop(rest[1], None)
        elif j in state:
            state[j][rest[1]] = _value(rest[2], tuple(params[j].shape), params[j].dtype)
    elif kind == "group_delete":
        group.pop(rest[0], None)
    elif kind == "group_set":
        group[rest[0]] = rest[1]
    elif kind == "extra_group":
        state_dict["param_groups"].append(copy.deepcopy(group))


@FUZZ
@given(
    kwargs=hyperparameters(valid=True),
    shapes=SHAPES,
    dtype=DTYPES,
    path=st.sampled_from(PATHS),
    seed=st.integers(0, 2**16),
    mutation=_mutations(),
)
def test_fuzz_load_state_dict(kwargs, shapes, dtype, path, seed, mutation):
    tested, reference = _build(shapes, dtype, seed, kwargs, path)
    _step([tested, reference], seed, None)
    checkpoint = copy.deepcopy(reference[1].state_dict())
    _mutate(checkpoint, mutation, reference[0])
    before = copy.deepcopy(tested[1].state_dict())
    if not _run_or_clean_error(lambda: tested[1].load_state_dict(copy.deepcopy(checkpoint))):
        after = tested[1].state_dict()  # a refused checkpoint changes nothing
        assert after["param_groups"] == before["param_groups"]
        assert after["state"].keys() == before["state"].keys()
        for j, state in before["state"].items():
            assert after["state"][j].keys() == state.keys()
            for key, value in state.items():
                assert torch.equal(after["state"][j][key], value), key
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference[1].load_state_dict(copy.deepcopy(checkpoint))  # what loads into one loads into the other
    for n in range(2):
        if not _run_or_clean_error(lambda: _step([tested, reference], seed + 1 + n, None)):
            return
    _assert_same(tested, reference, TOLERANCE[dtype])
    event("stepped, equal to the loop")
