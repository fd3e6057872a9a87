"""A GroupNorm branch in SN's pool (``branches=(..., 'GN'), num_groups=G``).

The GN moments derive from the instance moments as LN's do, so the full-size passes are
unchanged: these tests check the table row and its moment derivation everywhere the pool
is read (the layer, the op, compile, export, deploy, configs, checkpoints). SyncSN with a
GN branch: tests/test_sync_sn.py.
"""
import copy
import io

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm, pool as pool_table
from tests.reference import reference_sn

GN4 = ('IN', 'LN', 'BN', 'GN')


def _layer(c=8, groups=4, branches=GN4, dtype=torch.float64, seed=0, **kw):
    layer = SwitchableNorm(c, branches=branches, num_groups=groups,
                           using_bn='BN' in branches, dtype=dtype, **kw)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        if layer.using_bn:
            layer.running_mean.uniform_(-1, 1, generator=gen)
            layer.running_var.uniform_(0.5, 2, generator=gen)
    return layer


def test_table_has_the_gn_row():
    row = pool_table.BY_NAME['GN']
    assert (row.code, row.over_batch) == (3, False)
    assert pool_table.resolve_pool(GN4) == GN4
    assert pool_table.resolve_pool(None, using_bn=False) == ('IN', 'LN')


@pytest.mark.parametrize('branches', [GN4, ('IN', 'LN', 'GN')])
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('in_variance', ['unbiased', 'biased'])
def test_matches_independent_reference_float64(branches, training, in_variance):
    layer = _layer(branches=branches, in_variance=in_variance, momentum=0.3).train(training)
    ref = copy.deepcopy(layer)
    x = (torch.randn(3, 8, 5, 4, dtype=torch.float64) * 2 + 1).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y = layer(x)
    yr, mean_bn, var_bn = reference_sn(
        xr, ref.weight, ref.bias, ref.mean_weight, ref.var_weight, eps=ref.eps,
        training=training, running_mean=ref.running_mean, running_var=ref.running_var,
        unbiased=in_variance == 'unbiased', using_bn=ref.using_bn, gn_groups=4)
    assert_close(y, yr, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(y)
    y.backward(grad)
    yr.backward(grad)
    assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-10)
    for (name, p), q in zip(layer.named_parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=lambda m: f'{name}: {m}')
    if training and layer.using_bn:
        values = x.numel() // x.shape[1]
        var = var_bn if in_variance == 'unbiased' else var_bn * values / (values - 1)
        assert_close(layer.running_mean, 0.7 * ref.running_mean + 0.3 * mean_bn.detach())
        assert_close(layer.running_var, 0.7 * ref.running_var + 0.3 * var.detach())


def test_gradcheck():
    layer = _layer(c=6, groups=3)
    x = torch.randn(3, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()))


@pytest.mark.parametrize('training', [True, False])
def test_one_hot_gn_equals_group_norm(training):
    layer = _layer(c=12, groups=3, in_variance='biased').train(training)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([-1e4, -1e4, -1e4, 1e4]))
        layer.var_weight.copy_(torch.tensor([-1e4, -1e4, -1e4, 1e4]))
    gn = nn.GroupNorm(3, 12, eps=layer.eps).double()
    with torch.no_grad():
        gn.weight.copy_(layer.weight)
        gn.bias.copy_(layer.bias)
    x = torch.randn(2, 12, 6, 5, dtype=torch.float64) * 3 + 2
    assert_close(layer(x), gn(x), rtol=1e-10, atol=1e-10)


def test_compile_equals_eager_float64_without_graph_break():
    torch._dynamo.reset()
    eager = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _layer(dtype=torch.float32)).double()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(4, 3, 7, 6, dtype=torch.float64)
    ye, yc = eager(x), compiled(x)
    assert_close(yc, ye, rtol=0, atol=1e-10)
    ye.square().sum().backward()
    yc.square().sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        assert_close(q.grad, p.grad, rtol=0, atol=1e-10, msg=name)
    for b, c in zip(eager.buffers(), compiled_model.buffers()):
        assert_close(c, b, rtol=0, atol=1e-10)
    assert torch._dynamo.explain(copy.deepcopy(eager))(x).graph_break_count == 0


def test_export_and_onnx_match_eager():
    ort = pytest.importorskip('onnxruntime')
    model = nn.Sequential(nn.Conv2d(3, 8, 1), _layer(dtype=torch.float32)).eval()
    x = torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        expected = model(x)
        assert_close(torch.export.export(model, (x,)).module()(x), expected, rtol=0, atol=1e-5)
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18)
    buffer = io.BytesIO()
    program.save(buffer)
    session = ort.InferenceSession(buffer.getvalue(), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert_close(torch.from_numpy(out), expected, rtol=0, atol=1e-4)


def test_deploy_turns_one_hot_gn_into_group_norm():
    from sn_mm.deploy import to_fixed_norms
    layer = _layer(c=8, groups=2, in_variance='biased', dtype=torch.float32).eval()
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([-50., -50., -50., 50.]))
        layer.var_weight.copy_(torch.tensor([-50., -50., -50., 50.]))
    model = nn.Sequential(nn.Conv2d(3, 8, 1), layer).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
    report = to_fixed_norms(model, tol=1e-6)
    converted = report.model if hasattr(report, 'model') else model
    gn = [m for m in converted.modules() if type(m) is nn.GroupNorm]
    assert len(gn) == 1 and gn[0].num_groups == 2
    with torch.no_grad():
        assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)


def test_deploy_keeps_a_gn_mixture_exact():
    from sn_mm.deploy import to_fixed_norms
    layer = _layer(c=8, groups=2, dtype=torch.float64).eval()
    model = nn.Sequential(layer).eval()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    report = to_fixed_norms(model)
    converted = report.model if hasattr(report, 'model') else model
    with torch.no_grad():
        assert_close(converted.double()(x), expected, rtol=1e-10, atol=1e-10)


def test_options_are_checked():
    with pytest.raises(ValueError, match="needs num_groups"):
        SwitchableNorm(8, branches=GN4)
    with pytest.raises(ValueError, match='num_groups=3 must divide the 8 channels'):
        SwitchableNorm(8, branches=GN4, num_groups=3)
    with pytest.raises(ValueError, match="unknown normalizer"):
        SwitchableNorm(8, branches=('IN', 'XN', 'BN'))
    with pytest.raises(ValueError, match='disagree'):
        SwitchableNorm(8, branches=('IN', 'LN', 'GN'), num_groups=2)  # using_bn=True default
    with pytest.raises(ValueError, match='only used by a'):
        SwitchableNorm(8, num_groups=2)


def test_norm_cfg_and_checkpoint_round_trip():
    from mmcv.cnn import build_norm_layer

    import sn_mm  # noqa: F401
    name, layer = build_norm_layer(dict(type='SyncSN', branches=GN4, num_groups=4), 8,
                                   postfix=1)
    assert name == 'sn1' and isinstance(layer, SyncSwitchableNorm)
    assert layer.pool == GN4 and layer.mean_weight.shape == (4,)
    copy_ = SwitchableNorm(8, **layer.config())
    copy_.load_state_dict(layer.state_dict())
    with pytest.raises(RuntimeError, match=r'mean_weight has 4 importance logits'):
        SwitchableNorm(8).load_state_dict(layer.state_dict())
