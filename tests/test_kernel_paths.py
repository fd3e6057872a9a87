"""The C++ CPU kernel of the SN ops and the torch reference compute the same results."""
import os
import sys

import pytest
import torch
from torch.testing import assert_close

from sn_mm.ops import SwitchableNorm, functional, pool as pool_table, reference
from sn_mm.ops.reference import BN_BATCH, BN_NONE, BN_RUNNING

BUILT_WITHOUT_OPS = os.getenv('SN_MM_WITH_OPS', '1') == '0'
ext = functional.extension
needs_ext = pytest.mark.skipif(ext is None, reason='compiled kernel not built')
ALL_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
POOLS = [('IN', 'LN', 'BN'), ('IN', 'LN'), ('IN', 'LN', 'BN', 'GN'), ('GN', 'IN'),
         ('BN', 'LN')]


def op(x, weight, bias, a, b, running_mean=None, running_var=None, pool=('IN', 'LN', 'BN'),
       num_groups=1, bn_mode=BN_BATCH, eps=1e-5, unbiased=True, softmax=False):
    return torch.ops.sn_mm.switchable_norm(x, weight, bias, a, b, running_mean, running_var,
                                           pool_table.codes(pool), num_groups, bn_mode, eps,
                                           unbiased, 0, softmax)


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


