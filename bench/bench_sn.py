"""Benchmark SN / SyncSN against BatchNorm2d, GroupNorm and a naive autograd SN.

Prints, per ResNet-50 shape at detection batch sizes, the median forward+backward
time (train mode) of every variant measured *interleaved in one run* (so machine
noise hits all of them alike), the ratio to ``nn.BatchNorm2d``, the bytes saved
for backward (``torch.autograd.graph.saved_tensors_hooks``, unique storages) and
the peak memory growth of one forward+backward (VmHWM, a fresh process per variant
and shape). A second table shows RoI-head shapes (small spatial size, many samples),
where SN's fixed per-layer cost weighs most. Further sections: low precision
(autocast bf16 on CPU; fp16 and bf16 on CUDA: time and saved bytes against BatchNorm
under the same autocast), the per-layer fixed cost on a tiny input (the op and the torch
reference), and a ``torch.compile``'d ResNet-50 forward+backward with SN
against the same network with BatchNorm.

    python bench/bench_sn.py [--device cpu|cuda] [--rounds 15] [--threads N] [--quick]
                             [--skip-compile] [--kernels aten|triton]
                             [--memory-format contiguous|channels_last|both]

``--kernels triton`` (CUDA) adds an ``SN-triton`` column: the layer's forward and backward
through the fused Triton kernels (``sn_mm.ops.triton_kernels``, three launches each way)
called directly, next to the op's own path (``SN``), and a table of CUDA kernel launches
per layer. ``--memory-format`` times channels_last inputs too (rows marked ``cl``).

Only torch is needed (no mm*), so this runs on a GPU machine with torch alone.
"""
import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)
from sn_mm.benchmark import saved_bytes as measure_saved_bytes  # noqa: E402
from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm, functional  # noqa: E402
from tests.reference import reference_sn  # noqa: E402  (the literal autograd formulation)

SHAPES = [(2, 256, 200, 272), (2, 256, 100, 136), (8, 512, 64, 64), (2, 1024, 50, 68),
          (2, 2048, 25, 34)]
QUICK_SHAPES = [(2, 64, 32, 32), (2, 128, 16, 16)]
ROI_SHAPES = [(64, 256, 14, 14), (256, 256, 14, 14), (512, 256, 7, 7)]


class NaiveSN(nn.Module):
    """SN written as plain autograd over full-size temporaries (the usual formulation)."""

    def __init__(self, c):
        super().__init__()
        self.ref = SwitchableNorm(c)

    def forward(self, x):
        r = self.ref
        y, _, _ = reference_sn(x, r.weight, r.bias, r.mean_weight, r.var_weight, eps=r.eps)
        return y


def variants(c):
    return {
        'BN': nn.BatchNorm2d(c),
        'GN': nn.GroupNorm(32, c),
        'SN': SwitchableNorm(c),
        'SyncSN': SyncSwitchableNorm(c),
        'naiveSN': NaiveSN(c),
        **({'SN-triton': TritonSN(c)} if KERNELS == 'triton' else {}),
    }


def fmt_tag(memory_format):
    return ', cl' if memory_format == torch.channels_last else ''


def randn(shape, memory_format=torch.contiguous_format, **kw):
    return torch.randn(shape, device=DEVICE, **kw).contiguous(memory_format=memory_format)


