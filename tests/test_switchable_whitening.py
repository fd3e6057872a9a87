"""Switchable Whitening (SW / SyncSW): against an independent plain-torch reference, its
one-hot limits, gradchecks, the toolchain (compile, export, ONNX, autocast, meta) and the
union-batch statistics of SyncSW in a 2-process gloo run."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from sn_mm.ops import norm_eval
from sn_mm.ops.sw_fold import fixed_affine, fold_into_conv, to_grouped_conv
from sn_mm.ops.switchable_whitening import SwitchableWhitening, SyncSwitchableWhitening
from tests.dist_util import assert_equals_union_batch, rank_slice_step, run_ranks

NEG = float('-inf')
BRANCH_NAMES = {1: ['BW'], 2: ['BW', 'IW'], 3: ['BW', 'IW', 'LN'],
                5: ['BW', 'IW', 'BN', 'IN', 'LN']}


# ------------------------------------------------------------------ reference
def ref_inv_sqrt_eigh(cov):
    vals, vecs = torch.linalg.eigh(cov)
    return vecs @ torch.diag(vals.rsqrt()) @ vecs.T


def ref_inv_sqrt_newton(cov, T):
    """The Newton iterations written again, one matrix at a time."""
    c = cov.shape[0]
    tr = torch.trace(cov)
    a = cov / tr
    p = torch.eye(c, dtype=cov.dtype)
    for _ in range(T):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ a
    return p / torch.sqrt(tr)


def reference_sw(x, sw_type, num_pergroup, mean_logits, var_logits, weight, bias, eps,
                 running_mean=None, running_cov=None, inv_sqrt=ref_inv_sqrt_eigh,
                 sw5_cov='paper'):
    """SW from the paper's definitions, per sample and group, with explicit loops.

    Batch statistics from the batch unless ``running_mean``/``running_cov`` are given.
    """
    n, big_c = x.shape[:2]
    xf = x.reshape(n, big_c, -1)
    length = xf.shape[-1]
    c = num_pergroup
    w = torch.softmax(mean_logits, 0)
    v = w if var_logits is None else torch.softmax(var_logits, 0)
    names = BRANCH_NAMES[sw_type]
    out = torch.empty_like(xf)
    for g in range(big_c // c):
        xg = xf[:, g * c:(g + 1) * c]  # (N, c, L)
        if running_mean is None:
            pos = xg.permute(1, 0, 2).reshape(c, -1)
            mu_b = pos.mean(1, keepdim=True)
            s_b = (pos - mu_b) @ (pos - mu_b).T / pos.shape[1]
        else:
            mu_b, s_b = running_mean[g], running_cov[g]
        for i in range(n):
            xi = xg[i]
            mu_i = xi.mean(1, keepdim=True)
            s_i = (xi - mu_i) @ (xi - mu_i).T / length
            mu_l = xf[i].mean()
            var_l = xf[i].var()  # unbiased, as the authors
            eye = torch.eye(c, dtype=x.dtype)
            means = {'BW': mu_b, 'IW': mu_i, 'BN': mu_b, 'IN': mu_i,
                     'LN': mu_l * torch.ones_like(mu_i)}
            covs = {'BW': s_b, 'IW': s_i, 'BN': torch.diag(torch.diag(s_b)),
                    'IN': torch.diag(torch.diag(s_i)), 'LN': var_l * eye}
            mean = sum(w[k] * means[name] for k, name in enumerate(names))
            var_w = dict(zip(names, v))
            if sw_type == 5 and sw5_cov == 'official':
                var_w['BN'], var_w['IN'] = var_w['BW'], var_w['IW']
            cov = sum(var_w[name] * covs[name] for name in names) + eps * eye
            out[i, g * c:(g + 1) * c] = inv_sqrt(cov) @ (xi - mean)
    y = out.reshape(x.shape)
    shape = (1, big_c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(shape) + bias.reshape(shape)
    return y


def make_layer(sw_type, c_all=8, num_pergroup=4, T=5, tie_weight=False, seed=0, cls=None,
               **kw):
    cls = cls or SwitchableWhitening
    layer = cls(c_all, num_pergroup=num_pergroup, sw_type=sw_type, T=T,
                tie_weight=tie_weight, **kw).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            scale = 0.5 if 'sw_' in name else 1.0
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
            if name == 'weight':
                p.add_(1.5)
    return layer


def data(shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    # correlated channels: whitening has something to do
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    mix = torch.eye(shape[1], dtype=torch.float64) + 0.3 * torch.randn(
        shape[1], shape[1], generator=gen, dtype=torch.float64)
    return torch.einsum('dc,nc...->nd...', mix, x) * 1.5 + 0.7


def ref_of(layer, x, running=False, **kw):
    return reference_sw(x, layer.sw_type, layer.num_pergroup, layer.sw_mean_weight,
                        layer.sw_var_weight, layer.weight, layer.bias, layer.eps,
                        layer.running_mean if running else None,
                        layer.running_cov if running else None, sw5_cov=layer.sw5_cov, **kw)


# ------------------------------------------------------------ definitions
@pytest.mark.parametrize('sw_type', [1, 2, 3, 5])
@pytest.mark.parametrize('tie_weight', [False, True])
def test_train_matches_eigh_reference_at_T8(sw_type, tie_weight):
    # T=8 has converged on these well-conditioned covariances; the uncoupled Newton
    # iteration amplifies rounding once converged, so a much larger T drifts (documented)
    layer = make_layer(sw_type, T=8, tie_weight=tie_weight)
    x = data((3, 8, 6, 6))
    assert_close(layer(x), ref_of(layer, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('sw_type', [2, 3, 5])
@pytest.mark.parametrize('sw5_cov', ['paper', 'official'])
def test_T5_matches_newton_reference_train_and_eval(sw_type, sw5_cov):
    layer = make_layer(sw_type, sw5_cov=sw5_cov, momentum=0.3)
    x = data((3, 8, 3, 3))
    newton = lambda cov: ref_inv_sqrt_newton(cov, 5)  # noqa: E731
    assert_close(layer(x), ref_of(layer, x, inv_sqrt=newton), rtol=1e-10, atol=1e-10)
    layer.eval()
    x2 = data((2, 8, 3, 3), seed=5)
    assert_close(layer(x2), ref_of(layer, x2, running=True, inv_sqrt=newton),
                 rtol=1e-10, atol=1e-10)


def test_sw5_paper_and_official_differ():
    x = data((3, 8, 3, 3))
    a, b = make_layer(5, sw5_cov='paper'), make_layer(5, sw5_cov='official')
    assert (a(x) - b(x)).abs().max() > 1e-3


def test_1d_and_3d_inputs_match_reference():
    layer = make_layer(3, T=8)
    for shape in ((3, 8, 36), (2, 8, 4, 3, 3)):
        x = data(shape)
        assert_close(layer(x), ref_of(layer, x), rtol=1e-9, atol=1e-9)


def test_running_statistics_and_momentum_conventions():
    x = data((4, 8, 3, 3))
    layer = make_layer(2, momentum=0.3)
    layer(x)
    pos = x.reshape(4, 2, 4, 9).permute(1, 2, 0, 3).reshape(2, 4, -1)
    mean = pos.mean(-1, keepdim=True)
    cov = (pos - mean) @ (pos - mean).transpose(1, 2) / pos.shape[-1]  # biased
    assert_close(layer.running_mean, 0.3 * mean)
    assert_close(layer.running_cov, 0.7 * torch.eye(4, dtype=torch.float64) + 0.3 * cov)
    # the authors' decay d is momentum 1 - d
    assert SwitchableWhitening(8, num_pergroup=4, decay=0.9).momentum == pytest.approx(0.1)
    assert SwitchableWhitening(8, num_pergroup=4).momentum == pytest.approx(0.01)
    with pytest.warns(UserWarning, match='decay'):
        SwitchableWhitening(8, num_pergroup=4, momentum=0.99)
    # eval: no update
    layer.eval()
    before = layer.running_cov.clone()
    layer(x)
    assert torch.equal(before, layer.running_cov)


# ------------------------------------------------------------- one-hot limits
def _one_hot(layer, branch):
    with torch.no_grad():
        for p in (layer.sw_mean_weight, layer.sw_var_weight):
            if p is not None:
                p.fill_(NEG)
                p[layer.branches.index(branch)] = 0.0


def test_bw_with_one_channel_per_group_is_batchnorm():
    x = data((3, 6, 4, 4))
    for sw_type in (1, 2, 5):
        layer = make_layer(sw_type, c_all=6, num_pergroup=1, momentum=0.1)
        _one_hot(layer, 'BW')
        bn = nn.BatchNorm2d(6, eps=layer.eps, momentum=0.1).double()
        with torch.no_grad():
            bn.weight.copy_(layer.weight)
            bn.bias.copy_(layer.bias)
        assert_close(layer(x), bn(x), rtol=1e-12, atol=1e-12)
        assert_close(layer.running_mean.reshape(-1), bn.running_mean)
        layer.eval(), bn.eval()
        with torch.no_grad():  # BN tracks the unbiased variance, SW the biased one
            layer.running_cov.copy_(bn.running_var.reshape(6, 1, 1))
        assert_close(layer(x), bn(x), rtol=1e-12, atol=1e-12)


def test_bn_branch_alone_is_batchnorm_train_and_eval():
    x = data((3, 8, 4, 4))
    layer = make_layer(5, T=10, momentum=0.1)
    _one_hot(layer, 'BN')
    bn = nn.BatchNorm2d(8, eps=layer.eps, momentum=0.1).double()
    with torch.no_grad():
        bn.weight.copy_(layer.weight)
        bn.bias.copy_(layer.bias)
    y = layer(x)
    assert_close(y, bn(x), rtol=1e-9, atol=1e-9)
    n = x.numel() // 8
    assert_close(layer.running_mean.reshape(-1), bn.running_mean)
    biased = (bn.running_var - 0.9) / 0.1 * (n - 1) / n
    assert_close(torch.diagonal(layer.running_cov, dim1=1, dim2=2).reshape(-1), 0.9 + 0.1 * biased)
    layer.eval(), bn.eval()
    with torch.no_grad():
        layer.running_cov.copy_(torch.diag_embed(bn.running_var.reshape(2, 4)))
    assert_close(layer(x), bn(x), rtol=1e-9, atol=1e-9)


def test_in_and_ln_branches_alone():
    x = data((3, 8, 4, 4))
    layer = make_layer(5, T=10)
    _one_hot(layer, 'IN')
    inorm = F.instance_norm(x, eps=layer.eps) * layer.weight.reshape(1, -1, 1, 1) \
        + layer.bias.reshape(1, -1, 1, 1)
    assert_close(layer(x), inorm, rtol=1e-9, atol=1e-9)
    _one_hot(layer, 'LN')
    var, mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True)  # unbiased, as the authors
    ln = (x - mean) / torch.sqrt(var + layer.eps) * layer.weight.reshape(1, -1, 1, 1) \
        + layer.bias.reshape(1, -1, 1, 1)
    assert_close(layer(x), ln, rtol=1e-9, atol=1e-9)


def test_bw_alone_whitens_the_batch():
    layer = SwitchableWhitening(8, num_pergroup=4, sw_type=1, T=10, eps=1e-12,
                                affine=False).double()
    x = data((16, 8, 4, 4))
    y = layer(x).permute(1, 0, 2, 3).reshape(2, 4, -1)
    yc = y - y.mean(-1, keepdim=True)
    cov = yc @ yc.transpose(1, 2) / y.shape[-1]
    assert_close(cov, torch.eye(4, dtype=torch.float64).expand(2, 4, 4), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------- gradients
@pytest.mark.parametrize('sw_type,tie_weight', [(1, False), (2, False), (3, True), (5, False)])
@pytest.mark.parametrize('training', [True, False])
def test_gradcheck_float64(sw_type, tie_weight, training):
    layer = make_layer(sw_type, c_all=4, num_pergroup=2, T=3, tie_weight=tie_weight)
    layer.train(training)
    x = data((2, 4, 3, 2)).requires_grad_()
    params = [p for p in layer.parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()],
                                                          ps)), (x,))
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(num_features=10, num_pergroup=4), ValueError, r'num_features \(10\).*num_pergroup \(4\)'),
    (dict(sw_type=4), ValueError, r'sw_type must be one of \[1, 2, 3, 5\].*got 4'),
    (dict(sw_type=True), ValueError, r'sw_type.*got True'),
    (dict(tie_weight=1), TypeError, r'tie_weight must be a bool.*got 1'),
    (dict(affine='yes'), TypeError, r'affine must be a bool.*got \'yes\''),
    (dict(T=0), ValueError, r'T must be an int >= 1, got 0'),
    (dict(num_pergroup=0), ValueError, r'num_pergroup must be an int >= 1, got 0'),
    (dict(eps=0), ValueError, r'eps must be a positive number, got 0'),
    (dict(momentum=1.5), ValueError, r'momentum must be a number in \[0, 1\], got 1.5'),
    (dict(momentum=0.1, decay=0.9), ValueError, r'not both'),
    (dict(sw5_cov='other'), ValueError, r"sw5_cov must be one of .*'other'"),
    (dict(group_size=4), TypeError, r"unknown argument\(s\) \['group_size'\]"),
])
def test_bad_options(kwargs, exc, match):
    kw = dict(num_features=8, num_pergroup=4)
    kw.update(kwargs)
    with pytest.raises(exc, match=match):
        SwitchableWhitening(**kw)


def test_bad_inputs():
    layer = SwitchableWhitening(8, num_pergroup=4)
    with pytest.raises(ValueError, match=r'got input with 6 channels'):
        layer(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match=r'at least one spatial dimension'):
        layer(torch.randn(2, 8))
    with pytest.raises(TypeError, match=r'floating-point input'):
        layer(torch.ones(2, 8, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r'more than 1 value per channel'):
        layer(torch.randn(1, 8, 1, 1))
    # an empty batch in training uses the running statistics and leaves them alone
    y = layer(torch.randn(0, 8, 3, 3))
    assert y.shape == (0, 8, 3, 3)
    assert torch.equal(layer.running_mean, torch.zeros(2, 4, 1))


# ------------------------------------------------------------- checkpoints
def test_state_dict_uses_the_authors_names_and_shapes():
    sd = SwitchableWhitening(32, num_pergroup=16, sw_type=5).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        'sw_mean_weight': (5,), 'sw_var_weight': (5,), 'weight': (32,), 'bias': (32,),
        'running_mean': (2, 16, 1), 'running_cov': (2, 16, 16)}
    tied = SwitchableWhitening(32, tie_weight=True).state_dict()
    assert 'sw_var_weight' not in tied


def test_loading_mismatched_checkpoints_names_the_key():
    sd = SwitchableWhitening(32, sw_type=2).state_dict()
    with pytest.raises(RuntimeError, match=r'sw_mean_weight has 2 importance logits.*sw_type=5'):
        SwitchableWhitening(32, sw_type=5).load_state_dict(sd)
    with pytest.raises(RuntimeError, match=r'has sw_var_weight.*tie_weight=True.*tie_weight=False'):
        SwitchableWhitening(32, tie_weight=True).load_state_dict(sd)
    layer = SwitchableWhitening(32, sw_type=2)
    layer.load_state_dict(make_layer(2, c_all=32, num_pergroup=16).float().state_dict())


# ---------------------------------------------------------------- toolchain
@pytest.mark.parametrize('training', [True, False])
def test_compile_equals_eager_without_graph_breaks(training):
    torch._dynamo.reset()
    layer = make_layer(5, momentum=0.2).float().train(training)
    x = data((2, 8, 4, 4)).float()
    eager = make_layer(5, momentum=0.2).float().train(training)
    explanation = torch._dynamo.explain(layer)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(layer)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    yc, ye = compiled(xc), eager(xe)
    assert_close(yc, ye, rtol=1e-4, atol=1e-4)
    yc.square().sum().backward()
    ye.square().sum().backward()
    assert_close(xc.grad, xe.grad, rtol=1e-3, atol=1e-3)
    assert_close(layer.sw_mean_weight.grad, eager.sw_mean_weight.grad, rtol=1e-3, atol=1e-3)
    assert_close(layer.running_cov, eager.running_cov, rtol=1e-5, atol=1e-6)


def test_export_and_onnx_eval_match_onnxruntime(tmp_path):
    pytest.importorskip('onnxscript')
    ort = pytest.importorskip('onnxruntime')
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1),
                          make_layer(5, c_all=16, num_pergroup=8).float()).eval()
    model[1](data((4, 16, 5, 5)).float())  # nothing: eval mode keeps running statistics
    x = data((2, 3, 6, 6)).float()
    expected = model(x)
    exported = torch.export.export(model, (x,))
    assert_close(exported.module()(x), expected)
    path = tmp_path / 'sw.onnx'
    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)


def test_autocast_bf16_statistics_in_float32():
    layer = make_layer(2).float()
    ref = make_layer(2).float()
    x = data((2, 8, 4, 4)).to(torch.bfloat16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = ref(x.float())  # the same bf16 values, float32 arithmetic
    assert_close(y.float(), expected, rtol=1e-2, atol=2e-2)
    assert_close(layer.running_cov, ref.running_cov)  # float32 statistics, equal
    assert layer.running_cov.dtype == torch.float32
    # a bf16 layer without autocast computes in float32 too, and returns bf16
    half = make_layer(2).to(torch.bfloat16)
    y = half(x)
    assert y.dtype == torch.bfloat16 and half.running_cov.dtype == torch.bfloat16
    expected = make_layer(2).to(torch.bfloat16).float()(x.float())
    assert_close(y.float(), expected, rtol=1e-2, atol=2e-2)


def test_meta_device_and_factory_kwargs():
    layer = SwitchableWhitening(32, device='meta', sw_type=3)
    assert all(t.is_meta for t in layer.state_dict().values())
    y = layer(torch.empty(2, 32, 4, 4, device='meta'))
    assert y.is_meta and y.shape == (2, 32, 4, 4)
    layer = SwitchableWhitening(32, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in layer.state_dict().values())
    assert torch.equal(layer.running_cov[1], torch.eye(16, dtype=torch.float64))


# --------------------------------------------------------------- norm_eval
class _Owner(nn.Module):
    def __init__(self, norm_eval_flag):
        super().__init__()
        self.norm_eval = norm_eval_flag
        self.sw = SwitchableWhitening(8, num_pergroup=4)


def test_norm_eval_keeps_sw_in_eval_with_frozen_logits():
    assert norm_eval.is_enabled()
    owner = _Owner(True)
    owner.train()
    assert not owner.sw.training
    assert not owner.sw.sw_mean_weight.requires_grad
    assert not owner.sw.sw_var_weight.requires_grad
    assert owner.sw.weight.requires_grad
    free = _Owner(False)
    free.train()
    assert free.sw.training and free.sw.sw_mean_weight.requires_grad


# -------------------------------------------------------------- deployment
@pytest.mark.parametrize('sw_type,branch', [(1, 'BW'), (5, 'BW'), (5, 'BN')])
def test_grouped_conv_equals_eval_layer(sw_type, branch):
    layer = make_layer(sw_type, c_all=8, num_pergroup=4, momentum=0.5)
    if sw_type == 5:  # BW and BN mixed, instance branches exactly 0
        with torch.no_grad():
            for p in (layer.sw_mean_weight, layer.sw_var_weight):
                p[1] = p[3] = p[4] = NEG
                p[layer.branches.index(branch)] += 1.0
    layer(data((5, 8, 4, 4)))
    layer.eval()
    conv = to_grouped_conv(layer)
    assert conv.groups == 2 and conv.weight.shape == (8, 4, 1, 1)
    x = data((2, 8, 3, 3), seed=4)
    assert_close(conv(x), layer(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('bias', [False, True])
def test_fold_into_preceding_conv(bias):
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=bias).double()
    layer = make_layer(1, c_all=8, num_pergroup=4, momentum=0.5)
    layer(conv(data((4, 3, 6, 6))).detach())
    layer.eval()
    x = data((2, 3, 7, 7), seed=6)
    assert_close(fold_into_conv(conv, layer)(x), layer(conv(x)), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match='groups=1'):
        fold_into_conv(nn.Conv2d(8, 8, 1, groups=2).double(), layer)


def test_grouped_conv_refuses_sample_dependent_layers():
    layer = SwitchableWhitening(8, num_pergroup=4, sw_type=2)
    with pytest.raises(ValueError, match=r"depends on the sample.*\['BW', 'IW'\]"):
        fixed_affine(layer)
    with pytest.raises(TypeError, match='expected a SwitchableWhitening'):
        fixed_affine(nn.BatchNorm2d(8))


# ------------------------------------------------------------------ SyncSW
SYNC_PARAMS = ('weight', 'bias', 'sw_mean_weight', 'sw_var_weight')
SYNC_BUFFERS = ('running_mean', 'running_cov')


def _union(batches, seed=1):
    x = data((sum(batches), 8, 3, 4), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    return x, torch.randn(x.shape, generator=gen, dtype=torch.float64)


def _sync_rank(rank, world_size, batches, sw_type):
    layer = make_layer(sw_type, cls=SyncSwitchableWhitening, momentum=0.3)
    return rank_slice_step(layer, *_union(batches), batches, rank, SYNC_PARAMS, SYNC_BUFFERS)


@pytest.mark.parametrize('batches,sw_type', [((3, 5), 2), ((0, 4), 5), ((4, 0), 3)])
def test_sync_sw_equals_sw_on_union_batch(tmp_path, batches, sw_type):
    results = run_ranks(_sync_rank, tmp_path, batches, sw_type)
    assert_equals_union_batch(results, make_layer(sw_type, momentum=0.3), *_union(batches),
                              SYNC_PARAMS, SYNC_BUFFERS)


def test_sync_sw_outside_a_distributed_run_is_sw():
    x = data((3, 8, 3, 3))
    a, b = make_layer(3, cls=SyncSwitchableWhitening), make_layer(3)
    assert_close(a(x), b(x), rtol=0, atol=0)
    assert math.isclose(a.momentum, b.momentum)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(a.float())(x.float())
    assert explanation.graph_break_count == 0, explanation.break_reasons
