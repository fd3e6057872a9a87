"""SN math: gradchecks, one-hot equivalences with torch norms, reference comparisons."""
import itertools

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sn_mm.ops import SwitchableNorm
from tests.devices import DEVICES
from tests.reference import reference_sn

MODES = ('unbiased', 'biased')


def randomized(layer: SwitchableNorm, seed: int = 0) -> SwitchableNorm:
    """Give a layer random parameters and running statistics (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        if layer.using_bn:
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=gen))
            layer.running_var.copy_(torch.rand(layer.num_features, generator=gen) + 0.5)
    return layer


def one_hot_logits(layer: SwitchableNorm, branch: int) -> SwitchableNorm:
    """Set logits so the softmax is one-hot in float64 (exp(-1000) == 0)."""
    with torch.no_grad():
        for logits in (layer.mean_weight, layer.var_weight):
            logits.fill_(-1000.0)
            logits[branch] = 0.0
    return layer


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('training,using_bn,in_variance',
                         list(itertools.product([True, False], [True, False], MODES)))
def test_gradcheck_float64(training, using_bn, in_variance, device):
    layer = randomized(SwitchableNorm(3, using_bn=using_bn, in_variance=in_variance).double())
    layer.to(device).train(training)
    x = torch.randn(4, 3, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    params = list(layer.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))


@pytest.mark.parametrize('shape', [(4, 3, 1, 1), (2, 3, 5), (2, 3, 2, 2, 3)])
def test_gradcheck_float64_shapes(shape):
    """1x1 maps (the ASPP pooling case), 1D and 3D inputs."""
    layer = randomized(SwitchableNorm(3).double())
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()))


@pytest.mark.parametrize('training,using_bn,in_variance,shape',
                         list(itertools.product(
                             [True, False], [True, False], MODES,
                             [(5, 4, 6, 7), (3, 4, 1, 1), (2, 4, 9), (2, 4, 3, 2, 4)])))
@pytest.mark.parametrize('device', DEVICES)
def test_matches_reference_equations(training, using_bn, in_variance, shape, device):
    """Forward, every gradient and the running statistics against tests/reference.py."""
    torch.manual_seed(1)
    layer = randomized(SwitchableNorm(4, using_bn=using_bn, in_variance=in_variance,
                                      momentum=0.3).double(), seed=3)
    layer.to(device).train(training)
    old_mean = layer.running_mean.clone() if using_bn else None
    old_var = layer.running_var.clone() if using_bn else None
    x = (torch.randn(*shape, dtype=torch.float64) * 3 + 2).to(device).requires_grad_()
    grad_out = torch.randn(*shape, dtype=torch.float64).to(device)

    y = layer(x)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], grad_out)

    ref_params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x_ref = x.detach().clone().requires_grad_()
    y_ref, mean_bn, var_bn = reference_sn(
        x_ref, *ref_params, training=training, running_mean=old_mean, running_var=old_var,
        unbiased=in_variance == 'unbiased', using_bn=using_bn)
    ref_grads = torch.autograd.grad(y_ref, [x_ref, *ref_params], grad_out)

    tol = dict(rtol=1e-10, atol=1e-10)
    assert_close(y, y_ref, **tol)
    for name, got, want in zip(['x', 'weight', 'bias', 'mean_weight', 'var_weight'],
                               grads, ref_grads):
        assert_close(got, want, **tol, msg=lambda m: f'grad of {name}: {m}')
    if using_bn and training:
        values = shape[0] * torch.Size(shape[2:]).numel()
        bessel = values / (values - 1) if in_variance == 'biased' else 1.0
        assert_close(layer.running_mean, 0.7 * old_mean + 0.3 * mean_bn, **tol)
        assert_close(layer.running_var, 0.7 * old_var + 0.3 * var_bn * bessel, **tol)
    elif using_bn:
        assert torch.equal(layer.running_mean, old_mean)
        assert torch.equal(layer.running_var, old_var)


def _affine(y, layer):
    shape = (1, -1) + (1,) * (y.dim() - 2)
    return y * layer.weight.reshape(shape) + layer.bias.reshape(shape)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('branch', ['IN', 'LN', 'BN'])
def test_one_hot_equals_torch_norm(branch, training, device):
    """One-hot importance -> torch InstanceNorm2d / LayerNorm over (C,H,W) / BatchNorm2d."""
    torch.manual_seed(0)
    c = 5
    index = ('IN', 'LN', 'BN').index(branch)
    layer = one_hot_logits(randomized(SwitchableNorm(c, in_variance='biased', momentum=0.2)
                                      .double()), index)
    layer.to(device).train(training)
    x = (torch.randn(4, c, 6, 5, dtype=torch.float64) * 2 - 1).to(device).requires_grad_()
    grad_out = torch.randn_like(x)

    if branch == 'BN':
        torch_norm = nn.BatchNorm2d(c, momentum=0.2).double().to(device)
        with torch.no_grad():
            torch_norm.weight.copy_(layer.weight)
            torch_norm.bias.copy_(layer.bias)
            torch_norm.running_mean.copy_(layer.running_mean)
            torch_norm.running_var.copy_(layer.running_var)
        torch_norm.train(training)
        affine_params = [torch_norm.weight, torch_norm.bias]
        reference = torch_norm
    else:
        weight = layer.weight.detach().clone().requires_grad_()
        bias = layer.bias.detach().clone().requires_grad_()
        affine_params = [weight, bias]
        if branch == 'IN':
            def reference(t):
                return _affine_params(nn.functional.instance_norm(t, eps=layer.eps), weight, bias)
        else:
            def reference(t):
                return _affine_params(nn.functional.layer_norm(t, t.shape[1:], eps=layer.eps),
                                      weight, bias)

    x_ref = x.detach().clone().requires_grad_()
    y = layer(x)
    y_ref = reference(x_ref)
    assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad(y, [x, layer.weight, layer.bias], grad_out)
    want = torch.autograd.grad(y_ref, [x_ref, *affine_params], grad_out)
    for g, w in zip(got, want):
        assert_close(g, w, rtol=1e-10, atol=1e-10)
    if branch == 'BN':
        assert_close(layer.running_mean, torch_norm.running_mean, rtol=1e-12, atol=1e-12)
        assert_close(layer.running_var, torch_norm.running_var, rtol=1e-12, atol=1e-12)


def _affine_params(y, weight, bias):
    return y * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def test_default_initialisation_and_last_gamma():
    layer = SwitchableNorm(6)
    assert torch.equal(layer.weight, torch.ones(6)) and torch.equal(layer.bias, torch.zeros(6))
    assert torch.equal(layer.mean_weight, torch.ones(3))
    assert torch.equal(layer.var_weight, torch.ones(3))
    assert torch.equal(layer.running_mean, torch.zeros(6))
    assert torch.equal(layer.running_var, torch.ones(6))
    mean_share, var_share = layer.importance()
    assert_close(mean_share, torch.full((3,), 1 / 3))
    assert torch.equal(SwitchableNorm(6, last_gamma=True).weight, torch.zeros(6))
    no_bn = SwitchableNorm(6, using_bn=False)
    assert no_bn.mean_weight.shape == (2,) and no_bn.running_mean is None
    assert 'running_mean' not in no_bn.state_dict()


@pytest.mark.parametrize('in_variance', MODES)
@pytest.mark.parametrize('training', [True, False])
def test_one_by_one_maps_are_finite(in_variance, training):
    """ASPP image pooling: (N, C, 1, 1). The IN term sees zero variance, never NaN."""
    layer = randomized(SwitchableNorm(8, in_variance=in_variance)).train(training)
    x = torch.randn(2, 8, 1, 1, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    # IN alone on a 1x1 map normalizes every value to the bias.
    in_only = one_hot_logits(randomized(SwitchableNorm(8, in_variance=in_variance).double()), 0)
    assert_close(in_only(x.double().detach()), in_only.bias.detach().reshape(1, 8, 1, 1)
                 .expand(2, 8, 1, 1))


def test_eval_uses_running_stats_for_bn_only():
    """In eval, changing the running statistics changes the output only through BN."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    for branch in (0, 1, 2):
        layer = one_hot_logits(randomized(SwitchableNorm(4).double()), branch).eval()
        before = layer(x)
        with torch.no_grad():
            layer.running_mean.add_(1.0)
        changed = not torch.allclose(before, layer(x))
        assert changed == (branch == 2)


