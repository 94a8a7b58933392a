"""The bfloat16-state arms of the comparison protocol: each builds KAdam with its moments in bfloat16 and is its
float32 arm in every other respect (at the first step, rounded to nearest, its moments are the float32 arm's
rounded to bfloat16, and its parameters the float32 arm's within that rounding)."""

import pytest
import torch

from kadam.experiments.comparison.protocol import ARMS, make_arm_optimizer

LOW_PRECISION = {"kadam1-bf16": False, "kadam1-bf16-sr": True, "kadam2-bf16": False, "kadam2-bf16-sr": True}


def _stepped(arm):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    optimizer = make_arm_optimizer(arm, model.parameters(), 1e-2, 0.9, 0.999, 0.01, model=model)
    model(torch.randn(8, 5)).square().sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("arm", sorted(LOW_PRECISION))
def test_bf16_arm_has_bfloat16_moments_after_a_step(arm):
    assert arm in ARMS
    model, optimizer = _stepped(arm)
    assert all(g["state_dtype"] is torch.bfloat16 for g in optimizer.param_groups)
    assert all(g["stochastic_rounding"] is LOW_PRECISION[arm] for g in optimizer.param_groups)
    moments = [v for p in model.parameters() for key, v in optimizer.state[p].items() if key.startswith("exp_avg")]
    assert moments and all(v.dtype is torch.bfloat16 for v in moments)
    assert all(p.dtype is torch.float32 for p in model.parameters())


@pytest.mark.parametrize("arm", ["kadam1-bf16", "kadam2-bf16"])
def test_bf16_arm_is_its_float32_arm_but_for_the_storage(arm):
    base = arm.removesuffix("-bf16")
    model, optimizer = _stepped(arm)
    ref_model, ref_optimizer = _stepped(base)
    assert ref_optimizer.param_groups[0]["state_dtype"] is None
    for p, q in zip(model.parameters(), ref_model.parameters()):
        state, ref = optimizer.state[p], ref_optimizer.state[q]
        assert state.keys() == ref.keys()
        for key in state:
            if key.startswith("exp_avg"):
                assert ref[key].dtype is torch.float32
                torch.testing.assert_close(state[key], ref[key].to(torch.bfloat16), rtol=0, atol=0)
        # the first update (±lr per element, computed in float32 from the stored, rounded moments) differs by at
        # most the moments' bfloat16 rounding: a relative 2^-8 on each of m and √v
        torch.testing.assert_close(p, q, rtol=0, atol=1e-2 * 2**-7)
