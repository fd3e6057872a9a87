"""The compiled CPU kernels and the pure-torch path compute the same results."""
import os
import sys

import pytest
import torch
from torch.testing import assert_close

from sn_mm.ops import SwitchableNorm, kernels, mixing

BUILT_WITHOUT_OPS = os.getenv('SN_MM_WITH_OPS', '1') == '0'
ext = kernels.compiled_kernel
needs_ext = pytest.mark.skipif(ext is None, reason='compiled kernel not built')
ALL_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.skipif(BUILT_WITHOUT_OPS, reason='installed with SN_MM_WITH_OPS=0')
def test_compiled_kernel_is_built():
    assert ext is not None, 'sn_mm._ext missing: reinstall (make install)'


@needs_ext
@pytest.mark.skipif(not (torch.backends.openmp.is_available() and sys.platform.startswith('linux')),
                    reason='the extension is built with OpenMP on Linux only')
def test_compiled_kernel_runs_parallel():
    # Built without -fopenmp, at::parallel_for in the extension silently runs on one thread.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert ext.parallel_threads() == 2
    finally:
        torch.set_num_threads(threads)
    # The extension links libgomp.so.1 by soname, so it must reuse torch's copy rather
    # than load the system's as a second runtime (vendored copies with hashed names,
    # e.g. scikit-learn's, are separate by design).
    gomp = {line.split()[-1] for line in open('/proc/self/maps')
            if line.rstrip().endswith('/libgomp.so.1')}
    assert len(gomp) <= 1, f'two libgomp.so.1 loaded: {sorted(gomp)}'


def _acc(dtype):
    return kernels.accumulation_dtype(dtype)


@needs_ext
@pytest.mark.parametrize('dtype', ALL_DTYPES)
def test_input_grad_and_affine_match_formula(dtype):
    gen = torch.Generator().manual_seed(0)
    g, x = (torch.randn(12, 37, generator=gen).to(dtype) for _ in range(2))
    a, k, c = (torch.randn(12, generator=gen).to(_acc(dtype)) for _ in range(3))
    out = ext.input_grad(g, x, a, k, c)
    ref = a[:, None] * g.to(a.dtype) + k[:, None] * x.to(a.dtype) + c[:, None]
    assert out.dtype == dtype
    assert_close(out, ref.to(dtype))
    y = ext.affine(x, a, c)
    assert y.dtype == dtype
    assert_close(y, (a[:, None] * x.to(a.dtype) + c[:, None]).to(dtype))
    with pytest.raises(RuntimeError, match='do not split into 5 rows'):
        ext.input_grad(g, x, a[:5], k, c)
    with pytest.raises(RuntimeError, match='must be a contiguous tensor of 6 elements'):
        ext.affine(x, a[:6], c)


@needs_ext
@pytest.mark.parametrize('dtype', ALL_DTYPES)
def test_grad_sums_match_formula(dtype):
    gen = torch.Generator().manual_seed(1)
    g, x = (torch.randn(9, 2100, generator=gen).to(dtype) for _ in range(2))
    mean = torch.randn(9, generator=gen).to(_acc(dtype))
    dot, total = ext.grad_sums(g, x, mean)
    g64, x64 = g.double(), x.double()
    tol = dict(rtol=1e-5, atol=1e-4) if dtype != torch.float64 else dict(rtol=1e-12, atol=1e-10)
    assert_close(dot.double(), (g64 * (x64 - mean.double()[:, None])).sum(-1), **tol)
    assert_close(total.double(), g64.sum(-1), **tol)


@needs_ext
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('length', [1, 7, 2048, 2049, 54400])
def test_instance_moments_kernel_matches_float64_reference(dtype, length):
    gen = torch.Generator().manual_seed(length)
    # A large common offset: a one-pass E[x^2] - E[x]^2 would lose every digit here.
    offset, spread = (1000.0, 0.01) if dtype in (torch.float32, torch.float64) else (30.0, 1.0)
    x = (torch.randn(6, length, generator=gen, dtype=torch.float64) * spread + offset).to(dtype)
    mean, var = ext.instance_moments(x)
    ref_var, ref_mean = torch.var_mean(x.double(), -1, correction=0)
    assert mean.dtype == var.dtype == _acc(dtype)  # float32 statistics of a bf16/fp16 input
    assert_close(mean.double(), ref_mean, rtol=1e-7 if dtype != torch.float64 else 1e-14,
                 atol=0)
    assert_close(var.double(), ref_var, rtol=1e-5 if dtype != torch.float64 else 1e-10,
                 atol=1e-12)
    assert (var >= 0).all()


