"""The Triton SN kernels (sn_mm.ops.triton_kernels) under Triton's CPU interpreter.

Every case runs the kernels that will run on a GPU, value by value, on CPU tensors
(``TRITON_INTERPRET=1``, set here before Triton is imported) and compares the forward,
every gradient and the BN moments against an independent float64 autograd reference of
the SN math written below. Skipped when Triton is not installed.

On a GPU machine ``SN_MM_TRITON_TEST_DEVICE=cuda`` runs the same tests compiled on CUDA
tensors instead (tools/gpu_check.sh does).
"""
import math
import os

DEVICE = os.environ.get('SN_MM_TRITON_TEST_DEVICE', 'cpu')
if DEVICE == 'cpu':
    os.environ['TRITON_INTERPRET'] = '1'  # before triton (and the kernels) are imported

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip('triton')
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from sn_mm.ops import triton_kernels as tk  # noqa: E402

if DEVICE == 'cpu' and not tk.INTERPRET:  # pragma: no cover - imported before this module
    pytest.skip('sn_mm.ops.triton_kernels was imported without TRITON_INTERPRET=1',
                allow_module_level=True)
if DEVICE != 'cpu' and not torch.cuda.is_available():  # pragma: no cover
    pytest.skip(f'SN_MM_TRITON_TEST_DEVICE={DEVICE} but no CUDA device', allow_module_level=True)


def dev(t):
    """``t`` on the device under test (keeps its memory format)."""
    return None if t is None else t.to(DEVICE)

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
    p = {k: dev(v.to(param_dtype)) for k, v in params.items()}
    bn_mean, bn_var = ((dev(t.float()) for t in given) if given is not None else (None, None))
    x, grad_y = dev(x), dev(grad_y)
    out = tk.forward(x, p['weight'], p['bias'], p['a'], p['b'], bn_mean, bn_var, pool, groups,
                     bn_mode, eps, unbiased, softmax)
    y, mean_in, var_in, bn_m, bn_v, count = out
    grads = tk.backward(grad_y, x, mean_in, var_in, p['weight'], p['a'], p['b'], bn_m, bn_v,
                        count, pool, groups, bn_mode, eps, unbiased, softmax, True)
    return [t.cpu() for t in out], [t.cpu() for t in grads]


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


# ------------------------------------------------------------------ the tests
POOL_MODES = [(POOL3, 'batch'), (POOL3, 'given'), (POOL2, 'none'), (POOL4, 'batch'),
              (POOL4, 'given'), (('GN', 'BN', 'IN'), 'batch'), (('LN', 'GN'), 'none')]


@pytest.mark.parametrize('softmax', [True, False])
@pytest.mark.parametrize('per_sample', [False, True])
@pytest.mark.parametrize('pool,bn_mode', POOL_MODES)
def test_pools_modes_and_weights(pool, bn_mode, per_sample, softmax):
    """Every pool and BN mode, shared (K,) and per-sample (N, K) weights, logits or weights."""
    check_case((3, 6, 5, 3), pool=pool, bn_mode=bn_mode, per_sample=per_sample,
               softmax=softmax, groups=3, channels_last=per_sample)


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('pool,bn_mode', [(POOL3, 'batch'), (POOL4, 'given')])
def test_dtypes_and_memory_formats(pool, bn_mode, dtype, channels_last):
    """Reduced-precision inputs keep their dtype; channels_last outputs stay channels_last."""
    check_case((2, 7, 6, 5), pool=pool, bn_mode=bn_mode, dtype=dtype, groups=7,
               channels_last=channels_last, per_sample=dtype == torch.float16)


