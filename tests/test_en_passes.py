"""EN's eager path on CPU runs SN's compiled passes (``sn_mm._ext.channel_*``); the same
layer without them runs torch ops. Both are the same math: they agree to rounding, in
every dtype and layout, forward, input and parameter gradients and running statistics."""
import pytest
import torch

from sn_mm.ops import exemplar_norm as en_mod
from sn_mm.ops import functional
from sn_mm.ops.exemplar_norm import ExemplarNorm

pytestmark = pytest.mark.skipif(
    functional.extension is None or not hasattr(functional.extension, 'channel_moments'),
    reason='needs the compiled extension with the channel passes')

# float32: a 1x1 map has v_IN = 0, so its IN term amplifies the rounding of the mean by
# eps^-1/2 ~ 316; 1e-4 covers that, and is still far below any wrong formula
TOL = {torch.float64: 1e-12, torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _run(x, layer, use_passes, monkeypatch):
    if not use_passes:
        monkeypatch.setattr(en_mod, '_cpu_passes', lambda x: None)
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    for p in layer.parameters():
        p.grad = None
    monkeypatch.undo()
    return y.detach(), x.grad.detach(), grads


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('mixture', ['outputs', 'statistics'])
@pytest.mark.parametrize('shape', [(3, 8, 5, 7), (2, 6, 1, 1), (1, 4, 7, 7)])
def test_compiled_passes_equal_torch_ops(dtype, layout, mixture, shape, monkeypatch):
    if dtype == torch.bfloat16 and shape[2:] == (1, 1):
        pytest.skip('bf16 1x1 maps: the torch-ops path rounds c = dmean/L - mean k to bf16 '
                    '(cancellation); the compiled path is checked against float64 below')
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).to(dtype)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    layer = ExemplarNorm(shape[1], mixture=mixture).double()
    with torch.no_grad():  # away from the uniform start, so every gradient is exercised
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    if dtype != torch.float64:
        layer = layer.float()
    results, stats = [], []
    for use_passes in (True, False):
        layer.running_mean.zero_()
        layer.running_var.fill_(1)
        results.append(_run(x, layer, use_passes, monkeypatch))
        stats.append((layer.running_mean.clone(), layer.running_var.clone()))
    (y1, gx1, gp1), (y0, gx0, gp0) = results
    tol = TOL[dtype]
    if layout == 'channels_last' and x.dim() == 4 and not x.is_contiguous():
        assert y1.is_contiguous(memory_format=torch.channels_last)
        assert gx1.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y1.double(), y0.double(), rtol=tol, atol=tol)
    torch.testing.assert_close(gx1.double(), gx0.double(), rtol=tol, atol=tol * 10)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * 10)
    for a, b in zip(stats[0], stats[1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_passes_check_their_coefficients():
    ext = functional.extension
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match='channel_affine: scale must be a contiguous tensor of 6'):
        ext.channel_affine(x, torch.ones(5), torch.zeros(6))
    with pytest.raises(RuntimeError, match='non-empty'):
        ext.channel_moments(torch.empty(0, 3, 4, 4))


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_bf16_1x1_maps_close_to_float64(layout):
    """bf16 in, float32 statistics and coefficients: output and input gradient within
    bf16 rounding of the float64 layer on the same (bf16-representable) values."""
    torch.manual_seed(0)
    x = (torch.randn(2, 6, 1, 1) * 3 + 1).to(torch.bfloat16)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    layer = ExemplarNorm(6).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    outs = []
    for dtype in (torch.float64, torch.float32):
        twin = ExemplarNorm(6).to(dtype)
        twin.load_state_dict(layer.state_dict())
        xi = x.to(dtype) if dtype == torch.float64 else x
        xi = xi.detach().clone().requires_grad_()
        y = twin(xi)
        (y.double() * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view(y.shape)
         ).sum().backward()
        outs.append((y.double(), xi.grad.double()))
    (y64, g64), (y16, g16) = outs
    scale = y64.abs().max().item()
    torch.testing.assert_close(y16, y64, rtol=2e-2, atol=2e-2 * scale)
    torch.testing.assert_close(g16, g64, rtol=2e-2, atol=2e-2 * g64.abs().max().item())


@pytest.mark.parametrize('mixture', ['outputs', 'statistics'])
@pytest.mark.parametrize('bn_kind', ['none', 'running', 'batch'])
@pytest.mark.parametrize('n,c,span', [(3, 40, 16), (1, 7, 4), (4, 32, 16), (2, 5, 1)])
def test_compiled_step_equals_torch_step(mixture, bn_kind, n, c, span):
    """The C++ (N, C) step and its backward equal the torch-ops step in float64."""
    from sn_mm.ops import exemplar_step as step
    if step.EXTENSION is None:
        pytest.skip('needs the compiled extension')
    g = torch.Generator().manual_seed(n * 100 + c)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    m, u = rnd(n, c), rnd(n, c).abs() + 0.1
    k = 2 if bn_kind == 'none' else 3
    h = 1 if mixture == 'outputs' else 2
    bn = None
    if bn_kind == 'batch':
        mu_b = m.mean(0)
        bn = (mu_b, u.mean(0) + (m - mu_b).square().mean(0))
    elif bn_kind == 'running':
        bn = (rnd(c), rnd(c).abs() + 0.5)
    params = (rnd(c), rnd(c), rnd(k, 1, span), rnd(h * k, k * k) * 0.5, rnd(h * k))
    args = (m, u, bn, bn_kind == 'batch') + params + (1e-5, span, mixture)
    s1, t1, saved1 = step.step_forward(*args)
    s0, t0, saved0 = step.torch_step_forward(*args)
    assert isinstance(saved1, step.CompiledSaved)
    torch.testing.assert_close(s1, s0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t1, t0, rtol=1e-12, atol=1e-12)
    gs, gt = rnd(n, c), rnd(n, c)
    out1 = step.step_backward(gs, gt, saved1)
    out0 = step.torch_step_backward(gs, gt, saved0)
    for a, b in zip(out1[:2] + out1[2], out0[:2] + out0[2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