def test_momentum_convention():
    """new = (1 - momentum) * old + momentum * batch, like torch (official decay 0.9 == 0.1)."""
    torch.manual_seed(0)
    layer = one_hot_logits(SwitchableNorm(3, momentum=0.25, in_variance='biased').double(), 2)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64) + 5.0
    layer(x)
    batch_mean = x.mean((0, 2, 3))
    assert_close(layer.running_mean, 0.25 * batch_mean)


def test_no_moving_average_leaves_running_stats():
    layer = SwitchableNorm(3, using_moving_average=False)
    layer(torch.randn(4, 3, 5, 5) + 3)
    assert torch.equal(layer.running_mean, torch.zeros(3))
    assert torch.equal(layer.running_var, torch.ones(3))


def test_batch_average_pass_pools_exactly():
    """start/finish_batch_average: running stats = pooled E[x^2]-E[x]^2 of all values."""
    torch.manual_seed(0)
    layer = SwitchableNorm(3, using_moving_average=False, in_variance='biased').double()
    batches = [torch.randn(n, 3, 4, 5, dtype=torch.float64) * (i + 1) + i
               for i, n in enumerate([2, 5, 3])]
    layer.start_batch_average()
    with torch.no_grad():
        for b in batches:
            layer(b)
    pool = layer.finish_batch_average()
    values = torch.cat([b.transpose(0, 1).reshape(3, -1) for b in batches], 1)
    assert pool.count == values.shape[1]
    assert_close(layer.running_mean, values.mean(1))
    assert_close(layer.running_var, values.var(1, unbiased=True))  # Bessel in 'biased' mode
    assert layer.batch_average is None


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_low_precision(device, dtype):
    """Statistics in float32 under autocast; the output keeps the input dtype."""
    torch.manual_seed(0)
    layer = randomized(SwitchableNorm(8)).to(device)
    x = (torch.randn(4, 8, 6, 6) * 4 + 10).to(device, dtype).requires_grad_()
    with torch.autocast(device, dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    expected = layer(x.detach().float())
    assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    assert layer.weight.grad.dtype == torch.float32


def test_half_precision_stats_do_not_cancel():
    """Large means with small spread: E[x^2]-E[x]^2 in half precision would give garbage."""
    layer = SwitchableNorm(4, in_variance='biased')
    x32 = torch.randn(2, 4, 8, 8) * 0.5 + 300.0
    y16 = layer(x32.half())
    y32 = layer(x32.half().float())
    assert y16.dtype == torch.float16
    assert_close(y16.float(), y32, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize('shape', [(2, 3), (3,), ()])
def test_rejects_inputs_without_spatial_dims(shape):
    with pytest.raises(ValueError, match=r'at least one spatial dimension.*' +
                       str(tuple(shape)).replace('(', r'\(').replace(')', r'\)')):
        SwitchableNorm(3)(torch.randn(shape))


def test_rejects_channel_mismatch():
    with pytest.raises(ValueError, match=r'got input with 5 channels.*expected 3'):
        SwitchableNorm(3)(torch.randn(2, 5, 4, 4))


def test_rejects_unknown_arguments():
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['momentun'\]"):
        SwitchableNorm(3, momentun=0.1)


@pytest.mark.parametrize('kwargs,match', [
    (dict(momentum=0.9 + 0.2), 'momentum must be in'),
    (dict(eps=0), 'eps must be a positive'),
    (dict(in_variance='sample'), "in_variance must be one of"),
])
def test_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SwitchableNorm(3, **kwargs)


def test_rejects_single_value_per_channel_in_training():
    layer = SwitchableNorm(3)
    with pytest.raises(ValueError, match=r'more than 1 value per channel.*\(1, 3, 1, 1\)'):
        layer(torch.randn(1, 3, 1, 1))
    # Without the BN branch, or in eval mode, one value per channel is fine.
    assert torch.isfinite(SwitchableNorm(3, using_bn=False)(torch.randn(1, 3, 1, 1))).all()
    assert torch.isfinite(layer.eval()(torch.randn(1, 3, 1, 1))).all()


def test_empty_batch_gives_empty_output():
    """0 RoIs in a mask head: empty output and gradients, running statistics untouched."""
    layer = SwitchableNorm(4)
    x = torch.randn(0, 4, 7, 7, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 4, 7, 7)
    (y.sum() * 0).backward()
    assert x.grad.shape == x.shape
    assert torch.equal(layer.running_mean, torch.zeros(4))


def test_integer_input_rejected():
    with pytest.raises(TypeError, match='floating-point'):
        SwitchableNorm(3)(torch.ones(2, 3, 4, 4, dtype=torch.long))


def test_repr():
    text = repr(SwitchableNorm(16, momentum=0.003, using_bn=False))
    assert text == ("SwitchableNorm(16, eps=1e-05, momentum=0.003, using_moving_average=True, "
                    "using_bn=False, last_gamma=False, in_variance='unbiased')")
