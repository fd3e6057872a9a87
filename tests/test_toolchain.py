"""SN in PyTorch's toolchain: custom ops (opcheck), torch.compile, export, ONNX, jit.trace,
low precision, the meta device and factory kwargs (pure torch: sn_mm.ops only)."""
import copy
import io

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm, functional, pool as pool_table
from sn_mm.ops.functional import BN_BATCH, BN_NONE, BN_RUNNING
from tests.devices import DEVICES

MODES = {'none': BN_NONE, 'running': BN_RUNNING, 'batch': BN_BATCH}
POOLS = {'IN-LN-BN': ('IN', 'LN', 'BN'), 'IN-LN': ('IN', 'LN'),
         'IN-LN-BN-GN': ('IN', 'LN', 'BN', 'GN')}


def _op_args(mode, dtype=torch.float64, param_dtype=None, shape=(3, 4, 5, 6), grad=True,
             softmax=False, pool=None, per_sample=False, device='cpu'):
    param_dtype = param_dtype or dtype
    gen = torch.Generator().manual_seed(0)
    if pool is None:
        pool = POOLS['IN-LN'] if mode == BN_NONE else POOLS['IN-LN-BN']
    k = len(pool)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)
    weight, bias = (torch.randn(shape[1], generator=gen, dtype=param_dtype).to(device)
                    for _ in range(2))
    wshape = (shape[0], k) if per_sample else (k,)
    a, b = (torch.softmax(torch.randn(wshape, generator=gen, dtype=param_dtype), -1).to(device)
            for _ in range(2))
    rm = torch.randn(shape[1], generator=gen, dtype=param_dtype).to(device)
    rv = (torch.rand(shape[1], generator=gen, dtype=param_dtype) + 0.5).to(device)
    tensors = [x, weight, bias, a, b]
    if grad:
        tensors = [t.requires_grad_() for t in tensors]
    return (*tensors, rm, rv, pool_table.codes(pool), 2 if 'GN' in pool else 1, mode, 1e-5,
            True, 0, softmax)


needs_ops = pytest.mark.skipif(functional.extension is None, reason='sn_mm ops not built')


@needs_ops
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('softmax', [False, True])
@pytest.mark.parametrize('per_sample', [False, True])
@pytest.mark.parametrize('mode,pool', [(BN_NONE, 'IN-LN'), (BN_RUNNING, 'IN-LN-BN'),
                                       (BN_BATCH, 'IN-LN-BN'), (BN_BATCH, 'IN-LN-BN-GN')])
@pytest.mark.parametrize('dtype,param_dtype', [(torch.float64, None), (torch.float32, None),
                                               (torch.bfloat16, torch.float32)])
def test_opcheck(device, softmax, per_sample, mode, pool, dtype, param_dtype):
    """One op name per computation: its kernel on this device, fake kernel and autograd."""
    op = torch.ops.sn_mm.switchable_norm.default
    backward_op = torch.ops.sn_mm.switchable_norm_backward.default
    args = _op_args(mode, dtype, param_dtype, softmax=softmax, pool=POOLS[pool],
                    per_sample=per_sample, device=device)
    torch.library.opcheck(op, args)
    # the backward op on its own (schema, fake kernel, aliasing, dynamic shapes)
    y, mean_in, var_in, bn_mean, bn_var, count = op(*args)
    x, weight, _, a, b = (t.detach() for t in args[:5])
    bwd_args = (torch.randn_like(y), x, mean_in, var_in, weight, a, b, bn_mean, bn_var, count,
                *args[7:12], 0, True, softmax)
    torch.library.opcheck(backward_op, bwd_args,
                          test_utils=('test_schema', 'test_faketensor',
                                      'test_aot_dispatch_dynamic'))


class TwoLayer(nn.Module):
    """conv -> SN -> relu -> conv -> SN(using_bn=False): every parameter gets a gradient."""

    def __init__(self, dtype=torch.float32, in_variance='unbiased'):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, dtype=dtype)
        self.sn1 = SwitchableNorm(8, dtype=dtype, in_variance=in_variance)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, dtype=dtype)
        self.sn2 = SwitchableNorm(8, using_bn=False, dtype=dtype, in_variance=in_variance)

    def forward(self, x):
        return self.sn2(self.conv2(torch.relu(self.sn1(self.conv1(x)))))