class _TritonSNFunction(torch.autograd.Function):
    """SN (pool IN, LN, BN; batch moments; softmax in the kernels) over the Triton kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean_w, var_w, eps):
        from sn_mm.ops import triton_kernels as tk
        y, mean_in, var_in, bn_mean, bn_var, count = tk.forward(
            x, weight, bias, mean_w, var_w, None, None, TRITON_POOL, 1, 'batch', eps, True,
            True)
        ctx.save_for_backward(x, mean_in, var_in, weight, mean_w, var_w, bn_mean, bn_var, count)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_y):
        from sn_mm.ops import triton_kernels as tk
        x, mean_in, var_in, weight, mean_w, var_w, bn_mean, bn_var, count = ctx.saved_tensors
        grads = tk.backward(grad_y, x, mean_in, var_in, weight, mean_w, var_w, bn_mean, bn_var,
                            count, TRITON_POOL, 1, 'batch', ctx.eps, True, True,
                            ctx.needs_input_grad[0])
        return (grads[0] if ctx.needs_input_grad[0] else None,) + tuple(grads[1:]) + (None,)


TRITON_POOL = ('IN', 'LN', 'BN')


class TritonSN(nn.Module):
    """An SN layer's parameters run through the Triton kernels (running stats not tracked)."""

    def __init__(self, c):
        super().__init__()
        self.ref = SwitchableNorm(c)

    def forward(self, x):
        r = self.ref
        return _TritonSNFunction.apply(x, r.weight, r.bias, r.mean_weight, r.var_weight, r.eps)


DEVICE = torch.device('cpu')
AUTOCAST = None  # (device_type, dtype) while timing under autocast
KERNELS = 'aten'  # 'triton': add the SN-triton variant
MEMORY_FORMATS = [torch.contiguous_format]


def sync():
    if DEVICE.type == 'cuda':
        torch.cuda.synchronize()


def fwd_bwd(layer, x, grad):
    x.grad = None
    if AUTOCAST is None:
        y = layer(x)
    else:
        with torch.autocast(AUTOCAST[0], dtype=AUTOCAST[1]):
            y = layer(x)
    y.backward(grad.to(y.dtype))


def saved_bytes(layer, x):
    """Bytes ``layer(x)`` saves for backward (unique storages), under ``AUTOCAST``."""
    return measure_saved_bytes(layer, x, AUTOCAST)


