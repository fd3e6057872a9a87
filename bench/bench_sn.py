"""Benchmark SN / SyncSN against BatchNorm2d, GroupNorm and a naive autograd SN.

Prints, per ResNet-50 shape at detection batch sizes, the median forward+backward
time (train mode) of every variant measured *interleaved in one run* (so machine
noise hits all of them alike), the ratio to ``nn.BatchNorm2d``, the bytes saved
for backward (``torch.autograd.graph.saved_tensors_hooks``, unique storages) and
the peak memory growth of one forward+backward (ru_maxrss, a fresh process per variant).

    python bench/bench_sn.py [--rounds 9] [--threads N] [--quick]
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
    input first; the reported number is ``ru_maxrss`` after minus before, i.e. the
    high-water mark of everything the forward+backward allocated.
    """
    code = (
        'import resource, sys, torch; sys.path.insert(0, %r); sys.argv = ["x"]\n'
        'import bench.bench_sn as b\n'
        'torch.manual_seed(0); shape = %r\n'
        'layer = b.variants(shape[1])[%r]\n'
        'small = torch.randn(2, shape[1], 4, 4, requires_grad=True)\n'
        'b.fwd_bwd(layer, small, torch.randn_like(small))\n'
        'x = torch.randn(shape, requires_grad=True); g = torch.randn(shape)\n'
        'before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n'
        'b.fwd_bwd(layer, x, g)\n'
        'print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n'
    ) % (ROOT, tuple(shape), name)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def bench_shape(shape, rounds):
    # Peaks first, in fresh processes (measured after the timing loops they read 0 here).
    peaks = {name: peak_bytes(name, shape) for name in variants(shape[1])}
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    layers = variants(shape[1])
    for layer in layers.values():  # warm-up
        fwd_bwd(layer, x, grad)
    times = {name: [] for name in layers}
    for _ in range(rounds):
        for name, layer in layers.items():
            start = time.perf_counter()
            fwd_bwd(layer, x, grad)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    saved = {name: saved_bytes(layer, x) for name, layer in layers.items()}
    return medians, saved, peaks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=9)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--quick', action='store_true', help='tiny shapes (smoke test)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    print(f'# SN benchmark: torch {torch.__version__}, {platform.processor() or platform.machine()},'
          f' {torch.get_num_threads()} threads, {args.rounds} interleaved rounds, '
          'forward+backward, train mode, float32')
    names = list(variants(32))
    print('| shape | ' + ' | '.join(f'{n} ms' for n in names) + ' | SN/BN | SyncSN/BN | '
          'naiveSN/BN | GN/BN | saved SN/BN | peak MB SN, BN, naiveSN | peak SN/BN |')
    print('|' + '---|' * (len(names) + 8))
    ratios = {'SN': [], 'SyncSN': [], 'naiveSN': [], 'GN': [], 'saved': [], 'peak': []}
    for shape in shapes:
        med, saved, peaks = bench_shape(shape, args.rounds)
        r = {n: med[n] / med['BN'] for n in names}
        ratios['SN'].append(r['SN'])
        ratios['SyncSN'].append(r['SyncSN'])
        ratios['naiveSN'].append(r['naiveSN'])
        ratios['GN'].append(r['GN'])
        ratios['saved'].append(saved['SN'] / saved['BN'])
        ratios['peak'].append(peaks['SN'] / peaks['BN'] if peaks['BN'] else float('nan'))
        print(f'| {tuple(shape)} | ' + ' | '.join(f'{med[n] * 1e3:.1f}' for n in names)
              + f' | {r["SN"]:.2f} | {r["SyncSN"]:.2f} | {r["naiveSN"]:.2f} | {r["GN"]:.2f} | '
              f'{ratios["saved"][-1]:.3f} | {peaks["SN"] / 2**20:.0f}, {peaks["BN"] / 2**20:.0f}, '
              f'{peaks["naiveSN"] / 2**20:.0f} | {ratios["peak"][-1]:.2f} |', flush=True)
        sys.stdout.flush()
    print()
    print('Median over shapes: ' + ', '.join(
        f'{k}/BN {statistics.median(v):.2f}' for k, v in ratios.items()))
    print('saved = bytes saved for backward (unique storages); peak = growth of the peak '
          'resident memory during one forward+backward (fresh process per variant).')


if __name__ == '__main__':
    main()