def _params(c, k, dtype=torch.float64, per_sample=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight, bias = (torch.randn(c, generator=gen, dtype=dtype) for _ in range(2))
    shape = (per_sample, k) if per_sample else (k,)
    a, b = (torch.softmax(torch.randn(shape, generator=gen, dtype=dtype), -1) for _ in range(2))
    running_mean = torch.randn(c, generator=gen, dtype=dtype)
    running_var = torch.rand(c, generator=gen, dtype=dtype) + 0.5
    return weight, bias, a, b, running_mean, running_var


@needs_ext
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('length', [1, 4, 7, 15, 16, 2048, 2049, 54400])
@pytest.mark.parametrize('rows', [6, 21])
def test_instance_moments_kernel_matches_float64_reference(dtype, length, rows):
    # rows < 16 values are reduced 8 rows at a time (21 rows: two groups and a tail of 5)
    gen = torch.Generator().manual_seed(length)
    # A large common offset: a one-pass E[x^2] - E[x]^2 would lose every digit here.
    offset, spread = (1000.0, 0.01) if dtype in (torch.float32, torch.float64) else (30.0, 1.0)
    x = (torch.randn(rows, 1, length, generator=gen, dtype=torch.float64) * spread
         + offset).to(dtype)
    weight, bias, a, b, _, _ = _params(1, 2)
    _, mean, var, _, _, _ = op(x, weight, bias, a, b, pool=('IN', 'LN'), bn_mode=BN_NONE)
    # shifted by a sample of each row: torch.var_mean's own float64 mean is off by ~1e-14
    # relative at (21, 54400) around 1000, more than the tolerance below
    shift = x.double()[..., :1]
    ref_var, ref_mean = torch.var_mean(x.double() - shift, -1, correction=0)
    ref_mean = ref_mean + shift[..., 0]
    acc = reference.accumulation_dtype(dtype)
    assert mean.dtype == var.dtype == acc  # float32 statistics of a bf16/fp16 input
    assert_close(mean.double(), ref_mean, rtol=1e-7 if dtype != torch.float64 else 1e-14,
                 atol=0)
    assert_close(var.double(), ref_var, rtol=1e-5 if dtype != torch.float64 else 1e-10,
                 atol=1e-12)
    assert (var >= 0).all()


@needs_ext
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('head', ['like the rest', 'offset', 'outlier', 'constant row'])
def test_reduced_precision_moments_keep_two_pass_accuracy(dtype, head):
    """bf16/fp16 rows take one pass, shifted by the mean of their first 64 values, unless
    that shift is far from the row's mean; then the exact two passes. Either way the
    moments match float64 as the two-pass kernel does."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, 1, 3000, generator=gen, dtype=torch.float64) + 20
    if head == 'offset':  # the first 64 values unlike the rest: the two passes run
        x[..., :64] += 8
    elif head == 'outlier':
        x[..., 0] = 2000
    elif head == 'constant row':
        x[...] = 3.0
    x = x.to(dtype)
    weight, bias, a, b, _, _ = _params(1, 2)
    _, mean, var, _, _, _ = op(x, weight, bias, a, b, pool=('IN', 'LN'), bn_mode=BN_NONE)
    ref_var, ref_mean = torch.var_mean(x.double(), -1, correction=0)
    # an outlier of 2000 in a row around 20 costs the two-pass mean ~1e-6 relative
    assert_close(mean.double(), ref_mean, rtol=2e-6, atol=1e-7)
    assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-9)
    assert (var >= 0).all()


@needs_ext
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('length', [1, 3, 15, 16, 49])
@pytest.mark.parametrize('rows', [5, 8, 21])
def test_grad_sums_kernel_matches_float64_reference(dtype, length, rows):
    """Backward's per-row sums (sum g (x - mean), sum g), also on the 8-rows-at-once path
    of rows shorter than 16 values."""
    gen = torch.Generator().manual_seed(rows * 100 + length)
    x = (torch.randn(1, rows, length, generator=gen, dtype=torch.float64) + 3).to(dtype)
    g = torch.randn(1, rows, length, generator=gen, dtype=torch.float64).to(dtype)
    mean = x.double().mean(-1)
    acc = reference.accumulation_dtype(dtype)
    dot, total = ext.channel_grad_sums(g, x, mean.to(acc))
    ref_dot = (g.double() * (x.double() - mean.to(acc).double()[..., None])).sum(-1)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    assert_close(dot.double(), ref_dot, **tol)
    assert_close(total.double(), g.double().sum(-1), **tol)


def _mode_for(pool, training):
    if 'BN' not in pool:
        return BN_NONE
    return BN_BATCH if training else BN_RUNNING


@needs_ext
@pytest.mark.parametrize('pool', POOLS)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('per_sample', [False, True])
@pytest.mark.parametrize('shape', [(1, 4, 1, 1), (3, 8, 5, 3), (16, 12, 7, 7)])
def test_op_matches_reference_float64(pool, training, per_sample, shape):
    """Forward, batch moments and every gradient, the C++ kernel against the reference."""
    n, c = shape[0], shape[1]
    if training and 'BN' in pool and n * shape[2] * shape[3] <= 1:
        pytest.skip('no batch statistics of a single value')
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    weight, bias, a, b, rm, rv = _params(c, len(pool), per_sample=n if per_sample else 0)
    leaves = [t.requires_grad_() for t in (weight, bias, a, b)]
    mode = _mode_for(pool, training)
    running = (rm, rv) if mode == BN_RUNNING else (None, None)
    groups = 4 if 'GN' in pool else 1
    got = op(x, *leaves, *running, pool=pool, num_groups=groups, bn_mode=mode)
    want = reference.switchable_norm(x, *leaves, *running, pool, groups, mode, 1e-5, True)
    for g, w in zip(got, want):
        assert_close(g, w, rtol=1e-10, atol=1e-12)
    grad_y = torch.randn(shape, generator=gen, dtype=torch.float64)
    inputs = [x] + leaves
    g_got = torch.autograd.grad(got[0], inputs, grad_y)
    g_want = torch.autograd.grad(want[0], inputs, grad_y)
    for name, g, w in zip(('x', 'weight', 'bias', 'a', 'b'), g_got, g_want):
        assert_close(g, w, rtol=1e-9, atol=1e-11, msg=lambda m: f'{name}: {m}')


@needs_ext
def test_op_rejects_bad_input():
    x = torch.randn(2, 6, 3, 3)
    weight, bias, a, b, rm, rv = _params(6, 3, dtype=torch.float32)
    with pytest.raises(RuntimeError, match='bn_mode must be 0'):
        op(x, weight, bias, a, b, bn_mode=7)
    with pytest.raises(RuntimeError, match=r'needs importance weights of shape \(4,\)'):
        op(x, weight, bias, a, b, pool=('IN', 'LN', 'BN', 'GN'), num_groups=2)
    with pytest.raises(RuntimeError, match='weight and bias need 6'):
        op(x, weight[:2], bias, a, b)
    with pytest.raises(RuntimeError, match='num_groups 4 must divide the 6 channels'):
        op(x, weight, bias, a[:2], b[:2], pool=('IN', 'GN'), num_groups=4, bn_mode=BN_NONE)
    with pytest.raises(RuntimeError, match='needs a BN branch'):
        op(x, weight, bias, a[:2], b[:2], pool=('IN', 'LN'), bn_mode=BN_BATCH)
    with pytest.raises(RuntimeError, match='unknown normalizer code 9'):
        torch.ops.sn_mm.switchable_norm(x, weight, bias, a, b, None, None, [0, 1, 9], 1,
                                        BN_NONE, 1e-5, True, 0, False)


def test_missing_extension_warns_once_and_uses_the_reference(monkeypatch):
    x = torch.randn(2, 4, 5, 5)
    y_op = SwitchableNorm(4)(x)
    monkeypatch.setattr(functional, 'extension', None)
    monkeypatch.setattr(functional, '_warned_reference', False)
    with pytest.warns(UserWarning, match='without its compiled ops'):
        y = SwitchableNorm(4)(x)
    assert_close(y, y_op)


@pytest.mark.parametrize('use_kernel', [True, False])
@pytest.mark.parametrize('using_bn', [True, False])
@pytest.mark.parametrize('training', [True, False])
def test_gradcheck_both_paths(monkeypatch, use_kernel, using_bn, training):
    if not use_kernel:
        monkeypatch.setattr(functional, 'extension', None)
        monkeypatch.setattr(functional, '_warned_reference', True)
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
        if not use_kernel:
            monkeypatch.setattr(functional, 'extension', None)
            monkeypatch.setattr(functional, '_warned_reference', True)
        layer = SwitchableNorm(16)
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(grad_out)
        results.append([y, xi.grad] + [p.grad for p in layer.parameters()])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for a, b in zip(*results):
        assert_close(a, b, **tol)


@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('shape', [(2, 70, 9, 11), (1, 130, 4, 4), (3, 5, 1, 1), (2, 6, 3, 4, 5)])
def test_channels_last_keeps_its_layout_and_values(dtype, shape):
    """SN keeps a channels_last input's memory format, as BatchNorm2d does, with equal results."""
    channels_last = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    gen = torch.Generator().manual_seed(len(shape))
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).to(dtype)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    layer = SwitchableNorm(shape[1]).to(torch.float64 if dtype == torch.float64 else torch.float32)
    results = []
    for fmt in (torch.contiguous_format, channels_last):
        xi = x.clone().contiguous(memory_format=fmt).requires_grad_()
        y = layer(xi)
        y.backward(grad.contiguous(memory_format=fmt))
        assert y.is_contiguous(memory_format=fmt) and xi.grad.is_contiguous(memory_format=fmt)
        results.append([y, xi.grad] + [p.grad.clone() for p in layer.parameters()])
        layer.zero_grad()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(*results):
        assert_close(a.float() if dtype in (torch.bfloat16, torch.float16) else a,
                     b.float() if dtype in (torch.bfloat16, torch.float16) else b,
                     **(tol if dtype not in (torch.bfloat16, torch.float16)
                        else dict(rtol=1e-2, atol=1e-2)))