def peak_bytes(name, shape):
    """Peak resident-memory growth of one forward+backward, in a fresh process.

    ``x`` and the output gradient are allocated and the code path warmed up on a tiny
    input first; then the kernel's high-water mark is reset (``/proc/self/clear_refs``)
    and the reported number is ``VmHWM`` after minus ``VmRSS`` before: everything the
    forward+backward had resident at its peak. ``None`` where ``/proc`` can't do this.
    On CUDA: ``torch.cuda.max_memory_allocated`` growth, in this process.
    """
    if DEVICE.type == 'cuda':
        layer = variants(shape[1])[name].to(DEVICE)
        x = torch.randn(shape, device=DEVICE, requires_grad=True)
        g = torch.randn(shape, device=DEVICE)
        fwd_bwd(layer, x, g)
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fwd_bwd(layer, x, g)
        sync()
        return torch.cuda.max_memory_allocated() - before
    code = (
        'import sys, torch; sys.path.insert(0, %r); sys.argv = ["x"]\n'
        'import bench.bench_sn as b\n'
        'torch.manual_seed(0); shape = %r\n'
        'layer = b.variants(shape[1])[%r]\n'
        'small = torch.randn(2, shape[1], 4, 4, requires_grad=True)\n'
        'b.fwd_bwd(layer, small, torch.randn_like(small))\n'
        'x = torch.randn(shape, requires_grad=True); g = torch.randn(shape)\n'
        'open("/proc/self/clear_refs", "w").write("5")\n'
        'before = b.proc_status_kib("VmRSS")\n'
        'b.fwd_bwd(layer, x, g)\n'
        'print(b.proc_status_kib("VmHWM") - before)\n'
    ) % (ROOT, tuple(shape), name)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def proc_status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def time_variants(layers, x, grad, rounds):
    """Median fwd+bwd seconds per variant, interleaved, the order rotated every round.

    Rotation matters on CPU: each variant frees its big tensors and the allocator's
    state (and the page faults it costs the next variant) depends on who ran before.
    """
    for layer in layers.values():  # warm-up
        fwd_bwd(layer, x, grad)
    names = list(layers)
    times = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            sync()
            start = time.perf_counter()
            fwd_bwd(layers[name], x, grad)
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_shape(shape, rounds, with_peaks=True, memory_format=torch.contiguous_format):
    # Peaks first, in fresh processes.
    peaks = ({name: peak_bytes(name, shape) for name in variants(shape[1])}
             if with_peaks and memory_format == torch.contiguous_format else {})
    torch.manual_seed(0)
    x = randn(shape, memory_format).requires_grad_()
    grad = randn(shape, memory_format)
    layers = {name: layer.to(DEVICE) for name, layer in variants(shape[1]).items()}
    # The naive SN allocates ~4x more than the others: timed on its own afterwards so
    # its allocations don't change the others' page-fault pattern.
    naive = layers.pop('naiveSN')
    medians = time_variants(layers, x, grad, rounds)
    medians['naiveSN'] = time_variants({'naiveSN': naive}, x, grad, max(3, rounds // 3))['naiveSN']
    layers['naiveSN'] = naive
    saved = {name: saved_bytes(layer, x) for name, layer in layers.items()}
    return medians, saved, peaks


def fmt_mib(value):
    return 'n/a' if value is None else f'{value / 2**20:.0f}'


def ratio(a, b):
    return a / b if a is not None and b else float('nan')


def print_table(shapes, rounds, with_peaks):
    names = ['BN', 'GN', 'SN', 'SyncSN', 'naiveSN']
    extra = ['SN-triton'] if KERNELS == 'triton' else []
    print('| shape | ' + ' | '.join(f'{n} ms' for n in names + extra) + ' | SN/BN | SyncSN/BN | '
          'naiveSN/BN | GN/BN | saved SN/BN |'
          + (' peak MiB SN, BN, naiveSN | peak SN/BN |' if with_peaks else '')
          + ''.join(f' {n}/BN | saved {n}/BN |' for n in extra))
    print('|' + '---|' * (len(names) + 6 + (2 if with_peaks else 0) + 3 * len(extra)))
    ratios = {'SN': [], 'SyncSN': [], 'naiveSN': [], 'GN': [], 'saved': [], 'peak': [],
              **{n: [] for n in extra}}
    for shape, memory_format in [(s, f) for s in shapes for f in MEMORY_FORMATS]:
        med, saved, peaks = bench_shape(shape, rounds, with_peaks, memory_format)
        r = {n: med[n] / med['BN'] for n in names + extra}
        for name in extra:
            ratios[name].append(r[name])
        for name in ('SN', 'SyncSN', 'naiveSN', 'GN'):
            ratios[name].append(r[name])
        ratios['saved'].append(saved['SN'] / saved['BN'])
        row = (f'| {tuple(shape)}{fmt_tag(memory_format)} | '
               + ' | '.join(f'{med[n] * 1e3:.1f}' for n in names + extra)
               + f' | {r["SN"]:.2f} | {r["SyncSN"]:.2f} | {r["naiveSN"]:.2f} | {r["GN"]:.2f} | '
               f'{ratios["saved"][-1]:.3f} |')
        if with_peaks:  # measured for contiguous inputs only
            peak = ratio(peaks.get('SN'), peaks.get('BN'))
            if peaks:
                ratios['peak'].append(peak)
            row += (f' {fmt_mib(peaks.get("SN"))}, {fmt_mib(peaks.get("BN"))}, '
                    f'{fmt_mib(peaks.get("naiveSN"))} | {peak:.2f} |')
        row += ''.join(f' {r[n]:.2f} | {saved[n] / saved["BN"]:.3f} |' for n in extra)
        print(row, flush=True)
    if not with_peaks:
        del ratios['peak']
    return ratios


def timings(fn, rounds):
    """Seconds of ``rounds`` calls of ``fn`` after one warm-up call (device synchronized)."""
    fn()
    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def best_ms(fn, rounds):
    return min(timings(fn, rounds)) * 1e3


def median_ms(fn, rounds):
    return statistics.median(timings(fn, rounds)) * 1e3


def autocast_dtypes():
    """The autocast dtypes benchmarked on this device."""
    return [torch.bfloat16] if DEVICE.type == 'cpu' else [torch.float16, torch.bfloat16]


def print_low_precision(shapes, rounds):
    """SN vs BN under autocast: time (interleaved, rotated) and bytes saved for backward."""
    global AUTOCAST
    dtypes = autocast_dtypes()
    names = [getattr(d, '__name__', str(d)).replace('torch.', '') for d in dtypes]
    triton = KERNELS == 'triton'
    print('| shape | ' + ' | '.join(f'BN {n} ms | SN {n} ms | SN/BN {n} | saved SN/BN {n}'
                                   + (f' | SN-triton {n} ms | SN-triton/BN {n}' if triton else '')
                                   for n in names) + ' |')
    print('|' + '---|' * (1 + (6 if triton else 4) * len(dtypes)))
    ratios = {n: [] for n in names}
    saved_ratios = {n: [] for n in names}
    for shape, memory_format in [(s, f) for s in shapes for f in MEMORY_FORMATS]:
        cells = []
        for dtype, name in zip(dtypes, names):
            torch.manual_seed(0)
            # autocast's input: what the previous conv hands over in low precision
            x = randn(shape, memory_format, dtype=dtype).requires_grad_()
            grad = randn(shape, memory_format, dtype=dtype)
            layers = {'BN': nn.BatchNorm2d(shape[1]).to(DEVICE),
                      'SN': SwitchableNorm(shape[1]).to(DEVICE)}
            if triton:
                layers['SN-triton'] = TritonSN(shape[1]).to(DEVICE)
            AUTOCAST = (DEVICE.type, dtype)
            try:
                med = time_variants(layers, x, grad, rounds)
                saved = {k: saved_bytes(layer, x) for k, layer in layers.items()}
            finally:
                AUTOCAST = None
            ratios[name].append(med['SN'] / med['BN'])
            saved_ratios[name].append(saved['SN'] / saved['BN'])
            cells.append(f'{med["BN"] * 1e3:.1f} | {med["SN"] * 1e3:.1f} | '
                         f'{ratios[name][-1]:.2f} | {saved_ratios[name][-1]:.3f}'
                         + (f' | {med["SN-triton"] * 1e3:.1f} | '
                            f'{med["SN-triton"] / med["BN"]:.2f}' if triton else ''))
        print(f'| {tuple(shape)}{fmt_tag(memory_format)} | ' + ' | '.join(cells) + ' |',
              flush=True)
    print('Median over shapes: ' + ', '.join(
        f'SN/BN {n} {statistics.median(ratios[n]):.2f} (saved {statistics.median(saved_ratios[n]):.3f})'
        for n in names))


def print_low_precision_section(shapes, rounds):
    print('## Low precision: autocast (the input arrives in the low-precision dtype)')
    print_low_precision(shapes, rounds)


def print_parts(rounds):
    """SN's fixed per-layer cost on a tiny input: the op, and the torch reference."""
    print('## Parts')
    tiny = torch.randn(2, 256, 2, 2, device=DEVICE, requires_grad=True)
    grad = torch.randn_like(tiny)
    layers = {'SN': SwitchableNorm(256).to(DEVICE), 'BN': nn.BatchNorm2d(256).to(DEVICE)}
    cost = {}
    for _ in range(3):  # interleaved repeats; the median of medians is reported
        for name, layer in layers.items():
            cost.setdefault(name, []).append(
                median_ms(lambda layer=layer: fwd_bwd(layer, tiny, grad), rounds * 20))
    cost = {k: statistics.median(v) for k, v in cost.items()}
    kernel = 'none (reference)' if functional.extension is None else \
        'sn_mm::switchable_norm'
    print(f'| fixed cost (2, 256, 2, 2), forward+backward, median of {rounds * 20} | '
          f'SN {cost["SN"]:.3f} ms | BN {cost["BN"]:.3f} ms | SN/BN {cost["SN"] / cost["BN"]:.2f} |'
          f' op: {kernel} |')
    if functional.extension is not None:
        saved, functional.extension = functional.extension, None
        functional._warned_reference = True
        try:
            ref = median_ms(lambda: fwd_bwd(layers['SN'], tiny, grad), rounds * 20)
        finally:
            functional.extension = saved
        print(f'| same, the torch reference with plain autograd | SN {ref:.3f} ms | | '
              f'SN/BN {ref / cost["BN"]:.2f} | sn_mm.ops.reference |')


def print_launches(shape=(2, 256, 50, 68)):
    """CUDA kernels one forward+backward of each layer launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    print(f'| layer, {tuple(shape)} | CUDA kernels fwd+bwd, contiguous | channels_last |')
    print('|---|---|---|')
    for name, layer in variants(shape[1]).items():
        layer = layer.to(DEVICE)
        counts = []
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = randn(shape, memory_format).requires_grad_()
            grad = randn(shape, memory_format)
            fwd_bwd(layer, x, grad)  # warm-up (Triton compiles here)
            sync()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fwd_bwd(layer, x, grad)
                sync()
            counts.append(sum(1 for e in prof.events()
                              if e.device_type == torch.autograd.DeviceType.CUDA))
        print(f'| {name} | {counts[0]} | {counts[1]} |', flush=True)


def conv_bn_relu(cin, cout, norm, k=1, stride=1):
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), norm(cout), nn.ReLU(inplace=True)]


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride, norm):
        super().__init__()
        cout = planes * 4
        self.body = nn.Sequential(*conv_bn_relu(cin, planes, norm),
                                  *conv_bn_relu(planes, planes, norm, 3, stride),
                                  nn.Conv2d(planes, cout, 1, bias=False), norm(cout))
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def resnet50_backbone(norm, blocks=(3, 4, 6, 3)):
    """torchvision-layout ResNet-50 feature extractor (no torchvision needed), any norm."""
    layers = [*conv_bn_relu(3, 64, norm, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, n in enumerate(blocks):
        for j in range(n):
            layers.append(Bottleneck(cin, 64 * 2 ** i, 2 if j == 0 and i > 0 else 1, norm))
            cin = 64 * 2 ** i * 4
    return nn.Sequential(*layers)


def print_compiled(rounds, quick):
    """torch.compile'd ResNet-50 backbone, SN everywhere vs BatchNorm2d everywhere, and eager.

    Under inductor SN traces its torch reference, which inductor fuses with the
    convolutions, ReLUs and residual adds around it; eager SN runs the hand-written kernel.
    Goals (issue 18): compiled SN <= 1.0x compiled BN, and compiled SN <= eager SN.
    """
    size, batch = ((64, 2) if quick else (224, 2) if DEVICE.type == 'cpu' else (224, 32))
    blocks = (1, 1, 1, 1) if quick else (3, 4, 6, 3)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    models, compile_s = {}, {}
    for name, norm in (('BN', nn.BatchNorm2d), ('SN', SwitchableNorm)):
        model = resnet50_backbone(norm, blocks).to(DEVICE).train()
        models[f'{name} eager'] = model
        compiled = torch.compile(copy.deepcopy(model))
        start = time.perf_counter()
        compiled(x).sum().backward()  # compiles forward and backward
        sync()
        compile_s[f'{name} compiled'] = time.perf_counter() - start
        models[f'{name} compiled'] = compiled
    steps = {name: [] for name in models}
    names = list(models)
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            sync()
            start = time.perf_counter()
            models[name](x).sum().backward()
            sync()
            steps[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in steps.items()}
    print(f'ResNet-50{" (1 block per stage)" if quick else ""} backbone, input {batch}x3x{size}x{size}, '
          f'forward+backward, median of {rounds} interleaved steps (compiled: inductor):')
    print('| model | ms/step | ratio to compiled BN | first call (compile) s |')
    print('|---|---|---|---|')
    for name in names:
        first = f'{compile_s[name]:.0f}' if name in compile_s else '-'
        print(f'| {name} | {med[name]:.1f} | {med[name] / med["BN compiled"]:.2f} | {first} |')
    print(f'compiled SN / compiled BN {med["SN compiled"] / med["BN compiled"]:.2f} (goal <= 1.0); '
          f'compiled SN / eager SN {med["SN compiled"] / med["SN eager"]:.2f} (goal <= 1.0)')


def main():
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--quick', action='store_true', help='tiny shapes (smoke test)')
    parser.add_argument('--skip-compile', action='store_true',
                        help='skip the torch.compile section (minutes of compilation on CPU)')
    parser.add_argument('--compile-only', action='store_true',
                        help='run the torch.compile section alone')
    parser.add_argument('--low-precision-only', action='store_true',
                        help='run the autocast section (ResNet-50 shapes) alone')
    parser.add_argument('--kernels', default='aten', choices=['aten', 'triton'],
                        help='triton: add the SN-triton variant (the fused Triton kernels; CUDA)')
    parser.add_argument('--memory-format', default='contiguous',
                        choices=['contiguous', 'channels_last', 'both'],
                        help='memory format(s) of the inputs in the tables')
    args = parser.parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch.cuda.is_available() is False on this machine')
    if args.kernels == 'triton' and args.device != 'cuda':
        parser.error('--kernels triton needs --device cuda (on CPU the Triton kernels run only '
                     'under the interpreter, for tests)')
    global KERNELS, MEMORY_FORMATS
    KERNELS = args.kernels
    MEMORY_FORMATS = {'contiguous': [torch.contiguous_format],
                      'channels_last': [torch.channels_last],
                      'both': [torch.contiguous_format, torch.channels_last]}[args.memory_format]
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (torch.cuda.get_device_name() if DEVICE.type == 'cuda'
             else f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads')
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'# SN benchmark: torch {torch.__version__}, {where}, {time.strftime("%Y-%m-%d %H:%M")}, '
          f'load {load:.1f}, {args.rounds} rounds (variants interleaved, order rotated), '
          'forward+backward, train mode')
    print()
    if args.compile_only:
        print('## torch.compile')
        print_compiled(max(5, args.rounds // 3), args.quick)
        return
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.low_precision_only:
        print_low_precision_section(shapes, args.rounds)
        return
    print('## ResNet-50 shapes at detection batch sizes (the targets), float32')
    ratios = print_table(shapes, args.rounds, True)
    print()
    print('Median over shapes: ' + ', '.join(
        f'{k}/BN {statistics.median(v):.2f}' for k, v in ratios.items() if v))
    print('saved = bytes saved for backward (unique storages); peak = memory a '
          'forward+backward adds at its peak (CPU: resident, fresh process per variant and '
          'shape; CUDA: max_memory_allocated).')
    print()
    print_low_precision_section(shapes, args.rounds)
    print()
    print_parts(args.rounds)
    if DEVICE.type == 'cuda':
        print()
        print('## Kernel launches per layer (torch.profiler, CUDA)')
        print_launches()
    if not args.quick:
        print()
        print('## RoI-head shapes (Mask R-CNN mask head: positive RoIs x 256 x 14 x 14; '
              'not part of the targets), float32')
        print_table(ROI_SHAPES, args.rounds, False)
        print()
        print('## RoI-head shapes under autocast')
        print_low_precision(ROI_SHAPES, args.rounds)
    if not args.skip_compile:
        print()
        print('## torch.compile')
        print_compiled(max(5, args.rounds // 3), args.quick)


if __name__ == '__main__':
    main()
