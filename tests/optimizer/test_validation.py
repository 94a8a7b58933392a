"""Bad input gets a clear ValueError naming the argument, the level and the accepted range (issue 2)."""

import math
import re
import warnings

import pytest
import torch

from kadam import KAdam


def _params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=-1e-3), "lr must be a number >= 0"),
        (dict(weight_decay=-0.1), "weight_decay must be a number >= 0"),
        (dict(eps=-1e-8), "eps of level 1 must be a number >= 0"),
        (dict(eps=[1e-8, -1.0]), "eps of level 2 must be a number >= 0"),
        (dict(eps=[1e-8]), "eps must be one number or a sequence of k = 2"),
        (dict(betas=(1.0, 0.999)), re.escape("beta of level 1 must be a number in [0, 1)")),
        (dict(betas=(0.9, -0.1)), re.escape("gamma of level 1 must be a number in [0, 1)")),
        (dict(meta_betas=(0.0, 1.0)), re.escape("gamma of level 2 must be a number in [0, 1)")),
        (dict(k=3, meta_betas=[(0.0, 0.999), (1.5, 0.9)]), re.escape("beta of level 3 must be a number in [0, 1)")),
        (dict(k=3, meta_betas=[(0.0, 0.999)] * 3), "sequence of k - 1 = 2"),
        (dict(k=0), "k must be an integer >= 1"),
        (dict(k=2.0), "k must be an integer >= 1"),
        (dict(betas=[(0.9, 0.999)] * 3), "sequence of k = 2 per-level pairs"),
        (
            dict(betas=("0.9", 0.99)),
            re.escape(
                "betas must be a pair of numbers (beta, gamma) in [0, 1), or a sequence of k = 2 per-level pairs; "
                "got ('0.9', 0.99): '0.9' is not a number"
            ),
        ),
        (dict(betas=(0.9, 0.99, 0.9)), "a pair holds 2 numbers, not 3"),
        (dict(betas=(True, 0.99)), "True is not a number"),
        (dict(betas=0.9), re.escape("betas must be a pair of numbers (beta, gamma) in [0, 1)")),
        (
            dict(meta_betas=("0", 0.99)),
            re.escape("meta_betas must be a pair of numbers (beta, gamma) in [0, 1)") + ".*'0' is not a number",
        ),
        (dict(lr=math.inf), re.escape("lr must be a number >= 0 (and finite), got inf")),
        (dict(lr=math.nan), re.escape("lr must be a number >= 0 (and finite), got nan")),
        (dict(lr=torch.tensor(math.inf)), re.escape("lr must be a number >= 0 (and finite), got inf")),
        (dict(weight_decay=math.inf), re.escape("weight_decay must be a number >= 0 (and finite), got inf")),
        (dict(eps=math.inf), re.escape("eps of level 1 must be a number >= 0 (and finite), got inf")),
        (dict(eps=[1e-8, math.nan]), re.escape("eps of level 2 must be a number >= 0 (and finite), got nan")),
        (dict(betas=(math.nan, 0.999)), re.escape("beta of level 1 must be a number in [0, 1), got nan")),
        (dict(meta_betas=(0.0, math.inf)), re.escape("gamma of level 2 must be a number in [0, 1), got inf")),
        (dict(norm="layer"), "norm of level 1 must be one of"),
        (dict(meta_norm="batch"), "norm of level 2 must be one of"),
        (dict(norm=["elementwise", "tensor", "tensor"]), "sequence of k = 2"),
        (dict(betas=[(0.9, 0.999), (0.0, 0.99)], meta_betas=(0.0, 0.9)), "meta_betas cannot be given"),
        (dict(norm=["elementwise", "tensor"], meta_norm="tensor"), "meta_norm cannot be given"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KAdam(_params(), **kwargs)


def test_bad_param_group_raises_and_leaves_groups_unchanged():
    optimizer = KAdam(_params())
    with pytest.raises(ValueError, match=re.escape("gamma of level 2 must be a number in [0, 1)")):
        optimizer.add_param_group({"params": _params(), "meta_betas": (0.0, 2.0)})
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
        optimizer.add_param_group({"params": _params(), "lr": -1.0})
    assert len(optimizer.param_groups) == 1


def test_per_level_group_with_other_k_is_an_error():
    optimizer = KAdam(_params(), k=2, betas=[(0.9, 0.999), (0.0, 0.99)])
    with pytest.raises(ValueError, match="sequence of k - 1 = 2"):
        optimizer.add_param_group({"params": _params(), "k": 3})


def test_unstable_level_warns_with_rate_and_efold_time():
    rate = math.log(0.9) - 0.5 * math.log(0.5)
    with pytest.warns(UserWarning, match=r"level 1: \(β, γ\) = \(0.9, 0.5\)") as record:
        optimizer = KAdam(_params(), k=1, betas=(0.9, 0.5))
    assert f"{rate:.4g}" in str(record[0].message)
    assert f"every {1 / rate:.3g} steps" in str(record[0].message)
    with pytest.warns(UserWarning, match="level 2"):
        optimizer.add_param_group({"params": _params(), "k": 2, "betas": (0.9, 0.999), "meta_betas": (0.99, 0.9)})


def test_boundary_warns_and_stable_levels_do_not():
    with pytest.warns(UserWarning, match="boundary"):
        KAdam(_params(), k=1, betas=(0.9, 0.81))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KAdam(_params(), k=3, betas=(0.9, 0.999), meta_betas=[(0.0, 0.0), (0.95, 0.95)])


def test_sparse_gradients_are_refused():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        KAdam(embedding.parameters()).step()


@pytest.mark.parametrize("k,fused", [(1, None), (2, False), (2, True)])
def test_nonfinite_gradient_reaches_as_the_readme_says(k, fused):
    """A NaN in one gradient element stays in that element at k = 1 and takes the whole tensor at k >= 2 (the
    tensor-mode second moment), for good."""
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = KAdam([param], k=k, fused=fused)
    for grad in (torch.tensor([1.0, math.nan, 1.0, 1.0]), torch.ones(4), torch.ones(4)):
        param.grad = grad
        optimizer.step()
    assert param.isnan().tolist() == ([False, True, False, False] if k == 1 else [True] * 4)
    if k > 1:
        assert optimizer.state[param]["exp_avg_sq_2"].isnan()