@needs_ext
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
def test_channels_last_moments_do_not_cancel(dtype):
    """The one-pass channels_last moments (shifted by a sample) keep every digit at an offset."""
    offset, spread = (1000.0, 0.01) if dtype != torch.bfloat16 else (30.0, 1.0)
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 70, 33, 41, generator=gen, dtype=torch.float64) * spread + offset)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias, a, b, _, _ = _params(70, 2)
    _, mean, var, _, _, _ = op(x, weight, bias, a, b, pool=('IN', 'LN'), bn_mode=BN_NONE)
    ref_var, ref_mean = torch.var_mean(x.double().flatten(2), -1, correction=0)
    assert_close(mean.double(), ref_mean, rtol=1e-7 if dtype != torch.float64 else 1e-14, atol=0)
    assert_close(var.double(), ref_var, rtol=1e-5 if dtype != torch.float64 else 1e-10,
                 atol=1e-12)


@needs_ext
def test_eager_fast_call_equals_torch_ops_and_yields_to_torch_function():
    """The unboxed entry (``_ext.switchable_norm``) is the op itself; an argument or mode
    that overrides ``__torch_function__`` still sees ``torch.ops.sn_mm.switchable_norm``."""
    from torch.overrides import TorchFunctionMode
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 3, requires_grad=True)
    weight, bias, a, b, rm, rv = _params(6, 3, dtype=torch.float32)
    args = (x, weight, bias, a, b, rm, rv, pool_table.codes(('IN', 'LN', 'BN')), 1, BN_BATCH,
            1e-5, True, 0, False)
    fast = ext.switchable_norm(*args)
    boxed = torch.ops.sn_mm.switchable_norm.default(*args)
    for f, o in zip(fast, boxed):
        assert torch.equal(f, o)
    fast[0].sum().backward()  # the fast call records the same autograd node
    assert x.grad is not None and x.grad.shape == x.shape

    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Record():
        SwitchableNorm(6)(x.detach())
    assert torch.ops.sn_mm.switchable_norm.default in seen
