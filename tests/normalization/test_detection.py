"""find_scale_invariant on models whose invariant tensors are known analytically; exact state restoration."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kadam.normalization import find_scale_invariant


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def randomize_affine(model):
    """Non-zero normalization gains/biases: a zero tensor cannot be probed (scaling leaves it unchanged)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)):
                for p in module.parameters():
                    p.copy_(0.5 + torch.rand(p.shape, generator=generator))
    return model


def linear_batchnorm():
    return nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 5))


def linear_layernorm():
    return nn.Sequential(nn.Linear(12, 16, bias=False), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 5))


def linear_layernorm_with_bias():
    return nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 5))


def linear_rmsnorm():
    return nn.Sequential(nn.Linear(12, 16, bias=False), nn.RMSNorm(16), nn.Linear(16, 5))


def weight_normalized():
    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(12, 16)), nn.Tanh(), nn.Linear(16, 5))


class ConvGroupNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(2, 8)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = x.view(-1, 3, 4, 4)
        return self.head(F.relu(self.norm(self.conv(x))).flatten(1))


# name -> (factory, invariant tensors, expected explanation fragments)
CASES = {
    "linear-batchnorm": (
        linear_batchnorm,
        {"0.weight", "0.bias"},
        {"0.weight": "BatchNorm1d '1'", "0.bias": "cancelled by BatchNorm1d"},
    ),
    "linear-layernorm": (linear_layernorm, {"0.weight"}, {"0.weight": "LayerNorm '1'"}),
    "linear-layernorm-bias": (linear_layernorm_with_bias, set(), {}),
    "linear-rmsnorm": (linear_rmsnorm, {"0.weight"}, {"0.weight": "RMSNorm '1'"}),
    "weight-norm": (
        weight_normalized,
        {"0.parametrizations.weight.original1"},
        {"0.parametrizations.weight.original1": "weight-normalized"},
    ),
    "conv-groupnorm": (ConvGroupNorm, {"conv.weight"}, {"conv.weight": "GroupNorm 'norm'"}),
}


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(32, 48, generator=generator)[:, :12].contiguous(), torch.randint(
        0, 5, (32,), generator=generator
    )


def conv_batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(32, 48, generator=generator), torch.randint(0, 5, (32,), generator=generator)


@pytest.mark.parametrize("case", sorted(CASES))
def test_verdict_is_right_on_every_tensor(case):
    factory, invariant, explanations = CASES[case]
    torch.manual_seed(0)
    model = randomize_affine(factory())
    report = find_scale_invariant(model, cross_entropy, conv_batch() if case == "conv-groupnorm" else batch())
    assert {row.name for row in report.rows} == {name for name, _ in model.named_parameters()}
    assert set(report.invariant) == invariant
    for row in report.rows:
        if row.name in explanations:
            assert explanations[row.name] in (row.explanation or "")
        if not row.invariant:  # the counter-examples fail by a clear margin, not by a hair
            assert row.invariance_error > 3 * report.loss_rtol or abs(row.cosine) > 3 * report.cosine_tol


def test_batchnorm_in_eval_mode_is_probed_in_train_mode_unless_asked():
    torch.manual_seed(0)
    model = randomize_affine(linear_batchnorm())
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    assert set(find_scale_invariant(model, cross_entropy, batch()).invariant) == {"0.weight", "0.bias"}
    # with running statistics (eval), scaling the weight changes the output: nothing is invariant
    assert find_scale_invariant(model, cross_entropy, batch(), mode="current").invariant == []


def test_zero_tensors_are_not_reported_invariant():
    torch.manual_seed(0)
    model = linear_layernorm()  # LayerNorm bias starts at zero
    rows = {row.name: row for row in find_scale_invariant(model, cross_entropy, batch()).rows}
    assert not rows["1.bias"].invariant and "all zeros" in rows["1.bias"].explanation


