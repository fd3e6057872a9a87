"""The compiled CPU kernels and the pure-torch path compute the same results."""
import os
import sys

import pytest
import torch
from torch.testing import assert_close

from sn_mm.ops import SwitchableNorm, functional

BUILT_WITHOUT_OPS = os.getenv('SN_MM_WITH_OPS', '1') == '0'


@pytest.mark.skipif(BUILT_WITHOUT_OPS, reason='installed with SN_MM_WITH_OPS=0')
def test_compiled_kernel_is_built():
    assert functional.compiled_kernel is not None, 'sn_mm._ext missing: reinstall (make install)'


@pytest.mark.skipif(functional.compiled_kernel is None, reason='compiled kernel not built')
@pytest.mark.skipif(not (torch.backends.openmp.is_available() and sys.platform.startswith('linux')),
                    reason='the extension is built with OpenMP on Linux only')
def test_compiled_kernel_runs_parallel():
    # Built without -fopenmp, at::parallel_for in the extension silently runs on one thread.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert functional.compiled_kernel.parallel_threads() == 2
    finally:
        torch.set_num_threads(threads)
    # The extension links libgomp.so.1 by soname, so it must reuse torch's copy rather
    # than load the system's as a second runtime (vendored copies with hashed names,
    # e.g. scikit-learn's, are separate by design).
    gomp = {line.split()[-1] for line in open('/proc/self/maps')
            if line.rstrip().endswith('/libgomp.so.1')}
    assert len(gomp) <= 1, f'two libgomp.so.1 loaded: {sorted(gomp)}'


@pytest.mark.skipif(functional.compiled_kernel is None, reason='compiled kernel not built')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_fused_input_grad_matches_formula(dtype):
    gen = torch.Generator().manual_seed(0)
    g, x = (torch.randn(12, 37, generator=gen, dtype=dtype) for _ in range(2))
    a, k, c = (torch.randn(12, generator=gen, dtype=dtype) for _ in range(3))
    out = functional.compiled_kernel.fused_input_grad(g, x, a, k, c)
    assert_close(out, a[:, None] * g + k[:, None] * x + c[:, None])
    with pytest.raises(RuntimeError, match='must have R = 12'):
        functional.compiled_kernel.fused_input_grad(g, x, a[:5], k, c)


@pytest.mark.skipif(functional.compiled_kernel is None, reason='compiled kernel not built')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('length', [1, 7, 2048, 2049, 54400])
def test_instance_moments_kernel_matches_float64_reference(dtype, length):
    gen = torch.Generator().manual_seed(length)
    # A large common offset: a one-pass E[x^2] - E[x]^2 would lose every digit here.
    x = torch.randn(6, length, generator=gen, dtype=torch.float64) * 0.01 + 1000.0
    mean, var = functional.compiled_kernel.instance_moments(x.to(dtype))
    ref_var, ref_mean = torch.var_mean(x.to(dtype).double(), -1, correction=0)
    assert mean.dtype == var.dtype == dtype
    assert_close(mean.double(), ref_mean, rtol=1e-7 if dtype == torch.float32 else 1e-14,
                 atol=0)
    assert_close(var.double(), ref_var, rtol=1e-5 if dtype == torch.float32 else 1e-10,
                 atol=1e-12)
    assert (var >= 0).all()


@pytest.mark.skipif(functional.compiled_kernel is None, reason='compiled kernel not built')
def test_instance_moments_kernel_rejects_bad_input():
    with pytest.raises(RuntimeError, match=r'must be \(R, L\) with L > 0'):
        functional.compiled_kernel.instance_moments(torch.randn(2, 3, 4))
    with pytest.raises(RuntimeError, match=r'must be \(R, L\) with L > 0'):
        functional.compiled_kernel.instance_moments(torch.randn(2, 0))


def test_missing_kernel_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(functional, 'compiled_kernel', None)
    monkeypatch.setattr(functional, 'USE_COMPILED_KERNEL', True)
    monkeypatch.setattr(functional, '_warned_missing_kernel', False)
    x = torch.randn(2, 4, 5, 5)
    with pytest.warns(UserWarning, match='without its compiled CPU kernels'):
        y = SwitchableNorm(4)(x)
    monkeypatch.setattr(functional, 'USE_COMPILED_KERNEL', False)
    assert_close(y, SwitchableNorm(4)(x))


@pytest.mark.parametrize('use_kernel', [True, False])
def test_gradcheck_both_paths(monkeypatch, use_kernel):
    monkeypatch.setattr(functional, 'USE_COMPILED_KERNEL', use_kernel)
    layer = SwitchableNorm(3).double()
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -1.0, 0.5]))
        layer.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()))


def test_paths_agree_in_float32(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(4, 16, 9, 11) * 3 + 1
    grad_out = torch.randn_like(x)
    results = []
    for use_kernel in (True, False):
        monkeypatch.setattr(functional, 'USE_COMPILED_KERNEL', use_kernel)
        layer = SwitchableNorm(16)
        xi = x.clone().requires_grad_()
        layer(xi).backward(grad_out)
        results.append([xi.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*results):
        assert_close(a, b, rtol=1e-5, atol=1e-5)
