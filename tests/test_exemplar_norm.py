"""ExemplarNorm / SyncExemplarNorm: reference, gradcheck, limits, compile, export, AMP, sync."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from sn_mm.ops import exemplar_norm
from sn_mm.ops.exemplar_norm import ExemplarNorm, SyncExemplarNorm
from tests.dist_util import assert_equals_union_batch, rank_slice_step, run_ranks

PARAMS = ('weight', 'bias', 'reduce_weight', 'ratio_weight', 'ratio_bias')


def _randomize(layer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in PARAMS:
            p = getattr(layer, name)
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
        if layer.using_bn:
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=gen))
            layer.running_var.copy_(torch.rand(layer.num_features, generator=gen) + 0.5)
    return layer


def _layer(c=6, seed=0, cls=ExemplarNorm, **kw):
    kw.setdefault('reduction', 4)
    return _randomize(cls(c, dtype=torch.float64, **kw), seed)


def _x(shape, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5).to(dtype)


# ------------------------------------------------------------------ independent reference
def reference(layer, x):
    """EN from the paper's equations: K full-size normalizations, mixed per sample.

    Every statistic is computed directly on ``x`` (no shared moment pass); the ratio
    network reads the spatial means of the K normalized maps.
    """
    n, c = x.shape[:2]
    sp = tuple(range(2, x.dim()))
    length = x[0, 0].numel()
    unbiased = layer.in_variance == 'unbiased' and length > 1
    eps = layer.eps
    mean_in = x.mean(sp, keepdim=True)
    var_in = x.var(sp, keepdim=True, correction=1 if unbiased else 0)
    # LN / BN over their sets: mean of the IN variances (SN's convention) plus the
    # spread of the IN means; in biased mode this is the plain variance over the set.
    def pooled(dims):
        mu = x.mean(dims, keepdim=True)
        return mu, var_in.mean(dims, keepdim=True) + (mean_in - mu).square().mean(dims, keepdim=True)
    stats = [(mean_in, var_in), pooled((1,) + sp)]
    if layer.using_bn:
        if layer.training:
            stats.append(pooled((0,) + sp))
        else:
            view = (1, c) + (1,) * len(sp)
            stats.append((layer.running_mean.view(view), layer.running_var.view(view)))
    normalized = [(x - mu) / torch.sqrt(v + eps) for mu, v in stats]
    k = len(stats)
    desc = torch.stack([h.mean(sp) for h in normalized], 1)  # (N, K, C)
    span = layer.reduce_weight.shape[-1]
    cp = -(-c // span) * span
    desc = torch.cat([desc, desc.new_zeros(n, k, cp - c)], 2).view(n, k, cp // span, span)
    z = (desc * layer.reduce_weight.view(1, k, 1, span)).sum(-1)
    rel = torch.einsum('nki,nji->nkj', z, z) / z.shape[-1]
    logits = rel.reshape(n, k * k) @ layer.ratio_weight.T + layer.ratio_bias
    gamma = layer.weight.view((1, c) + (1,) * len(sp))
    beta = layer.bias.view((1, c) + (1,) * len(sp))
    expand = (n, k) + (1,) * (x.dim() - 1)
    if layer.mixture == 'outputs':
        lam = torch.softmax(logits, 1).view(expand)
        return gamma * sum(lam[:, i] * normalized[i] for i in range(k)) + beta
    a = torch.softmax(logits[:, :k], 1).view(expand)
    b = torch.softmax(logits[:, k:], 1).view(expand)
    mean = sum(a[:, i] * stats[i][0] for i in range(k))
    var = sum(b[:, i] * stats[i][1] for i in range(k))
    return gamma * (x - mean) / torch.sqrt(var + eps) + beta


CASES = [(mix, var, bn) for mix in ('outputs', 'statistics') for var in ('unbiased', 'biased')
         for bn in (True, False)]


@pytest.mark.parametrize('mixture,in_variance,using_bn', CASES)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('shape', [(4, 6, 5, 3), (3, 6, 7), (2, 6, 2, 3, 2)])
def test_matches_reference(mixture, in_variance, using_bn, training, shape):
    layer = _layer(mixture=mixture, in_variance=in_variance, using_bn=using_bn)
    ref_layer = _layer(mixture=mixture, in_variance=in_variance, using_bn=using_bn)
    layer.train(training)
    ref_layer.train(training)
    x = _x(shape).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    g = _x(shape, seed=2)
    y, y_ref = layer(x), reference(ref_layer, x_ref)
    assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    for name in PARAMS:
        assert_close(getattr(layer, name).grad, getattr(ref_layer, name).grad,
                     rtol=1e-9, atol=1e-10, msg=lambda m: f'grad of {name}: {m}')


@pytest.mark.parametrize('mixture', ['outputs', 'statistics'])
@pytest.mark.parametrize('training', [True, False])
def test_fused_eager_path_equals_plain_ops(monkeypatch, mixture, training):
    """The eager path's hand-written backward against the plain differentiable ops."""
    results = []
    for fused in (True, False):
        monkeypatch.setattr(exemplar_norm, 'use_fused_path', lambda x, fused=fused: fused)
        layer = _layer(mixture=mixture).train(training)
        x = _x((3, 6, 5, 4)).contiguous(memory_format=torch.channels_last).requires_grad_()
        y = layer(x)
        (y * _x((3, 6, 5, 4), seed=3)).sum().backward()
        results.append((y, x.grad, [getattr(layer, n).grad for n in PARAMS],
                        layer.running_var.clone()))
    (y1, gx1, gp1, rv1), (y2, gx2, gp2, rv2) = results
    assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    assert y1.is_contiguous(memory_format=torch.channels_last)
    assert_close(gx1, gx2, rtol=1e-10, atol=1e-11)
    for a, b in zip(gp1, gp2):
        assert_close(a, b, rtol=1e-10, atol=1e-11)
    assert_close(rv1, rv2, rtol=1e-12, atol=1e-12)