EDGE_CASES = {
    'N=1 batch': dict(shape=(1, 7, 5, 5)),
    'N=1 given': dict(shape=(1, 7, 5, 5), bn_mode='given'),
    'L=1': dict(shape=(4, 13, 1, 1)),
    'L=1 channels_last': dict(shape=(4, 13, 1, 1), channels_last=True),
    'N=1 L=1 given': dict(shape=(1, 5, 1, 1), bn_mode='given'),
    'RoI 7x7 channels_last': dict(shape=(3, 7, 7, 7), channels_last=True, per_sample=True),
    '1D spatial': dict(shape=(5, 13, 9)),
    '3D channels_last_3d': dict(shape=(2, 6, 3, 4, 5), channels_last=True, pool=POOL4,
                                groups=2),
    'long rows 200x272 (chunks merged)': dict(shape=(1, 2, 200, 272)),
    'channels_last chunks merged': dict(shape=(2, 3, 40, 40), channels_last=True),
    'empty batch given': dict(shape=(0, 6, 3, 3), bn_mode='given'),
    'empty batch none per-sample': dict(shape=(0, 6, 3, 3), bn_mode='none', pool=POOL2,
                                        per_sample=True),
    'GN biased': dict(shape=(2, 12, 3, 3), pool=POOL4, groups=4, unbiased=False),
    'GN = IN groups': dict(shape=(2, 12, 3, 3), pool=POOL4, groups=12),
    'GN = LN group': dict(shape=(2, 12, 3, 3), pool=POOL4, groups=1),
    'many tiles in the mixing program': dict(shape=(33, 300, 2, 2), pool=POOL4, groups=3,
                                             per_sample=True),
    'LN/GN over several channel tiles': dict(shape=(3, 600, 1, 2), pool=POOL4, groups=2),
}


@pytest.mark.parametrize('case', list(EDGE_CASES), ids=list(EDGE_CASES))
def test_edge_shapes(case):
    check_case(**EDGE_CASES[case])


@pytest.mark.parametrize('layout', ['sliced W (one spatial stride)', 'cropped W (copied)',
                                    'channels_last x, contiguous grad'])
def test_other_strides(layout):
    """Views and mixed layouts: results equal the reference; a cropped view is copied once."""
    pool, shape = POOL3, (2, 5, 6, 8)
    x, params, given, grad_y = make_case(shape, pool, 'batch', False, torch.float32, seed=5)
    if layout.startswith('sliced'):
        x, grad_y = x[..., ::2], grad_y[..., ::2]
    elif layout.startswith('cropped'):
        x, grad_y = x[..., :3], grad_y[..., :3]
    else:
        x = x.contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous() or layout.startswith('channels_last')
    ref = run_reference(x, params, given, grad_y, pool, 1, 'batch', 1e-5, True, True)
    (y, *_), grads = run_triton(x, params, given, grad_y, pool, 1, 'batch', 1e-5, True, True)
    assert_close(y, ref[0], torch.float32, 'y')
    for name, got, want in zip(('x', 'weight', 'bias', 'a', 'b'), grads, ref[5]):
        assert_close(got, want, torch.float32, name)
    if layout.startswith('channels_last'):
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_moments_without_cancellation():
    """A large offset against a small spread: the blockwise Chan merge keeps the variance."""
    g = torch.Generator().manual_seed(1)
    x = 300.0 + 0.1 * torch.randn(2, 3, 64, 50, generator=g)
    pool = POOL3
    w, bias = dev(torch.ones(3)), dev(torch.zeros(3))
    logits = dev(torch.zeros(3))
    out = tk.forward(dev(x), w, bias, logits, logits, None, None, pool, 1, 'batch', 1e-5, True,
                     True)
    _, mean_in, var_in, bn_m, bn_v, _ = [t.cpu() for t in out]
    x64 = x.double().reshape(2, 3, -1)
    torch.testing.assert_close(var_in.double(), x64.var(-1, unbiased=False), rtol=1e-4, atol=0)
    torch.testing.assert_close(mean_in.double(), x64.mean(-1), rtol=1e-6, atol=0)
    mu = x64.mean(-1).mean(0)
    var_bn = (x64.var(-1, unbiased=False) * 3200 / 3199).mean(0) + \
        (x64.mean(-1) - mu).square().mean(0)
    torch.testing.assert_close(bn_v.double(), var_bn, rtol=1e-4, atol=0)


