"""SSN / SyncSSN layers: sparsestmax importances through SN's kernels, freezing, loading."""
import itertools

import pytest
import torch
from torch.testing import assert_close

from sn_mm.ops import (SparseSwitchableNorm, SwitchableNorm, SyncSparseSwitchableNorm,
                       SyncSwitchableNorm, convert_sync_sn, revert_sync_sn, sparsestmax)
from tests.reference import reference_sn


def randomized(layer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
        if layer.using_bn:
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=gen))
            layer.running_var.copy_(torch.rand(layer.num_features, generator=gen) + 0.5)
    return layer


def test_state_layout_is_sns_plus_radius_and_flags():
    sn, ssn = SwitchableNorm(4), SparseSwitchableNorm(4)
    assert set(ssn.state_dict()) == set(sn.state_dict()) | {'radius', 'mean_fixed', 'var_fixed'}
    assert ssn.radius.shape == () and ssn.radius.dtype == torch.float32 and ssn.radius == 0
    assert ssn.mean_fixed.dtype == torch.bool and not ssn.mean_fixed and not ssn.var_fixed
    assert ssn._abbr_ == 'sn' and ssn.config() == sn.config()
    assert isinstance(SyncSparseSwitchableNorm(4), SyncSwitchableNorm)
    assert SparseSwitchableNorm(4).double().radius.dtype == torch.float64
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['radus'\]"):
        SparseSwitchableNorm(4, radus=0.5)


@pytest.mark.parametrize('using_bn', [True, False])
@pytest.mark.parametrize('radius', [0.0, 0.3, 0.6, 0.9])
def test_importance_is_sparsestmax_in_in_ln_bn_order(using_bn, radius):
    layer = randomized(SparseSwitchableNorm(3, using_bn=using_bn))
    layer.set_radius(radius)
    mean_w, var_w = layer.importance()
    assert_close(mean_w, sparsestmax(layer.mean_weight.detach(), radius))
    assert_close(var_w, sparsestmax(layer.var_weight.detach(), radius))
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.0, 5.0, 1.0][:len(mean_w)]))
    assert layer.importance()[0].argmax() == 1  # LN is index 1


@pytest.mark.parametrize('training,using_bn,in_variance',
                         list(itertools.product([True, False], [True, False],
                                                ['unbiased', 'biased'])))
def test_forward_is_sn_with_sparsestmax_weights(training, using_bn, in_variance):
    layer = randomized(SparseSwitchableNorm(4, using_bn=using_bn, in_variance=in_variance)
                       .double()).train(training)
    layer.set_radius(0.4)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    mean_w, var_w = layer.importance()
    expected, *_ = reference_sn(
        x, layer.weight, layer.bias, mean_w.log(), var_w.log(), eps=layer.eps,
        training=training, running_mean=layer.running_mean, running_var=layer.running_var,
        unbiased=in_variance == 'unbiased', using_bn=using_bn)
    assert_close(layer(x), expected)


def test_gradcheck_float64_through_the_layer():
    layer = randomized(SparseSwitchableNorm(3).double(), seed=2)
    layer.set_radius(0.35)
    x = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert (layer.importance()[0] > 0).sum() > 1  # a non-trivial piece
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()))


def test_freezing_fixes_one_hot_layers_only():
    layer = randomized(SparseSwitchableNorm(4))
    layer.set_radius(0.3)
    before = layer.mean_weight.detach().clone()
    assert not layer.one_hot() and not layer.freeze_one_hot()
    assert_close(layer.mean_weight.detach(), before)  # untouched while not one-hot

    layer.set_radius(0.9)  # >= sqrt(2/3): one-hot
    choice = [w.argmax().item() for w in layer.importance()]
    assert layer.one_hot() and layer.freeze_one_hot()
    assert layer.mean_fixed and layer.var_fixed and layer.frozen
    for logits, k in zip((layer.mean_weight, layer.var_weight), choice):
        assert logits.tolist() == [1.0 if i == k else 0.0 for i in range(3)]
    # frozen: one-hot whatever the radius, zero (not missing) gradient to the logits
    layer.set_radius(0.0)
    mean_w, var_w = layer.importance()
    assert mean_w.argmax() == choice[0] and mean_w.max() == 1 and var_w.max() == 1
    layer(torch.randn(2, 4, 3, 3)).square().sum().backward()
    assert layer.mean_weight.grad is not None and (layer.mean_weight.grad == 0).all()
    assert (layer.var_weight.grad == 0).all() and layer.weight.grad.abs().sum() > 0
    # an optimizer's drift is undone by the next freeze_one_hot
    with torch.no_grad():
        layer.mean_weight.add_(torch.tensor([0.05, -0.02, 0.01]))
    assert layer.importance()[0].max() == 1
    layer.freeze_one_hot()
    assert layer.mean_weight.max() == 1 and layer.mean_weight.sum() == 1
    layer.reset_parameters()
    assert not layer.frozen