def test_double_backward_raises():
    layer = _layer()
    x = _x((2, 6, 3, 3)).requires_grad_()
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='once_differentiable|double backward|differentiable'):
        gx.sum().backward()


def test_ratios_are_per_sample_and_sum_to_one():
    layer = _layer()
    mean_w, var_w = layer.sample_ratios(_x((5, 6, 4, 4)))
    assert mean_w.shape == (5, 3) and var_w is mean_w
    assert_close(mean_w.sum(1), torch.ones(5, dtype=torch.float64))
    assert (mean_w.max(0).values - mean_w.min(0).values).min() > 1e-6  # samples differ


def test_initial_ratios_are_uniform():
    layer = ExemplarNorm(6, mixture='statistics')
    for w in layer.sample_ratios(torch.randn(3, 6, 4, 4)):
        assert_close(w, torch.full((3, 3), 1 / 3))


@pytest.mark.parametrize('mixture', ['outputs', 'statistics'])
@pytest.mark.parametrize('using_bn,shape', [(True, (3, 5, 3, 2)), (False, (2, 5, 4)),
                                           (True, (3, 5, 1, 1))])
def test_gradcheck(mixture, using_bn, shape):
    layer = _layer(c=5, mixture=mixture, using_bn=using_bn, reduction=2,
                   using_moving_average=False)
    x = _x(shape).requires_grad_()
    params = [getattr(layer, n) for n in PARAMS]

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(PARAMS, ps)), (x,))

    inputs = [x] + [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ one-hot limits
def _one_hot(layer, branch):
    with torch.no_grad():
        layer.ratio_weight.zero_()
        layer.ratio_bias.zero_()
        k = len(layer.branches)
        for head in range(layer.ratio_bias.numel() // k):
            layer.ratio_bias[head * k + branch] = 1e4  # exp(-1e4) == 0: exactly one-hot
    return layer


@pytest.mark.parametrize('mixture', ['outputs', 'statistics'])
@pytest.mark.parametrize('branch', ['IN', 'LN', 'BN'])
@pytest.mark.parametrize('training', [True, False])
def test_one_hot_equals_plain_layer(mixture, branch, training):
    layer = _one_hot(_layer(mixture=mixture, in_variance='biased'), ('IN', 'LN', 'BN').index(branch))
    layer.train(training)
    x = _x((4, 6, 5, 3))
    w, b, eps = layer.weight, layer.bias, layer.eps
    affine = lambda h: h * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)  # noqa: E731
    if branch == 'IN':
        expected = F.instance_norm(x, weight=w, bias=b, eps=eps)
    elif branch == 'LN':
        expected = affine(F.layer_norm(x, x.shape[1:], eps=eps))
    else:
        rm, rv = layer.running_mean.clone(), layer.running_var.clone()
        expected = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1, eps=eps)
    y = layer(x)
    assert_close(y, expected.detach(), rtol=1e-10, atol=1e-10)
    if branch == 'BN':  # the running statistics follow torch's BatchNorm exactly
        assert_close(layer.running_mean, rm)
        assert_close(layer.running_var, rv)


