"""A tensor learning rate of any 1-element shape, as torch's Adam takes it (torch's ``test_tensor_lr`` uses
``num_dim`` 1 and 2 besides the 0-dim tensor).

At k = 1 each of KAdam's paths runs against torch's matching one bit for bit where torch has it (the loop
and the fused kernel; torch's foreach path refuses a tensor lr without ``capturable``, so KAdam's foreach
path is held against torch's loop to a float32 rounding). At k ≥ 2 every shape of the tensor steps as the
0-dim tensor does, bit for bit, on every path, and as the float lr to rounding.
"""

from __future__ import annotations

import pytest
import torch

from kadam import KAdam

PATHS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _tensor_lr(num_dim: int, value: float = 1e-2) -> torch.Tensor:
    return torch.full((1,) * num_dim, value)


def _run(optimizer_class, lr, steps: int = 15, **kwargs) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in [(46,), (7, 5), (1,)]]
    optimizer = optimizer_class(params, lr=lr, **kwargs)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()
        scheduler.step()
    return [param.detach().clone() for param in params]


@pytest.mark.parametrize("num_dim", [0, 1, 2])
@pytest.mark.parametrize("path", ["loop", "fused"])
@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("maximize", [False, True])
def test_k1_tensor_lr_equals_torch_bitwise(num_dim, path, decoupled, maximize):
    torch_class = torch.optim.AdamW if decoupled else torch.optim.Adam
    flags = dict(weight_decay=0.1, maximize=maximize, **PATHS[path])
    expected = _run(torch_class, _tensor_lr(num_dim), **flags)
    actual = _run(KAdam, _tensor_lr(num_dim), k=1, decoupled_weight_decay=decoupled, **flags)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


@pytest.mark.parametrize("num_dim", [0, 1, 2])
def test_k1_foreach_tensor_lr_matches_torch_loop(num_dim):
    expected = _run(torch.optim.AdamW, _tensor_lr(num_dim), foreach=False)
    actual = _run(KAdam, _tensor_lr(num_dim), k=1, foreach=True)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("num_dim", [1, 2])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_one_element_shape_steps_as_the_0_dim_tensor(num_dim, path, k):
    expected = _run(KAdam, _tensor_lr(0), k=k, **PATHS[path])
    actual = _run(KAdam, _tensor_lr(num_dim), k=k, **PATHS[path])
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)
    as_float = _run(KAdam, 1e-2, k=k, **PATHS[path])
    for a, e in zip(actual, as_float):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)


def test_tensor_lr_of_several_elements_is_refused():
    with pytest.raises(ValueError, match="1-element"):
        KAdam([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor([1e-3, 1e-3]))