def test_half_parameters_get_half_gradients():
    """model.half(): float16 parameters get float16 gradients, statistics stay float32."""
    shape, pool = (2, 6, 4, 4), POOL3
    x, params, given, grad_y = make_case(shape, pool, 'batch', False, torch.float16)
    ref = run_reference(x, params, given, grad_y, pool, 1, 'batch', 1e-5, True, True)
    (y, mean_in, *_), grads = run_triton(x, params, given, grad_y, pool, 1, 'batch', 1e-5,
                                         True, True, param_dtype=torch.float16)
    assert mean_in.dtype == torch.float32
    assert [t.dtype for t in grads] == [torch.float16] * 5
    assert_close(y, ref[0], torch.float16, 'y')
    for name, got, want in zip(('x', 'weight', 'bias', 'a', 'b'), grads, ref[5]):
        assert_close(got, want, torch.float16, name)


class _AtenOutsideLaunches(TorchDispatchMode):
    """Records the ATen ops this module runs outside its kernel launches."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not tk.IN_LAUNCH:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


ALLOCATIONS = {'aten.empty.memory_format', 'aten.empty_strided.default',
               'aten.empty_like.default', 'aten.new_empty.default'}


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('pool,bn_mode,per_sample,shape', [
    (POOL3, 'batch', False, (2, 6, 5, 5)), (POOL4, 'given', True, (3, 6, 7, 7)),
    (POOL2, 'none', False, (1, 2, 200, 272))])
def test_three_launches_each_way_and_no_other_device_work(pool, bn_mode, per_sample, shape,
                                                          channels_last):
    """At most 3 kernel launches in forward and in backward; besides them only allocations."""
    x, params, given, grad_y = make_case(shape, pool, bn_mode, per_sample, torch.float16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    p = {k: dev(v.float()) for k, v in params.items()}
    bn_mean, bn_var = (dev(t.float()) for t in given) if given else (None, None)
    x, grad_y = dev(x), dev(grad_y)
    with _AtenOutsideLaunches() as mode:
        before = tk.LAUNCH_COUNT
        out = tk.forward(x, p['weight'], p['bias'], p['a'], p['b'], bn_mean, bn_var, pool, 2,
                         bn_mode, 1e-5, True, True)
        forward_launches = tk.LAUNCH_COUNT - before
        before = tk.LAUNCH_COUNT
        tk.backward(grad_y, x, out[1], out[2], p['weight'], p['a'], p['b'], out[3], out[4],
                    out[5], pool, 2, bn_mode, 1e-5, True, True, True)
        backward_launches = tk.LAUNCH_COUNT - before
    assert forward_launches == 3 and backward_launches == 3
    assert set(mode.ops) <= ALLOCATIONS, sorted(set(mode.ops) - ALLOCATIONS)
    assert out[0].is_contiguous(memory_format=torch.channels_last) == channels_last


def test_no_input_grad_skips_the_input_pass():
    x, params, given, grad_y = make_case((2, 4, 3, 3), POOL3, 'batch', False, torch.float32)
    p = {k: dev(v.float()) for k, v in params.items()}
    out = tk.forward(dev(x), p['weight'], p['bias'], p['a'], p['b'], None, None, POOL3, 1, 'batch',
                     1e-5, True, True)
    before = tk.LAUNCH_COUNT
    grads = tk.backward(dev(grad_y), dev(x), out[1], out[2], p['weight'], p['a'], p['b'],
                        out[3], out[4], out[5], POOL3, 1, 'batch', 1e-5, True, True, False)
    grads = [t.cpu() for t in grads]
    assert tk.LAUNCH_COUNT - before == 2 and grads[0].numel() == 0
    ref = run_reference(x, params, given, grad_y, POOL3, 1, 'batch', 1e-5, True, True)
    for name, got, want in zip(('weight', 'bias', 'a', 'b'), grads[1:], ref[5][1:]):
        assert_close(got, want, torch.float32, name)


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('per_sample', [False, True])
@pytest.mark.parametrize('pool', [POOL3, POOL4])
def test_sync_callbacks_equal_the_union_batch(pool, per_sample, channels_last):
    """SyncSN simulated with two ranks (two halves of a batch) equals SN on the whole batch.

    ``sync_moments`` returns the union batch's BN moments from both halves' IN moments;
    ``sync_grad`` sums both halves' ``G_mu``, ``G_v``: the two collectives of SyncSN.
    """
    shape, groups = (5, 6, 4, 3), 2
    n, c, length = shape[0], shape[1], 12
    x, params, _, grad_y = make_case(shape, pool, 'batch', per_sample, torch.float32, seed=3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = run_reference(x, params, None, grad_y, pool, groups, 'batch', 1e-5, True, True)
    p = {k: dev(v.float()) for k, v in params.items()}
    x, grad_y = dev(x), dev(grad_y)
    halves = [slice(0, 2), slice(2, 5)]
    weights = [(p['a'][h], p['b'][h]) if per_sample else (p['a'], p['b']) for h in halves]
    local, local_grads, seen = [None, None], [None, None], [0]

    def collect(rank):
        def sync_moments(mean_in, u):
            local[rank] = (mean_in.clone(), u.clone())
            return dev(torch.zeros(c)), dev(torch.ones(c)), dev(torch.zeros(2))
        return sync_moments

    def union(mean_in, u):
        seen[0] += 1
        m = torch.cat([local[0][0], local[1][0]]).double()
        uu = torch.cat([local[0][1], local[1][1]]).double()
        mu = m.mean(0)
        var = uu.mean(0) + (m - mu).square().mean(0)
        return mu.float(), var.float(), dev(torch.tensor([float(n), float(n * length)]))

    def run_forward(rank, callback):
        a, b = weights[rank]
        return tk.forward(x[halves[rank]], p['weight'], p['bias'], a, b, None, None, pool,
                          groups, 'given', 1e-5, True, True, sync_moments=callback)

    for rank in (0, 1):
        run_forward(rank, collect(rank))
    outs = [run_forward(rank, union) for rank in (0, 1)]
    assert seen[0] == 2

    def run_backward(rank, callback):
        a, b = weights[rank]
        y, mean_in, var_in, bn_m, bn_v, count = outs[rank]
        before = tk.LAUNCH_COUNT
        grads = tk.backward(grad_y[halves[rank]], x[halves[rank]], mean_in, var_in,
                            p['weight'], a, b, bn_m, bn_v, count, pool, groups, 'given', 1e-5,
                            True, True, True, sync_grad=callback)
        assert tk.LAUNCH_COUNT - before == 3
        return grads

    def record(rank):
        def sync_grad(g_mu, g_v):
            local_grads[rank] = (g_mu.clone(), g_v.clone())
            return g_mu, g_v
        return sync_grad

    def summed(g_mu, g_v):
        return (local_grads[0][0] + local_grads[1][0], local_grads[0][1] + local_grads[1][1])

    for rank in (0, 1):
        run_backward(rank, record(rank))
    grads = [[t.cpu() for t in run_backward(rank, summed)] for rank in (0, 1)]
    outs = [[t.cpu() for t in o] for o in outs]

    dt = torch.float32
    assert_close(torch.cat([o[0] for o in outs]), ref[0], dt, 'y')
    for o in outs:
        assert_close(o[3], ref[3], dt, 'bn_mean')
        assert_close(o[4], ref[4], dt, 'bn_var')
        assert o[5].tolist() == [float(n), float(n * length)]
    assert_close(torch.cat([g[0] for g in grads]), ref[5][0], dt, 'grad_x')
    assert_close(grads[0][1] + grads[1][1], ref[5][1], dt, 'grad_weight')
    assert_close(grads[0][2] + grads[1][2], ref[5][2], dt, 'grad_bias')
    for i, name in ((3, 'grad_a'), (4, 'grad_b')):
        got = (torch.cat([g[i] for g in grads]) if per_sample else grads[0][i] + grads[1][i])
        assert_close(got, ref[5][i], dt, name)


def _args(x, pool=POOL3, bn_mode='batch', groups=1, a=None, weight=None):
    c, k = x.shape[1], len(pool)
    a = torch.zeros(k) if a is None else a
    weight = torch.ones(c) if weight is None else weight
    return tuple(dev(t) for t in (x, weight, torch.zeros(c), a, torch.zeros(k), torch.zeros(c),
                                  torch.ones(c))) + (pool, groups, bn_mode, 1e-5, True, True)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(pool=('IN', 'XN')), ValueError, "got \\('IN', 'XN'\\)"),
    (dict(pool=('IN', 'IN')), ValueError, 'distinct'),
    (dict(pool=POOL2), ValueError, "bn_mode='batch' does not fit pool"),
    (dict(bn_mode='running'), ValueError, "got 'running'"),
    (dict(pool=POOL4, groups=4), ValueError, 'divisor of the 6 channels.*got 4'),
    (dict(a=torch.zeros(2, 3)), ValueError, r'shape \(3,\) \(shared\) or \(4, 3\).*got \(2, 3\)'),
    (dict(weight=torch.ones(5)), ValueError, r'weight must be a floating-point \(6,\)'),
])
def test_bad_arguments_are_named(kwargs, error, match):
    x = torch.randn(4, 6, 3, 3)
    with pytest.raises(error, match=match):
        tk.forward(*_args(x, **kwargs))


def test_bad_inputs_are_named(monkeypatch):
    with pytest.raises(TypeError, match='float64'):
        tk.forward(*_args(torch.randn(2, 6, 3, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r'more than 1 value per channel.*\(1, 6, 1, 1\)'):
        tk.forward(*_args(torch.randn(1, 6, 1, 1)))
    with pytest.raises(ValueError, match=r'non-empty spatial sizes, got shape \(2, 6, 0, 3\)'):
        tk.forward(*_args(torch.randn(2, 6, 0, 3)))
    monkeypatch.setattr(tk, 'INTERPRET', False)
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
        tk.forward(torch.randn(2, 6, 3, 3), *_args(torch.randn(2, 6, 3, 3))[1:])


def test_importing_sn_mm_does_not_import_triton():
    import subprocess
    import sys
    code = 'import sys, sn_mm, sn_mm.ops; assert "triton" not in sys.modules, "triton imported"'
    subprocess.run([sys.executable, '-c', code], check=True)


def test_kernels_compile_for_the_gpu_without_one():
    """Triton's GPU compiler (to an sm_90 cubin, bundled ptxas) accepts every kernel."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    tool = os.path.join(os.path.dirname(__file__), '..', 'tools', 'triton_compile_check.py')
    result = subprocess.run([sys.executable, tool, '--quick', '--arch', '90'], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '12 specializations x 1 targets, 0 failed' in result.stdout, result.stdout


@pytest.mark.parametrize('pool,torch_norm', [
    (('BN',), lambda x, w, b: torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.0,
                                                             1e-5)),
    (('IN',), lambda x, w, b: torch.nn.functional.instance_norm(x, weight=w, bias=b, eps=1e-5)),
    (('LN',), lambda x, w, b: torch.nn.functional.group_norm(x, 1, w, b, 1e-5)),
    (('GN',), lambda x, w, b: torch.nn.functional.group_norm(x, 3, w, b, 1e-5)),
], ids=['BN', 'IN', 'LN', 'GN'])
def test_single_branch_pools_equal_torch_norms(pool, torch_norm):
    """With one branch (biased variances) SN is BatchNorm, InstanceNorm, LayerNorm or GroupNorm."""
    x, params, _, grad_y = make_case((4, 6, 5, 3), pool, 'batch' if pool == ('BN',) else 'none',
                                     False, torch.float32, seed=7)
    x64 = x.double().requires_grad_()
    w64 = params['weight'].clone().requires_grad_()
    b64 = params['bias'].clone().requires_grad_()
    want = torch_norm(x64, w64, b64)
    want_grads = torch.autograd.grad(want, [x64, w64, b64], grad_y.double())
    (y, *_), grads = run_triton(x, params, None, grad_y, pool, 3,
                                'batch' if pool == ('BN',) else 'none', 1e-5, False, True)
    assert_close(y, want.detach(), torch.float32, 'y')
    for name, got, ref in zip(('x', 'weight', 'bias'), grads, want_grads):
        assert_close(got, ref, torch.float32, name)
    assert grads[3].abs().max() < 1e-6 and grads[4].abs().max() < 1e-6  # softmax of one logit