# ------------------------------------------------------------------ modes and edge cases
def test_train_updates_running_stats_eval_uses_them():
    layer = _layer(momentum=0.25)
    before = layer.running_mean.clone()
    x = _x((4, 6, 3, 3))
    layer(x)
    assert not torch.equal(layer.running_mean, before)
    layer.eval()
    rm = layer.running_mean.clone()
    y1 = layer(x)
    assert torch.equal(layer.running_mean, rm)
    # eval: each sample is normalized independently of the rest of the batch
    assert_close(layer(x[:1]), y1[:1], rtol=1e-12, atol=1e-12)
    no_track = _layer(using_moving_average=False)
    rm = no_track.running_mean.clone()
    no_track(x)
    assert torch.equal(no_track.running_mean, rm)


@pytest.mark.parametrize('shape', [(1, 6, 4, 4), (2, 6, 1, 1), (1, 6, 1, 3)])
@pytest.mark.parametrize('in_variance', ['unbiased', 'biased'])
def test_small_batches_and_maps_are_finite(shape, in_variance):
    layer = _layer(in_variance=in_variance)
    x = _x(shape).requires_grad_()
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    layer.eval()
    assert torch.isfinite(layer(x[:1])).all()


def test_one_value_per_channel_in_training_raises():
    layer = _layer()
    with pytest.raises(ValueError, match=r'more than 1 value per channel.*\(1, 6, 1, 1\)'):
        layer(_x((1, 6, 1, 1)))
    layer.eval()
    assert layer(_x((1, 6, 1, 1))).shape == (1, 6, 1, 1)


def test_empty_batch():
    layer = _layer()
    x = _x((0, 6, 3, 3)).requires_grad_()
    y = layer(x)
    assert y.shape == (0, 6, 3, 3)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape  # in the graph (SyncEN's backward)


@pytest.mark.parametrize('kwargs,match', [
    (dict(mixture='mean'), r"mixture must be one of \('outputs', 'statistics'\), got 'mean'"),
    (dict(reduction=0), r'reduction must be a positive int \(>= 1\), got 0'),
    (dict(in_variance='none'), "in_variance must be one of"),
    (dict(momentum=2), 'momentum must be in'),
    (dict(eps=0), r'eps must be a positive number \(> 0\), got 0'),
    (dict(using_bn='False'), r"ExemplarNorm: using_bn must be a bool \(True or False\), got 'False'"),
    (dict(num_features=True), r'num_features must be a positive int \(>= 1\), got True'),
])
def test_bad_options(kwargs, match):
    kw = dict(num_features=6)
    kw.update(kwargs)
    with pytest.raises(ValueError if 'bool' not in match else TypeError, match=match):
        ExemplarNorm(**kw)
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['num_groups'\]"):
        ExemplarNorm(6, num_groups=2)


def test_bad_inputs():
    layer = ExemplarNorm(6)
    with pytest.raises(ValueError, match=r'got input with 5 channels \(shape \(2, 5, 3\)\)'):
        layer(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match='at least one spatial dimension'):
        layer(torch.randn(2, 6))
    with pytest.raises(TypeError, match='floating-point input, got torch.int64'):
        layer(torch.ones(2, 6, 3, dtype=torch.long))


def test_channels_last_is_kept():
    layer = _layer()
    x = _x((2, 6, 4, 5)).contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, layer(x.contiguous()))


def test_factory_kwargs_and_meta():
    layer = ExemplarNorm(8, dtype=torch.float64, mixture='statistics')
    assert all(t.dtype == torch.float64 for t in layer.state_dict().values())
    assert layer.ratio_weight.shape == (6, 9) and layer.reduce_weight.shape == (3, 1, 8)
    meta = ExemplarNorm(8, device='meta')
    assert all(t.is_meta for t in meta.state_dict().values())
    y = meta(torch.empty(2, 8, 5, 5, device='meta'))
    assert y.is_meta and y.shape == (2, 8, 5, 5)
    assert set(layer.state_dict()) == {'weight', 'bias', 'reduce_weight', 'ratio_weight',
                                       'ratio_bias', 'running_mean', 'running_var'}
    assert set(ExemplarNorm(8, using_bn=False).state_dict()) == {
        'weight', 'bias', 'reduce_weight', 'ratio_weight', 'ratio_bias'}