def _randomized(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        model.sn1.running_mean.uniform_(-0.2, 0.2, generator=gen)
        model.sn1.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('in_variance', ['unbiased', 'biased'])
def test_compile_fullgraph_equals_eager_float64(training, in_variance, device):
    torch._dynamo.reset()
    eager = _randomized(TwoLayer(torch.float64, in_variance)).to(device).train(training)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    for step in range(2):  # the second call runs the cached graph, running stats moved
        x = torch.randn(4, 3, 9, 7, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(step)).to(device)
        ye, yc = eager(x), compiled(x)
        assert_close(yc, ye, rtol=0, atol=1e-10)
        ye.square().sum().backward()
        yc.square().sum().backward()
    _assert_grads_and_buffers_close(compiled_model, eager, grad_tol=(0, 1e-10), buffer_atol=1e-10)


def _assert_grads_and_buffers_close(compiled, eager, grad_tol, buffer_atol):
    """Each parameter's gradient (``grad_tol = (rtol, atol)``) and each buffer of the two."""
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert p.grad is not None, name
        assert_close(q.grad, p.grad, rtol=grad_tol[0], atol=grad_tol[1], msg=name)
    for (name, b), c in zip(eager.named_buffers(), compiled.buffers()):
        assert_close(c, b, rtol=0, atol=buffer_atol, msg=name)


@pytest.mark.parametrize('training', [True, False])
def test_dynamo_sees_no_graph_break(training):
    torch._dynamo.reset()
    model = TwoLayer().train(training)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 8, 8))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # SyncSN outside a distributed run is SN: no break either
    sync = nn.Sequential(nn.Conv2d(3, 4, 1), SyncSwitchableNorm(4)).train(training)
    assert torch._dynamo.explain(sync)(torch.randn(2, 3, 4, 4)).graph_break_count == 0


