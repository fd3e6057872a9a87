"""Benchmark SN / SyncSN against BatchNorm2d, GroupNorm and a naive autograd SN.

Prints, per ResNet-50 shape at detection batch sizes, the median forward+backward
time (train mode) of every variant measured *interleaved in one run* (so machine
noise hits all of them alike), the ratio to ``nn.BatchNorm2d``, the bytes saved
for backward (``torch.autograd.graph.saved_tensors_hooks``, unique storages) and
the peak memory growth of one forward+backward (VmHWM, a fresh process per variant
and shape). A second table shows RoI-head shapes (small spatial size, many samples),
where SN's fixed per-layer cost (its (N, C) arithmetic) weighs most.

    python bench/bench_sn.py [--rounds 15] [--threads N] [--quick]
"""
import argparse
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
from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm  # noqa: E402
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
    }


def fwd_bwd(layer, x, grad):
    x.grad = None
    layer(x).backward(grad)


def saved_bytes(layer, x):
    storages = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    del y
    return sum(storages.values())


def peak_bytes(name, shape):
    """Peak resident-memory growth of one forward+backward, in a fresh process.

    ``x`` and the output gradient are allocated and the code path warmed up on a tiny
    input first; then the kernel's high-water mark is reset (``/proc/self/clear_refs``)
    and the reported number is ``VmHWM`` after minus ``VmRSS`` before: everything the
    forward+backward had resident at its peak. ``None`` where ``/proc`` can't do this.
    """
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
            start = time.perf_counter()
            fwd_bwd(layers[name], x, grad)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_shape(shape, rounds, with_peaks=True):
    # Peaks first, in fresh processes.
    peaks = ({name: peak_bytes(name, shape) for name in variants(shape[1])}
             if with_peaks else {})
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    layers = variants(shape[1])
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
    print('| shape | ' + ' | '.join(f'{n} ms' for n in names) + ' | SN/BN | SyncSN/BN | '
          'naiveSN/BN | GN/BN | saved SN/BN |'
          + (' peak MiB SN, BN, naiveSN | peak SN/BN |' if with_peaks else ''))
    print('|' + '---|' * (len(names) + 6 + (2 if with_peaks else 0)))
    ratios = {'SN': [], 'SyncSN': [], 'naiveSN': [], 'GN': [], 'saved': [], 'peak': []}
    for shape in shapes:
        med, saved, peaks = bench_shape(shape, rounds, with_peaks)
        r = {n: med[n] / med['BN'] for n in names}
        for name in ('SN', 'SyncSN', 'naiveSN', 'GN'):
            ratios[name].append(r[name])
        ratios['saved'].append(saved['SN'] / saved['BN'])
        row = (f'| {tuple(shape)} | ' + ' | '.join(f'{med[n] * 1e3:.1f}' for n in names)
               + f' | {r["SN"]:.2f} | {r["SyncSN"]:.2f} | {r["naiveSN"]:.2f} | {r["GN"]:.2f} | '
               f'{ratios["saved"][-1]:.3f} |')
        if with_peaks:
            ratios['peak'].append(ratio(peaks['SN'], peaks['BN']))
            row += (f' {fmt_mib(peaks["SN"])}, {fmt_mib(peaks["BN"])}, '
                    f'{fmt_mib(peaks["naiveSN"])} | {ratios["peak"][-1]:.2f} |')
        print(row, flush=True)
    if not with_peaks:
        del ratios['peak']
    return ratios


def best_ms(fn, rounds):
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def print_parts(rounds):
    """Two numbers the README quotes: the IN-moments kernel and SN's fixed per-layer cost."""
    from sn_mm.ops import functional
    print('## Parts')
    x = torch.randn(2 * 256, 100 * 136)
    if functional.compiled_kernel is not None:
        ext = best_ms(lambda: functional.compiled_kernel.instance_moments(x), rounds)
        aten = best_ms(lambda: torch.batch_norm_update_stats(x[None], None, None, 0.0), rounds)
        print(f'IN moments of (2, 256, 100, 136), best of {rounds}: sn_mm._ext {ext:.2f} ms, '
              f"ATen's batch_norm_update_stats {aten:.2f} ms ({aten / ext:.1f}x)")
    tiny = torch.randn(2, 256, 2, 2, requires_grad=True)
    grad = torch.randn_like(tiny)
    layers = {'SN': SwitchableNorm(256), 'BN': nn.BatchNorm2d(256)}
    cost = {name: best_ms(lambda layer=layer: fwd_bwd(layer, tiny, grad), rounds * 20)
            for name, layer in layers.items()}
    print(f'Fixed cost per layer (forward+backward of (2, 256, 2, 2), best of {rounds * 20}): '
          f'SN {cost["SN"]:.2f} ms, BN {cost["BN"]:.2f} ms')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--quick', action='store_true', help='tiny shapes (smoke test)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'# SN benchmark: torch {torch.__version__}, {platform.processor() or platform.machine()},'
          f' {torch.get_num_threads()} threads, {args.rounds} rounds (variants interleaved, '
          'order rotated), forward+backward, train mode, float32')
    print()
    print('## ResNet-50 shapes at detection batch sizes (the targets)')
    ratios = print_table(QUICK_SHAPES if args.quick else SHAPES, args.rounds, True)
    print()
    print('Median over shapes: ' + ', '.join(
        f'{k}/BN {statistics.median(v):.2f}' for k, v in ratios.items()))
    print('saved = bytes saved for backward (unique storages); peak = resident memory a '
          'forward+backward adds at its peak (fresh process per variant and shape).')
    if not args.quick:
        print()
        print_parts(args.rounds)
        print()
        print('## RoI-head shapes (Mask R-CNN mask head: positive RoIs x 256 x 14 x 14; '
              'not part of the targets)')
        print_table(ROI_SHAPES, args.rounds, False)


if __name__ == '__main__':
    main()
