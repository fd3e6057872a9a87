"""The Triton SN kernels (sn_mm.ops.triton_kernels) under Triton's CPU interpreter.

Every case runs the kernels that will run on a GPU, value by value, on CPU tensors
(``TRITON_INTERPRET=1``, set here before Triton is imported) and compares the forward,
every gradient and the BN moments against an independent float64 autograd reference of
the SN math written below. Skipped when Triton is not installed.
"""
import math
import os

os.environ['TRITON_INTERPRET'] = '1'  # before triton (and the kernels) are imported

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip('triton')
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from sn_mm.ops import triton_kernels as tk  # noqa: E402

if not tk.INTERPRET:  # pragma: no cover - triton was imported before this module
    pytest.skip('sn_mm.ops.triton_kernels was imported without TRITON_INTERPRET=1',
                allow_module_level=True)

POOL3 = ('IN', 'LN', 'BN')
POOL2 = ('IN', 'LN')
POOL4 = ('IN', 'LN', 'BN', 'GN')


# ------------------------------------------------------------------ the reference
def _pooled(mu, u, dim, groups=None):
    """Moments of the sets of a branch: mean over ``dim`` (GN: within groups of channels)."""
    if groups is not None:
        n, c = mu.shape
        mg, ug = mu.reshape(n, groups, c // groups), u.reshape(n, groups, c // groups)
        m = mg.mean(2, keepdim=True)
        v = ug.mean(2, keepdim=True) + (mg - m).square().mean(2, keepdim=True)
        return m.expand_as(mg).reshape(n, c), v.expand_as(mg).reshape(n, c)
    m = mu.mean(dim, keepdim=True)
    v = u.mean(dim, keepdim=True) + (mu - m).square().mean(dim, keepdim=True)
    return m.expand_as(mu), v.expand_as(mu)


def reference(x, weight, bias, a, b, bn_mean, bn_var, pool, groups, bn_mode, eps, unbiased,
              softmax):
    """float64 SN by plain autograd over the formula. Returns (y, mean_in, var_in, bn_m, bn_v)."""
    n, c = x.shape[:2]
    length = math.prod(x.shape[2:])
    x3 = x.reshape(n, c, length)
    mean_in = x3.mean(-1)
    var_in = (x3 - mean_in.unsqueeze(-1)).square().mean(-1)
    u = var_in * (length / (length - 1) if unbiased and length > 1 else 1.0)
    if softmax:
        a, b = torch.softmax(a, -1), torch.softmax(b, -1)
    a, b = a.expand(n, len(pool)), b.expand(n, len(pool))
    mean = torch.zeros_like(mean_in)
    var = torch.zeros_like(mean_in)
    bn_m = bn_v = None
    for k, name in enumerate(pool):
        if name == 'IN':
            mk, vk = mean_in, u
        elif name == 'LN':
            mk, vk = _pooled(mean_in, u, 1)
        elif name == 'GN':
            mk, vk = _pooled(mean_in, u, 1, groups)
        elif bn_mode == 'batch':
            mk, vk = _pooled(mean_in, u, 0)
            bn_m, bn_v = mk[0], vk[0]
        else:
            mk, vk = bn_mean.expand_as(mean_in), bn_var.expand_as(mean_in)
            bn_m, bn_v = bn_mean, bn_var
        mean = mean + a[:, k:k + 1] * mk
        var = var + b[:, k:k + 1] * vk
    scale = weight * torch.rsqrt(var + eps)
    y = (x3 - mean.unsqueeze(-1)) * scale.unsqueeze(-1) + bias.unsqueeze(-1)
    return y.reshape(x.shape), mean_in, var_in, bn_m, bn_v


# ------------------------------------------------------------------ helpers
def make_case(shape, pool, bn_mode, per_sample, dtype, seed=0, softmax=True):
    """``x``, parameters (logits with ``softmax``, else positive weights), BN constants, ``grad_y``."""
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    k = len(pool)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.7).to(dtype)
    # per-row offsets, so the LN/BN branches pool rows with different means
    x = (x.double() + torch.randn(n, c, *([1] * (len(shape) - 2)), generator=g,
                                  dtype=torch.float64)).to(dtype)
    params = dict(
        weight=1 + 0.3 * torch.randn(c, generator=g, dtype=torch.float64),
        bias=0.2 * torch.randn(c, generator=g, dtype=torch.float64),
        a=torch.randn((n, k) if per_sample else (k,), generator=g, dtype=torch.float64),
        b=torch.randn((n, k) if per_sample else (k,), generator=g, dtype=torch.float64),
    )
    if not softmax:  # the op takes the weights as they are: keep the variance positive
        params['a'] = params['a'].abs() / k
        params['b'] = params['b'].abs() / k + 0.05
    given = None
    if bn_mode == 'given':
        given = (torch.randn(c, generator=g, dtype=torch.float64),
                 0.5 + torch.rand(c, generator=g, dtype=torch.float64))
    grad_y = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x, params, given, grad_y