def state(model):
    tensors = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
    grads = {name: (None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()}
    objects = {name: id(t) for name, t in model.state_dict(keep_vars=True).items()}
    modes = [m.training for m in model.modules()]
    return tensors, grads, objects, modes


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_state_is_restored_exactly(mode):
    torch.manual_seed(0)
    model = nn.Sequential(linear_batchnorm(), nn.BatchNorm1d(5))
    model.train()
    model(batch()[0])  # running statistics and num_batches_tracked away from their initial values
    cross_entropy(model, batch()).backward()  # .grad set on every parameter
    model[0][4].weight.grad = None  # ... but one
    model.train(mode == "train")
    model[0][1].eval()  # mixed modes must come back as they were
    before = state(model)
    rng_before = torch.get_rng_state()
    find_scale_invariant(model, cross_entropy, batch(1))
    after = state(model)
    assert before[2] == after[2] and before[3] == after[3]
    for name in before[0]:
        assert torch.equal(before[0][name], after[0][name]), name
    for name in before[1]:
        assert (before[1][name] is None) == (after[1][name] is None)
        if before[1][name] is not None:
            assert torch.equal(before[1][name], after[1][name]), name
    assert torch.equal(rng_before, torch.get_rng_state())


def test_dropout_masks_agree_between_probes():
    torch.manual_seed(0)
    model = randomize_affine(linear_batchnorm())
    report = find_scale_invariant(model, cross_entropy, batch())
    weight = next(row for row in report.rows if row.name == "0.weight")
    assert weight.invariance_error < 1e-5


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"scales": (1.0,)}, "scales"),
        ({"scales": ()}, "scales"),
        ({"loss_rtol": -1.0}, "loss_rtol"),
        ({"cosine_tol": 2.0}, "cosine_tol"),
        ({"vanishing_gradient": -1e-6}, "vanishing_gradient"),
        ({"mode": "inference"}, "mode"),
    ],
)
def test_bad_input_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        find_scale_invariant(linear_layernorm(), cross_entropy, batch(), **kwargs)


def test_loss_fn_must_return_a_scalar():
    with pytest.raises(ValueError, match="loss_fn"):
        find_scale_invariant(linear_layernorm(), lambda model, b: model(b[0]), batch())


def test_a_plain_linear_with_a_small_bias_is_not_invariant():
    """Both tests must hold: a tiny |W|·|∇L| does not excuse a large cosine (the bias is not invariant)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 5))
    with torch.no_grad():
        model[0].bias.copy_(1e-3 * torch.randn(5, generator=torch.Generator().manual_seed(1)))
    rows = {row.name: row for row in find_scale_invariant(model, cross_entropy, batch()).rows}
    bias = rows["0.bias"]
    assert bias.invariance_error <= 1e-3  # the loss test alone would pass: the bias is tiny
    assert abs(bias.cosine) > 3e-3  # ... but the gradient is far from orthogonal to it
    assert bias.status == "not invariant" and not bias.invariant
    assert rows["0.weight"].status == "not invariant"


def test_a_tensor_without_gradient_is_unmeasurable_not_invariant():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 5))
    model.unused = nn.Parameter(torch.ones(3))  # L does not depend on it: zero gradient, undefined cosine
    report = find_scale_invariant(model, cross_entropy, batch())
    row = next(row for row in report.rows if row.name == "unused")
    assert row.status == "unmeasurable" and not row.invariant and "does not depend" in row.reason
    assert report.unmeasurable == ["unused"] and "unused" not in report.invariant
    zero = {r.name: r for r in find_scale_invariant(linear_layernorm(), cross_entropy, batch()).rows}["1.bias"]
    assert zero.status == "unmeasurable"


def test_statuses_partition_the_rows_and_survive_json():
    import json
    import math

    from kadam.normalization.detection import STATUSES, ScaleInvarianceReport

    torch.manual_seed(0)
    model = linear_layernorm()
    report = find_scale_invariant(model, cross_entropy, batch())
    assert {row.status for row in report.rows} <= set(STATUSES)
    assert all(row.invariant == (row.status == "invariant") for row in report.rows)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    again = ScaleInvarianceReport.from_dict(data)
    assert [r.status for r in again.rows] == [r.status for r in report.rows]
    assert all(math.isnan(a.cosine) == math.isnan(b.cosine) for a, b in zip(again.rows, report.rows))


def test_a_bias_cancelled_by_batchnorm_passes_by_its_vanishing_gradient_only():
    torch.manual_seed(0)
    model = randomize_affine(linear_batchnorm())
    bias = {r.name: r for r in find_scale_invariant(model, cross_entropy, batch()).rows}["0.bias"]
    assert bias.invariant and "rounding level" in bias.reason
    strict = {r.name: r for r in find_scale_invariant(model, cross_entropy, batch(), vanishing_gradient=0.0).rows}
    assert strict["0.bias"].status == "not invariant"  # its cosine alone is rounding noise, far from 0