def test_autocast_bf16_float32_statistics():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    layer = _randomize(ExemplarNorm(6, reduction=4))
    twin = _randomize(ExemplarNorm(6, reduction=4))
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        h = conv(x).detach()
        y = layer(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert layer.running_mean.dtype == torch.float32
    y_ref = twin(h.float())  # same bf16 input, all float32
    assert_close(layer.running_mean, twin.running_mean, rtol=1e-5, atol=1e-6)
    assert_close(layer.running_var, twin.running_var, rtol=1e-5, atol=1e-6)
    assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    (y.float() * g).sum().backward()
    (y_ref * g).sum().backward()
    assert layer.ratio_weight.grad.dtype == torch.float32
    for name in PARAMS:  # bf16 products, float32 sums: close to the float32 gradients
        a, b = getattr(layer, name).grad, getattr(twin, name).grad
        assert_close(a, b, rtol=5e-2, atol=5e-2 * float(b.abs().max()),
                     msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('fused', [True, False])
def test_bf16_input_gradient_matches_float32(monkeypatch, fused):
    """bf16 eager path (float32 sums of x and x^2) and the plain path against float32."""
    monkeypatch.setattr(exemplar_norm, 'use_fused_path', lambda x: fused)
    layer, twin = _randomize(ExemplarNorm(6, reduction=4)), _randomize(ExemplarNorm(6, reduction=4))
    x32 = torch.randn(3, 6, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 + 3
    x16 = x32.bfloat16().requires_grad_()
    x32 = x16.detach().float().requires_grad_()
    y16, y32 = layer(x16), twin(x32)
    assert y16.dtype == torch.bfloat16
    assert_close(layer.running_var, twin.running_var, rtol=1e-4, atol=1e-5)
    assert_close(y16.float(), y32, rtol=2e-2, atol=3e-2)
    g = torch.randn(y32.shape, generator=torch.Generator().manual_seed(5))
    (y16.float() * g).sum().backward()
    (y32 * g).sum().backward()
    assert x16.grad.dtype == torch.bfloat16
    assert_close(x16.grad.float(), x32.grad, rtol=5e-2, atol=5e-2 * float(x32.grad.abs().max()))


def test_norm_eval_owner_keeps_eval_and_freezes_ratio_network():
    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_eval = True
            self.norm = ExemplarNorm(6)

    net = Backbone()
    net.train()
    assert not net.norm.training
    assert not any(p.requires_grad for p in net.norm.logit_parameters())
    assert net.norm.weight.requires_grad


# ------------------------------------------------------------------ compile and export
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('mixture', ['outputs', 'statistics'])
def test_compile_equals_eager_without_graph_breaks(training, mixture):
    torch._dynamo.reset()
    layer = _layer(mixture=mixture).float().train(training)
    twin = _layer(mixture=mixture).float().train(training)
    x = _x((3, 6, 5, 4), dtype=torch.float32)
    explanation = torch._dynamo.explain(_layer(mixture=mixture).float().train(training))(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(layer, backend='inductor')
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = compiled(xc)
    y_eager = twin(xe)
    assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    y_eager.square().sum().backward()
    assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-4)
    assert_close(layer.ratio_weight.grad, twin.ratio_weight.grad, rtol=1e-4, atol=1e-4)
    if layer.using_bn:
        assert_close(layer.running_var, twin.running_var)


def test_torch_export_and_onnx_eval_parity(tmp_path):
    onnxruntime = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1),
                                _layer().float()).eval()
    x = torch.randn(2, 3, 8, 8)
    batch = torch.export.Dim('batch', min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    x2 = torch.randn(5, 3, 8, 8)
    assert_close(exported.module()(x2), model(x2), rtol=1e-5, atol=1e-5)
    path = str(tmp_path / 'en.onnx')
    torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18,
                      dynamic_shapes=({0: batch},), input_names=['x'])
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    for inp in (x, x2):
        out = session.run(None, {session.get_inputs()[0].name: inp.numpy()})[0]
        assert_close(torch.from_numpy(out), model(inp).detach(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ SyncEN (2 gloo ranks)
SYNC_C = 6
SYNC_BUFFERS = ('running_mean', 'running_var')


def _union(batches):
    shape = (sum(batches), SYNC_C, 4, 3)
    return _x(shape), _x(shape, seed=5)


def _sync_rank(rank, world_size, batches, mixture):
    layer = _layer(c=SYNC_C, cls=SyncExemplarNorm, mixture=mixture, momentum=0.3)
    return rank_slice_step(layer, *_union(batches), batches, rank, PARAMS, SYNC_BUFFERS)


@pytest.mark.parametrize('batches,mixture', [((3, 2), 'outputs'), ((0, 4), 'statistics')])
def test_sync_en_equals_en_on_union_batch(tmp_path, batches, mixture):
    results = run_ranks(_sync_rank, tmp_path, batches, mixture)
    assert_equals_union_batch(results, _layer(c=SYNC_C, mixture=mixture, momentum=0.3),
                              *_union(batches), PARAMS, SYNC_BUFFERS)


def test_sync_en_without_process_group_is_en():
    x = _x((3, 6, 4, 4))
    assert_close(_layer(cls=SyncExemplarNorm)(x), _layer()(x), rtol=0, atol=0)