def test_freeze_decision_can_be_given():
    layer = randomized(SparseSwitchableNorm(4))
    layer.set_radius(0.9)
    assert not layer.freeze_one_hot(torch.tensor(False))
    assert layer.freeze_one_hot(torch.tensor(True)) and layer.frozen


def test_sn_checkpoints_load_into_ssn_and_ssn_state_round_trips():
    sn = randomized(SwitchableNorm(4))
    ssn = SparseSwitchableNorm(4)
    assert ssn.load_state_dict(sn.state_dict()) is not None  # strict: nothing missing
    assert_close(ssn.mean_weight, sn.mean_weight)
    assert ssn.radius == 0 and not ssn.frozen
    ssn.set_radius(0.9)
    ssn.freeze_one_hot()
    other = SparseSwitchableNorm(4)
    other.load_state_dict(ssn.state_dict())
    assert other.radius == pytest.approx(0.9) and other.frozen
    # official SN layout (no version metadata, (1, C, 1, 1) affine) still loads
    official = {k: (v.reshape(1, 4, 1, 1) if k in ('weight', 'bias') else v)
                for k, v in sn.state_dict().items()}
    SparseSwitchableNorm(4).load_state_dict(official)


def test_bad_radius_is_named():
    layer = SparseSwitchableNorm(2)
    for bad in (-0.5, float('nan'), float('inf'), '1', True):
        with pytest.raises(ValueError, match='radius must be a finite number >= 0'):
            layer.set_radius(bad)


def test_sync_conversion_keeps_the_sparse_class_and_state():
    model = torch.nn.Sequential(SparseSwitchableNorm(4), SwitchableNorm(4))
    model[0].set_radius(0.5)
    synced = convert_sync_sn(model)
    assert type(synced[0]) is SyncSparseSwitchableNorm and type(synced[1]) is SyncSwitchableNorm
    assert synced[0].radius == 0.5
    back = revert_sync_sn(synced)
    assert type(back[0]) is SparseSwitchableNorm and type(back[1]) is SwitchableNorm
    x = torch.randn(2, 4, 3, 3)
    layer = randomized(SparseSwitchableNorm(4)).eval()
    layer.set_radius(0.2)
    sync = convert_sync_sn(torch.nn.Sequential(layer))[0].eval()
    assert_close(sync(x), layer(x))  # outside a distributed run: SSN exactly


@pytest.mark.parametrize('type_name,cls', [('SSN', SparseSwitchableNorm),
                                           ('SyncSSN', SyncSparseSwitchableNorm)])
def test_registered_for_norm_cfg(type_name, cls):
    from mmcv.cnn import build_norm_layer

    import sn_mm  # noqa: F401
    name, layer = build_norm_layer(dict(type=type_name, using_bn=False), 16, postfix=1)
    assert name == 'sn1' and type(layer) is cls and not layer.using_bn


def test_analysis_reads_ssn_checkpoints_with_sparsestmax():
    from sn_mm.analysis import ratios_from_model, ratios_from_state_dict
    model = torch.nn.Sequential(randomized(SparseSwitchableNorm(4)),
                                randomized(SparseSwitchableNorm(4, using_bn=False), seed=1),
                                randomized(SwitchableNorm(4), seed=2))
    model[0].set_radius(0.3)
    model[1].set_radius(0.9)
    model[1].freeze_one_hot()
    saved = {r.name: r for r in ratios_from_state_dict(model.state_dict())}
    live = {r.name: r for r in ratios_from_model(model)}
    for name, layer in (('0', model[0]), ('1', model[1])):
        mean, var = layer.importance()
        expected_mean = mean.tolist() + [0.0] * (3 - mean.numel())
        assert saved[name].mean == pytest.approx(expected_mean, abs=1e-6)
        assert live[name].var == pytest.approx(saved[name].var, abs=1e-6)
    assert saved['1'].mean[2] == 0.0 and max(saved['1'].mean) == 1.0  # frozen: one-hot
    soft0 = torch.softmax(model[0].mean_weight.detach().double(), 0).tolist()
    assert saved['0'].mean != pytest.approx(soft0, abs=1e-3)  # not read as softmax
    softmax = torch.softmax(model[2].mean_weight.detach().double(), 0).tolist()
    assert saved['2'].mean == pytest.approx(softmax)  # plain SN: softmax as before