def run_reference(x, params, given, grad_y, pool, groups, bn_mode, eps, unbiased, softmax):
    x64 = x.double().requires_grad_()
    p64 = {k: v.double().clone().requires_grad_() for k, v in params.items()}
    bn_mean, bn_var = given if given is not None else (None, None)
    y, mean_in, var_in, bn_m, bn_v = reference(
        x64, p64['weight'], p64['bias'], p64['a'], p64['b'], bn_mean, bn_var, pool, groups,
        bn_mode, eps, unbiased, softmax)
    grads = torch.autograd.grad(y, [x64, p64['weight'], p64['bias'], p64['a'], p64['b']],
                                grad_y.double(), allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr
             for gr, t in zip(grads, [x64] + list(p64.values()))]
    detach = lambda t: None if t is None else t.detach()  # noqa: E731
    return y.detach(), mean_in.detach(), var_in.detach(), detach(bn_m), detach(bn_v), grads


def run_triton(x, params, given, grad_y, pool, groups, bn_mode, eps, unbiased, softmax,
               param_dtype=torch.float32):
    p = {k: v.to(param_dtype) for k, v in params.items()}
    bn_mean, bn_var = ((t.float() for t in given) if given is not None else (None, None))
    out = tk.forward(x, p['weight'], p['bias'], p['a'], p['b'], bn_mean, bn_var, pool, groups,
                     bn_mode, eps, unbiased, softmax)
    y, mean_in, var_in, bn_m, bn_v, count = out
    grads = tk.backward(grad_y, x, mean_in, var_in, p['weight'], p['a'], p['b'], bn_m, bn_v,
                        count, pool, groups, bn_mode, eps, unbiased, softmax, True)
    return out, grads


TOL = {torch.float32: (2e-4, 2e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (2e-2, 2e-2)}


def assert_close(got, want, dtype, name, scale=1.0):
    rtol, atol = TOL[dtype]
    want = want.to(torch.float64)
    got = got.to(torch.float64)
    atol = atol * max(scale, float(want.abs().max()) if want.numel() else 1.0)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f'{name}: {m}')


def check_case(shape, pool=POOL3, bn_mode='batch', per_sample=False, dtype=torch.float32,
               softmax=True, unbiased=True, groups=1, channels_last=False, eps=1e-5, seed=0):
    x, params, given, grad_y = make_case(shape, pool, bn_mode, per_sample, dtype, seed, softmax)
    if channels_last:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
        grad_y = grad_y.contiguous(memory_format=fmt)
    ref = run_reference(x, params, given, grad_y, pool, groups, bn_mode, eps, unbiased, softmax)
    (y, mean_in, var_in, bn_m, bn_v, count), grads = run_triton(
        x, params, given, grad_y, pool, groups, bn_mode, eps, unbiased, softmax)
    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == x.stride()
    assert grads[0].dtype == x.dtype and grads[0].stride() == x.stride()
    assert_close(y, ref[0], dtype, 'y')
    assert_close(mean_in, ref[1], dtype, 'mean_in')
    assert_close(var_in, ref[2], dtype, 'var_in')
    if bn_mode == 'none':
        assert bn_m.shape == (0,) and bn_v.shape == (0,)
    else:
        assert_close(bn_m, ref[3], dtype, 'bn_mean')
        assert_close(bn_v, ref[4], dtype, 'bn_var')
    n, length = shape[0], math.prod(shape[2:])
    want_count = [float(n), float(n * length)] if bn_mode == 'batch' else [0.0, 0.0]
    assert count.tolist() == want_count
    for name, got, want in zip(('grad_x', 'grad_weight', 'grad_bias', 'grad_a', 'grad_b'),
                               grads, ref[5]):
        assert got.shape == want.shape, name
        assert_close(got, want, dtype, name)