def test_compile_traces_sn_into_aten_ops():
    """Under torch.compile SN decomposes into ATen ops (inductor fuses them), no opaque op."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = TwoLayer().train()
    torch.compile(model, backend=backend, fullgraph=True)(torch.randn(2, 3, 6, 6))
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == 'call_function']
    assert not any('sn_mm' in t for t in targets), targets
    assert any('rsqrt' in t for t in targets), targets


def test_export_and_jit_trace_match_eager():
    model = _randomized(TwoLayer()).eval()
    x = torch.randn(2, 3, 16, 12)
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,))
        assert_close(exported.module()(x), expected, rtol=0, atol=1e-5)
        traced = torch.jit.trace(model, (x,))
        assert_close(traced(x), expected, rtol=0, atol=1e-5)
    # export traces plain ATen ops, which every exporter knows
    targets = {str(n.target) for n in exported.graph.nodes if n.op == 'call_function'}
    assert not any('sn_mm' in t for t in targets), targets


def test_onnx_export_runs_in_onnxruntime():
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    model = _randomized(TwoLayer()).eval()
    x = torch.randn(2, 3, 16, 12)
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=17)
    buffer = io.BytesIO()
    program.save(buffer)
    proto = onnx.load_from_string(buffer.getvalue())
    assert {op.domain for op in proto.opset_import} <= {'', 'ai.onnx'} or all(
        op.domain in ('', 'ai.onnx') or op.version >= 1 for op in proto.opset_import)
    assert all(node.domain in ('', 'ai.onnx') for node in proto.graph.node), \
        {node.domain for node in proto.graph.node}
    assert max(op.version for op in proto.opset_import if op.domain in ('', 'ai.onnx')) >= 17
    session = ort.InferenceSession(buffer.getvalue(), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_close(torch.from_numpy(out), model(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_model_cast_to_low_precision_trains(dtype, device):
    model = _randomized(TwoLayer()).to(device, dtype).train()
    reference = copy.deepcopy(model).float()  # the same (rounded) weights in float32
    x = torch.randn(4, 3, 8, 8).to(device, dtype)
    y = model(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype, name
        assert torch.isfinite(p.grad).all(), name
    assert_close(y.float(), reference(x.float()), rtol=0.05, atol=0.1)


def _saved_tensors(fn):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_keeps_float32_statistics_and_saves_no_float32_copy(dtype):
    layer = SwitchableNorm(16).train()
    x = (torch.randn(4, 16, 20, 20) * 5 + 40).to(dtype).requires_grad_()
    with torch.autocast('cpu', dtype=dtype):
        y, saved = _saved_tensors(lambda: layer(x))
    assert y.dtype == dtype
    big = [t for t in saved if t.numel() >= x.numel()]
    assert big and all(t.dtype == dtype for t in big), [(t.dtype, t.shape) for t in big]
    # statistics in float32: the running mean of an offset-40 input is exact to float32
    expected_mean = x.detach().float().mean((0, 2, 3))
    assert layer.running_mean.dtype == torch.float32
    assert_close(layer.running_mean, 0.1 * expected_mean, rtol=1e-5, atol=1e-5)
    y.float().sum().backward()
    assert x.grad.dtype == dtype and layer.weight.grad.dtype == torch.float32


def test_autocast_makes_no_full_size_float32_allocation():
    """With the compiled kernels no float32 buffer as large as the input is allocated."""
    if functional.extension is None:
        pytest.skip('compiled kernels not built')
    layer = SwitchableNorm(32).train()
    x = torch.randn(2, 32, 64, 64).bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16), \
            torch.profiler.profile(profile_memory=True, record_shapes=False) as prof:
        layer(x).sum().backward()
    allocations = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert allocations, 'the profiler recorded no allocation'
    float32_copy = x.numel() * 4
    assert max(allocations) < float32_copy, (max(allocations), float32_copy)


def test_meta_device_and_factory_kwargs():
    layer = SwitchableNorm(8, device='meta', dtype=torch.float64)
    assert all(t.device.type == 'meta' and t.dtype == torch.float64
               for t in list(layer.parameters()) + list(layer.buffers()))
    for training in (True, False):
        y = layer.train(training)(torch.empty(2, 8, 5, 5, device='meta', dtype=torch.float64))
        assert y.shape == (2, 8, 5, 5) and y.device.type == 'meta'
    y = layer.train()(torch.empty(2, 8, 5, 5, device='meta', dtype=torch.float64,
                                  requires_grad=True))
    y.sum().backward()
    sync = SyncSwitchableNorm(4, device='meta', using_bn=False)
    assert sync.weight.device.type == 'meta' and sync.running_mean is None
    real = SwitchableNorm(8).to_empty(device='cpu')
    real.reset_parameters()
    assert torch.equal(real.weight, torch.ones(8))


def test_double_backward_raises_a_clear_error():
    layer = SwitchableNorm(3, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match='does not support double backward'):
        (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        grad.sum().backward()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_compiled_sn_low_precision_input_matches_eager(dtype):
    """Compiled SN on a low-precision input: float32 statistics, gradients in the input's dtype."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    eager = SwitchableNorm(6).train()
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, fullgraph=True)
    x = torch.randn(3, 6, 5, 7, generator=gen).to(dtype)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = eager(xe), compiled(xc)
    assert yc.dtype == dtype
    assert_close(yc.float(), ye.float(), rtol=0, atol=0.05)
    g = torch.randn(ye.shape, generator=gen).to(dtype)
    ye.backward(g)
    yc.backward(g)
    assert xc.grad.dtype == dtype
    assert_close(xc.grad.float(), xe.grad.float(), rtol=0, atol=0.05)
    _assert_grads_and_buffers_close(compiled_layer, eager, grad_tol=(0.02, 0.02), buffer_atol=1e-3)


def test_empty_batch_under_compile():
    torch._dynamo.reset()
    layer = SwitchableNorm(4).train()
    before = layer.running_mean.clone()
    y = torch.compile(layer)(torch.randn(0, 4, 3, 3))
    assert y.shape == (0, 4, 3, 3)
    assert torch.equal(layer.running_mean, before)


@pytest.mark.parametrize('use_kernel', [True, False])
def test_output_is_not_a_view_so_inplace_ops_work(monkeypatch, use_kernel):
    if not use_kernel:
        monkeypatch.setattr(functional, 'extension', None)
        monkeypatch.setattr(functional, '_warned_reference', True)
    layer = SwitchableNorm(4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y = layer(x)
    assert y._base is None and y.shape == x.shape
    torch.relu_(y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
