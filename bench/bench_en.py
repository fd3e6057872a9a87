"""Benchmark Exemplar Normalization against SN and BatchNorm2d (forward + backward).

Per ResNet-50 shape, the median forward+backward time (train mode) of every variant,
measured interleaved in one run (machine noise hits all alike), the ratios EN/SN and
EN/BN, and the bytes saved for backward (``saved_tensors_hooks``, unique storages).
``NaiveEN`` is the paper's formulation written literally (K full-size normalizations
mixed per sample, tests/test_exemplar_norm.py's reference): what EN's shared moment
pass and single affine pass save. Goal (issue 19): EN within 1.2x of SN.

    python bench/bench_en.py [--rounds 9] [--threads 1] [--quick] [--bf16]

``--bf16``: inputs in bfloat16 under CPU autocast (statistics stay float32).
Only torch is needed (no mm*).
"""
import argparse
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)
from sn_mm.ops import SwitchableNorm  # noqa: E402
from sn_mm.ops.exemplar_norm import ExemplarNorm  # noqa: E402
from tests.test_exemplar_norm import reference  # noqa: E402

# ResNet-50 at ImageNet resolution (the four stages' widest norms) and a detection shape
SHAPES = [(8, 256, 56, 56), (8, 512, 28, 28), (8, 1024, 14, 14), (8, 2048, 7, 7),
          (2, 256, 100, 136)]
QUICK_SHAPES = [(2, 64, 32, 32), (2, 256, 8, 8)]


class NaiveEN(nn.Module):
    """EN as plain autograd over K full-size normalized maps (the paper's Eqn. 3)."""

    def __init__(self, c):
        super().__init__()
        self.en = ExemplarNorm(c)

    def forward(self, x):
        return reference(self.en, x)


def variants(c):
    return {'BN': nn.BatchNorm2d(c), 'SN': SwitchableNorm(c), 'EN': ExemplarNorm(c),
            'EN-stat': ExemplarNorm(c, mixture='statistics'), 'NaiveEN': NaiveEN(c)}


def saved_bytes(layer, x):
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum()
    return sum(storages.values())


def step(layer, x, g, bf16):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        y = layer(x)
    y.backward(g)


def run(shapes, rounds, bf16):
    dtype = torch.bfloat16 if bf16 else torch.float32
    rows = []
    for shape in shapes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).to(dtype).requires_grad_()
        g = torch.randn(shape, generator=gen).to(dtype)
        layers = {k: v.train() for k, v in variants(shape[1]).items()}
        times = {k: [] for k in layers}
        for name, layer in layers.items():  # warm-up
            step(layer, x, g, bf16)
        for _ in range(rounds):
            for name, layer in layers.items():
                x.grad = None
                start = time.perf_counter()
                step(layer, x, g, bf16)
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            mem = {k: saved_bytes(layer, x) for k, layer in layers.items()}
        rows.append((shape, med, mem))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=9)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--quick', action='store_true', help='two small shapes')
    parser.add_argument('--bf16', action='store_true', help='bf16 inputs under CPU autocast')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    print(f'# bench_en: torch {torch.__version__}, {platform.processor() or platform.machine()}, '
          f'{args.threads} thread(s), {"bf16 autocast" if args.bf16 else "float32"}, '
          f'median of {args.rounds} interleaved rounds, loadavg {os.getloadavg()[0]:.2f}, '
          f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}')
    rows = run(shapes, args.rounds, args.bf16)
    names = list(rows[0][1])
    print('| shape (N, C, H, W) | ' + ' | '.join(f'{n} ms' for n in names)
          + ' | EN/SN | EN/BN | NaiveEN/EN | saved MiB BN/SN/EN/NaiveEN |')
    print('|' + '---|' * (len(names) + 5))
    worst = 0.0
    for shape, med, mem in rows:
        ratio = med['EN'] / med['SN']
        worst = max(worst, ratio)
        mib = '/'.join(f'{mem[k] / 2**20:.1f}' for k in ('BN', 'SN', 'EN', 'NaiveEN'))
        print(f'| {tuple(shape)} | ' + ' | '.join(f'{med[n]:.2f}' for n in names)
              + f' | {ratio:.2f} | {med["EN"] / med["BN"]:.2f} | '
              f'{med["NaiveEN"] / med["EN"]:.2f} | {mib} |')
    print(f'worst EN/SN ratio: {worst:.2f} (goal <= 1.2: {"met" if worst <= 1.2 else "NOT met"})')
    return rows


if __name__ == '__main__':
    main()