def _sync_worker(rank, world_size, init_file, batches, pool, per_sample, out_dir):
    """One rank of a 2-process gloo SyncSN run through the kernels and sn_mm's collectives."""
    import torch.distributed as dist
    from sn_mm.ops import distributed
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world_size)
    calls = [0]
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls[0] += 1
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    try:
        shape = (sum(batches), 6, 4, 3)
        x, params, _, grad_y = make_case(shape, pool, 'batch', per_sample, torch.float32,
                                         seed=11)
        start, stop = sum(batches[:rank]), sum(batches[:rank + 1])
        p = {k: v.float() for k, v in params.items()}
        a, b = (p['a'][start:stop], p['b'][start:stop]) if per_sample else (p['a'], p['b'])
        length = 12
        out = tk.forward(x[start:stop], p['weight'], p['bias'], a, b, None, None, pool, 2,
                         'given', 1e-5, True, True,
                         sync_moments=lambda m, u: distributed.sync_batch_moments(m, u, length, 1))
        forward_calls = calls[0]
        grads = tk.backward(grad_y[start:stop], x[start:stop], out[1], out[2], p['weight'], a,
                            b, out[3], out[4], out[5], pool, 2, 'given', 1e-5, True, True,
                            True, sync_grad=lambda gm, gv: distributed.sync_bn_grad(gm, gv, 1))
        torch.save(dict(out=out, grads=grads, forward_calls=forward_calls,
                        backward_calls=calls[0] - forward_calls),
                   os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.all_reduce = real_all_reduce
        dist.destroy_process_group()


@pytest.mark.skipif(DEVICE != 'cpu', reason='gloo on CPU tensors')
@pytest.mark.parametrize('batches,pool,per_sample', [((3, 2), POOL3, False),
                                                     ((0, 4), POOL4, True)])
def test_sync_sn_in_two_processes_equals_the_union_batch(tmp_path, batches, pool, per_sample):
    """2-process gloo: sn_mm's own collectives as the callbacks, one each way, empty rank too."""
    import torch.multiprocessing as mp
    mp.spawn(_sync_worker, args=(2, str(tmp_path / 'init'), batches, pool, per_sample,
                                 str(tmp_path)), nprocs=2, join=True)
    shape = (sum(batches), 6, 4, 3)
    x, params, _, grad_y = make_case(shape, pool, 'batch', per_sample, torch.float32, seed=11)
    ref = run_reference(x, params, None, grad_y, pool, 2, 'batch', 1e-5, True, True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1)]
    dt = torch.float32
    for r in ranks:
        assert r['forward_calls'] == 1 and r['backward_calls'] == 1
        assert_close(r['out'][3], ref[3], dt, 'bn_mean')
        assert_close(r['out'][4], ref[4], dt, 'bn_var')
        assert r['out'][5].tolist() == [float(sum(batches)), float(sum(batches) * 12)]
    assert_close(torch.cat([r['out'][0] for r in ranks]), ref[0], dt, 'y')
    assert_close(torch.cat([r['grads'][0] for r in ranks]), ref[5][0], dt, 'grad_x')
    for i, name in ((1, 'grad_weight'), (2, 'grad_bias')):
        assert_close(ranks[0]['grads'][i] + ranks[1]['grads'][i], ref[5][i], dt, name)
    for i, name in ((3, 'grad_a'), (4, 'grad_b')):
        got = (torch.cat([r['grads'][i] for r in ranks]) if per_sample
               else ranks[0]['grads'][i] + ranks[1]['grads'][i])
        assert_close(got, ref[5][i], dt, name)