@needs_ext
def test_instance_moments_kernel_rejects_bad_input():
    with pytest.raises(RuntimeError, match=r'expected an \(R, L\) tensor'):
        ext.instance_moments(torch.randn(2, 3, 4))
    with pytest.raises(RuntimeError, match=r'rows must not be empty'):
        ext.instance_moments(torch.randn(2, 0))


def _mix_inputs(n, c, k, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mean_in = torch.randn(n, c, generator=gen, dtype=dtype)
    u = torch.rand(n, c, generator=gen, dtype=dtype) + 0.1
    weight, bias = (torch.randn(c, generator=gen, dtype=dtype) for _ in range(2))
    a, b = (torch.softmax(torch.randn(k, generator=gen, dtype=dtype), 0) for _ in range(2))
    bn_mean = torch.randn(c, generator=gen, dtype=dtype)
    bn_var = torch.rand(c, generator=gen, dtype=dtype) + 0.5
    gs, gt = (torch.randn(n, c, generator=gen, dtype=dtype) for _ in range(2))
    return mean_in, u, weight, bias, a, b, bn_mean, bn_var, gs, gt


@needs_ext
@pytest.mark.parametrize('mode', [mixing.BN_NONE, mixing.BN_GIVEN, mixing.BN_BATCH])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('shape', [(1, 1), (3, 5), (64, 33)])
def test_compiled_mixing_matches_pure_torch(mode, dtype, shape):
    k = 2 if mode == mixing.BN_NONE else 3
    mean_in, u, weight, bias, a, b, bn_mean, bn_var, gs, gt = _mix_inputs(*shape, k, dtype)
    fwd_c = ext.mix_forward(mean_in, u, weight, bias, a, b, bn_mean, bn_var, mode, 1e-5)
    fwd_t = mixing.mix_forward(mean_in, u, weight, bias, a, b, bn_mean, bn_var, mode, 1e-5)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for got, want in zip(fwd_c, fwd_t):
        assert_close(got, want, **tol)
    _, _, used_mean, used_var = fwd_t
    bwd_c = ext.mix_backward(gs, gt, mean_in, u, weight, a, b, used_mean, used_var, mode, 1e-5)
    bwd_t = mixing.mix_backward(gs, gt, mean_in, u, weight, a, b, used_mean, used_var, mode,
                                1e-5)
    for got, want in zip(bwd_c, bwd_t):
        assert_close(got, want, **tol)


@needs_ext
def test_compiled_mixing_rejects_bad_input():
    mean_in, u, weight, bias, a, b, bn_mean, bn_var, _, _ = _mix_inputs(2, 3, 3)
    with pytest.raises(RuntimeError, match='mode must be 0, 1 or 2'):
        ext.mix_forward(mean_in, u, weight, bias, a, b, bn_mean, bn_var, 7, 1e-5)
    with pytest.raises(RuntimeError, match='needs 2 importance weights'):
        ext.mix_forward(mean_in, u, weight, bias, a, b, bn_mean, bn_var, 0, 1e-5)
    with pytest.raises(RuntimeError, match='weight and bias need 3'):
        ext.mix_forward(mean_in, u, weight[:2], bias, a, b, bn_mean, bn_var, 2, 1e-5)


def test_missing_kernel_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(kernels, 'compiled_kernel', None)
    monkeypatch.setattr(kernels, 'USE_COMPILED_KERNEL', True)
    monkeypatch.setattr(kernels, '_warned_missing_kernel', False)
    x = torch.randn(2, 4, 5, 5)
    with pytest.warns(UserWarning, match='without its compiled CPU kernels'):
        y = SwitchableNorm(4)(x)
    monkeypatch.setattr(kernels, 'USE_COMPILED_KERNEL', False)
    assert_close(y, SwitchableNorm(4)(x))


@pytest.mark.parametrize('use_kernel', [True, False])
@pytest.mark.parametrize('using_bn', [True, False])
@pytest.mark.parametrize('training', [True, False])
def test_gradcheck_both_paths(monkeypatch, use_kernel, using_bn, training):
    monkeypatch.setattr(kernels, 'USE_COMPILED_KERNEL', use_kernel)
    layer = SwitchableNorm(3, using_bn=using_bn, dtype=torch.float64).train(training)
    with torch.no_grad():
        layer.mean_weight.normal_()
        layer.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_paths_agree(monkeypatch, dtype):
    torch.manual_seed(0)
    x = (torch.randn(4, 16, 9, 11) * 3 + 1).to(dtype)
    grad_out = torch.randn_like(x)
    results = []
    for use_kernel in (True, False):
        monkeypatch.setattr(kernels, 'USE_COMPILED_KERNEL', use_kernel)
        layer = SwitchableNorm(16)
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(grad_out)
        results.append([y, xi.grad] + [p.grad for p in layer.parameters()])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for a, b in zip(*results):
        assert_close(a, b, **tol)
