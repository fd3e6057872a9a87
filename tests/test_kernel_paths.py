"""The compiled CPU kernel and the pure-torch path compute the same gradients."""
import os

import pytest
import torch
from torch.testing import assert_close

from sn_mm.ops import SwitchableNorm, functional

BUILT_WITHOUT_OPS = os.getenv('SN_MM_WITH_OPS', '1') == '0'


@pytest.mark.skipif(BUILT_WITHOUT_OPS, reason='installed with SN_MM_WITH_OPS=0')
def test_compiled_kernel_is_built():
    assert functional.compiled_kernel is not None, 'sn_mm._ext missing: reinstall (make install)'


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
