"""Deployment layers and to_fixed_norms on plain torch models: exact for every input size."""
import copy
import itertools

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sn_mm.deploy.convert import apply_plan, conv_norm_pairs, to_fixed_norms
from sn_mm.ops import SparseSwitchableNorm, SwitchableNorm
from sn_mm.deploy.fixed_norms import SNInstanceNorm, BesselLayerNorm, FixedMixtureNorm

IN, LN, BN = 0, 1, 2
SHAPES = [(2, 6, 5, 7), (3, 6, 1, 1), (1, 6, 2, 1), (4, 6, 9, 3)]


def trained(layer, seed=0):
    """Random affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.num_features, generator=gen))
        layer.bias.copy_(torch.randn(layer.num_features, generator=gen))
        if layer.using_bn:
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=gen))
            layer.running_var.copy_(torch.rand(layer.num_features, generator=gen) + 0.5)
    return layer


def choose(layer, mean_branch, var_branch):
    """Freeze an SSN layer on the given branches (exactly one-hot importances)."""
    with torch.no_grad():
        for logits, k in ((layer.mean_weight, mean_branch), (layer.var_weight, var_branch)):
            logits.zero_()
            logits[k] = 1.0
    layer.freeze_one_hot(torch.tensor(True))
    return layer


def inputs(shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * 2 + 0.5


@pytest.mark.parametrize('mode', ['unbiased', 'biased'])
@pytest.mark.parametrize('mean_branch,var_branch', list(itertools.product([IN, LN, BN], repeat=2)))
def test_every_choice_converts_exactly_for_every_input_size(mode, mean_branch, var_branch):
    layer = choose(trained(SparseSwitchableNorm(6, in_variance=mode)), mean_branch, var_branch)
    model = nn.Sequential(layer).eval()
    conversion = to_fixed_norms(model)
    new = conversion.model[0]
    expected = {
        (IN, IN, 'unbiased'): SNInstanceNorm, (LN, LN, 'unbiased'): BesselLayerNorm,
        (IN, IN, 'biased'): SNInstanceNorm, (LN, LN, 'biased'): nn.GroupNorm,
        (BN, BN, 'unbiased'): nn.BatchNorm2d, (BN, BN, 'biased'): nn.BatchNorm2d,
    }.get((mean_branch, var_branch, mode), FixedMixtureNorm)
    assert type(new) is expected
    if isinstance(new, nn.GroupNorm):
        assert new.num_groups == (6 if mean_branch == IN else 1)
    assert not any(isinstance(m, SwitchableNorm) for m in conversion.model.modules())
    exact = copy.deepcopy(layer).double()
    for shape in SHAPES:
        x = inputs(shape)
        # against SN in float64 (on 1x1 maps SN's own float32 IN term has rounding of
        # ~5e-5: its scale is gamma / sqrt(eps))
        assert_close(new(x).double(), exact(x.double()), atol=1e-5, rtol=1e-5)
        if shape[2] * shape[3] > 1:
            assert_close(new(x), layer(x), atol=1e-5, rtol=1e-5)
    if mode == 'biased' and (mean_branch, var_branch) == (IN, IN):
        x = inputs(SHAPES[0])
        torch_gn = nn.GroupNorm(6, 6, eps=layer.eps)
        torch_gn.load_state_dict(new.state_dict())
        assert_close(new(x), torch_gn(x), atol=1e-6, rtol=1e-6)


def test_non_one_hot_layers_become_exact_fixed_mixtures_and_tol_rounds_sn():
    sn = trained(SwitchableNorm(6)).eval()
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([6.0, 0.0, 0.0]))  # softmax IN share 0.995
        sn.var_weight.copy_(torch.tensor([0.5, 0.2, -0.3]))
    x = inputs((2, 6, 4, 4))
    exact = to_fixed_norms(nn.Sequential(sn))
    layer = exact.model[0]
    assert type(layer) is FixedMixtureNorm and not list(layer.parameters())[2:]
    assert_close(layer.mean_weights, torch.softmax(sn.mean_weight.detach(), 0))
    assert_close(layer(x), sn(x), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        sn.var_weight.copy_(torch.tensor([6.0, 0.0, 0.0]))
    rounded = to_fixed_norms(nn.Sequential(sn), tol=0.01, forward=lambda m: m(x))
    assert type(rounded.model[0]) is SNInstanceNorm
    deviation = rounded.layers[0].max_deviation
    with torch.no_grad():
        assert 1e-4 < deviation == pytest.approx(float((rounded.model(x) - sn(x)).abs().max()))
    assert type(to_fixed_norms(nn.Sequential(sn), tol=0.001).model[0]) is FixedMixtureNorm


class Block(nn.Module):
    """A ResNet-style block: conv{i} paired with norm{i}_name, plus a Sequential shortcut."""

    def __init__(self, c, branches):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm1_name = 'sn1'
        self.sn1 = choose(trained(SparseSwitchableNorm(c), 1), *branches[0])
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=True)
        self.norm2_name = 'sn2'
        self.sn2 = choose(trained(SparseSwitchableNorm(c), 2), *branches[1])
        self.downsample = nn.Sequential(nn.Conv2d(c, c, 1, bias=False),
                                        choose(trained(SparseSwitchableNorm(c), 3),
                                               *branches[2]))

    @property
    def norm1(self):
        return getattr(self, self.norm1_name)

    @property
    def norm2(self):
        return getattr(self, self.norm2_name)

    def forward(self, x):
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.downsample(x))


def test_bn_choices_fold_into_their_convs_and_the_plan_rebuilds_the_model():
    model = nn.Sequential(Block(4, [(BN, BN), (IN, LN), (BN, BN)]),
                          Block(4, [(LN, LN), (BN, BN), (IN, IN)])).eval()
    for block in model:  # trained conv weights, random SN parameters above
        for conv in (block.conv1, block.conv2, block.downsample[0]):
            nn.init.normal_(conv.weight, std=0.3)
    assert ('0.conv1', '0.sn1') in conv_norm_pairs(model)
    assert ('0.downsample.0', '0.downsample.1') in conv_norm_pairs(model)
    x = inputs((2, 4, 6, 5))
    conversion = to_fixed_norms(model, forward=lambda m: m(x))
    report = {r.name: r for r in conversion.layers}
    assert report['0.sn1'].folded_into == '0.conv1'
    assert report['0.downsample.1'].folded_into == '0.downsample.0'
    assert report['1.sn2'].folded_into == '1.conv2'
    assert report['0.sn2'].folded_into is None and report['0.sn2'].became.startswith('Fixed')
    new = conversion.model
    assert isinstance(new[0].sn1, nn.Identity) and new[0].conv1.bias is not None
    assert not any(isinstance(m, (SwitchableNorm, nn.BatchNorm2d)) for m in new.modules())
    for r in conversion.layers:
        assert r.calls == 1 and r.max_deviation < 1e-5, r
    exact = copy.deepcopy(model).double()
    for shape in [(2, 4, 6, 5), (1, 4, 1, 1), (3, 4, 11, 2)]:
        x = inputs(shape, seed=5)
        assert_close(new(x).double(), exact(x.double()), atol=1e-5, rtol=1e-5)
    assert 'BatchNorm2d folded into 0.conv1' in conversion.format()

    # a fresh, untrained copy given the plan loads the converted state dict strictly
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if isinstance(m, SwitchableNorm):
            m.reset_parameters()
    apply_plan(fresh, **conversion.plan)
    fresh.load_state_dict(new.state_dict(), strict=True)
    assert_close(fresh.eval()(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_norm_fed_by_something_else_is_not_folded():
    class Odd(nn.Module):  # has the ResNet attribute names, but conv1 -> relu -> sn1
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 3, 1)
            self.norm1_name = 'sn1'
            self.sn1 = choose(trained(SparseSwitchableNorm(3)), BN, BN)

        def forward(self, x):
            return self.sn1(torch.relu(self.conv1(x)))

    model = Odd().eval()
    x = inputs((2, 3, 4, 4))
    conversion = to_fixed_norms(model, forward=lambda m: m(x))
    assert conversion.layers[0].folded_into is None
    assert type(conversion.model.sn1) is nn.BatchNorm2d
    assert_close(conversion.model(x), model(x), atol=1e-5, rtol=1e-5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match='no SwitchableNorm'):
        to_fixed_norms(nn.Sequential(nn.Conv2d(1, 1, 1)))
    with pytest.raises(ValueError, match=r'tol must be a number in \[0, 1\), got 1.5'):
        to_fixed_norms(nn.Sequential(SwitchableNorm(2)), tol=1.5)
    with pytest.raises(ValueError, match="not an SN/SSN layer"):
        apply_plan(nn.Sequential(nn.Conv2d(1, 1, 1)), [dict(name='0', spec=dict(type='Identity'))])
    with pytest.raises(ValueError, match='mean_weights must be 2 or 3 numbers'):
        FixedMixtureNorm(2, [0.5, 0.6, 0.0], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r'expects input \(N, 2, \*spatial\)'):
        BesselLayerNorm(2)(torch.zeros(2, 3, 4))


@pytest.mark.parametrize('mean_branch,var_branch,expected', [
    (IN, IN, SNInstanceNorm), (LN, LN, BesselLayerNorm), (IN, LN, FixedMixtureNorm),
    (LN, IN, FixedMixtureNorm)])
def test_two_logit_layers(mean_branch, var_branch, expected):
    """using_bn=False (the official (8, 1) layout): [IN, LN] only, no running statistics."""
    layer = choose(trained(SparseSwitchableNorm(6, using_bn=False)), mean_branch, var_branch)
    new = to_fixed_norms(nn.Sequential(layer)).model[0]
    assert type(new) is expected and not hasattr(new, 'running_mean')
    exact = copy.deepcopy(layer).double()
    for shape in SHAPES:
        x = inputs(shape)
        assert_close(new(x).double(), exact(x.double()), atol=1e-5, rtol=1e-5)
