"""Benchmark Switchable Whitening (SW) against BatchNorm2d, SN and the matrix floor.

Per ResNet-50 shape: the median forward+backward time (train mode) of every variant,
measured *interleaved in one run* (machine noise hits all alike), in float32 and under
autocast bf16, and the bytes saved for backward (unique storages seen by
``torch.autograd.graph.saved_tensors_hooks``).

The per-group matrix cost. SW whitens ``G = C / c`` groups of ``c`` channels: the forward
needs the group covariances (``(c x L)(L x c)`` per sample and group: ``2 N C L c`` FLOPs)
and applies the ``c x c`` whitening matrix to every position (``2 N C L c`` FLOPs); the
backward needs three more such products (the gradients of the whitening matrix and of the
input through both products). Five batched GEMMs, ``10 N C L c`` FLOPs per layer: ``c``
times a BN's elementwise work, against which the Newton iterations (``3 T`` products of
``c x c`` matrices per sample and group, ``~6 T N G c^3`` FLOPs) are small when ``L >> c``.
``floor`` times exactly those five GEMMs (``y = (x x^T) x`` with its backward written out),
nothing else (no statistics, no Newton, no affine); under autocast in bf16, while SW keeps
its statistics and whitening in float32 by design. Goal: SW forward+backward within 2x of
``BN + floor`` (the BN-like elementwise passes plus the unavoidable matrix work); the
output prints the ratio.

    python bench/bench_sw.py [--rounds 5] [--threads N] [--quick]

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
from sn_mm.ops.switchable_whitening import SwitchableWhitening  # noqa: E402

SHAPES = [(2, 256, 100, 136), (2, 512, 50, 68), (2, 1024, 50, 68), (2, 2048, 25, 34)]
QUICK_SHAPES = [(2, 64, 32, 32), (2, 256, 16, 16)]
C_GROUP = 16


class _Floor(torch.autograd.Function):
    """``y = (x x^T) x`` per sample and group, forward and backward as 5 batched GEMMs."""

    @staticmethod
    def forward(ctx, xg):
        s = torch.bmm(xg, xg.transpose(1, 2))           # 1: the covariance product
        ctx.save_for_backward(xg, s)
        return torch.bmm(s, xg)                          # 2: the whitening product

    @staticmethod
    def backward(ctx, grad):
        xg, s = ctx.saved_tensors
        grad_s = torch.bmm(grad, xg.transpose(1, 2))     # 3: gradient of the c x c matrix
        grad_s = grad_s + grad_s.transpose(1, 2)         # (c x c: negligible)
        return torch.baddbmm(torch.bmm(s, grad), grad_s, xg)  # 4, 5: gradient of x


class MatrixFloor(nn.Module):
    """The matrix work SW cannot avoid, alone: 5 batched GEMMs of ``2 N C L c`` FLOPs each."""

    def __init__(self, c=C_GROUP):
        super().__init__()
        self.c = c

    def forward(self, x):
        n, big_c = x.shape[:2]
        xg = x.reshape(n * big_c // self.c, self.c, -1)
        if torch.is_autocast_enabled('cpu'):  # the GEMMs in autocast's dtype, both passes
            xg = xg.to(torch.get_autocast_dtype('cpu'))
        return _Floor.apply(xg).reshape(x.shape)


def variants(c):
    return {'BN': nn.BatchNorm2d(c), 'SN': SwitchableNorm(c),
            'SW(BW+IW)': SwitchableWhitening(c, num_pergroup=C_GROUP, sw_type=2),
            'SW(BW)': SwitchableWhitening(c, num_pergroup=C_GROUP, sw_type=1),
            'floor': MatrixFloor()}


def run(layer, x, grad, autocast):
    x.grad = None
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.backward(grad.to(y.dtype))


def saved_bytes(layer, x, autocast):
    storages = {}

    def pack(t):
        try:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
    del y
    return sum(storages.values())


def bench_shape(shape, rounds, autocast):
    layers = variants(shape[1])
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    times = {k: [] for k in layers}
    for layer in layers.values():  # warm-up
        run(layer, x, grad, autocast)
    for _ in range(rounds):
        for name, layer in layers.items():
            t0 = time.perf_counter()
            run(layer, x, grad, autocast)
            times[name].append((time.perf_counter() - t0) * 1e3)
    median = {k: statistics.median(v) for k, v in times.items()}
    saved = {k: saved_bytes(layer, x, autocast) for k, layer in layers.items()}
    return median, saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--quick', action='store_true', help='small shapes (smoke test)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    print(f'# bench_sw: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, torch '
          f'{torch.__version__}, {platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}, '
          f'rounds {args.rounds}')
    print(f'# SW: num_pergroup c={C_GROUP}, T=5. Per-group matrix cost: covariance and '
          f'whitening products, forward and backward: 5 batched GEMMs, 10*N*C*L*c FLOPs '
          f'(c={C_GROUP} times BN\'s elementwise work); "floor" times those 5 GEMMs alone.')
    print('# goal: SW(BW+IW) fwd+bwd <= 2.0 x (BN + floor)')
    names = list(variants(C_GROUP * 4))
    for autocast in (False, True):
        mode = 'autocast bf16' if autocast else 'float32'
        print(f'\n## {mode}: median ms forward+backward (train), saved MiB for backward')
        print('| shape | ' + ' | '.join(names) + ' | SW/BN | SW/SN | SW/(BN+floor) |')
        print('|' + '---|' * (len(names) + 4))
        for shape in shapes:
            median, saved = bench_shape(shape, args.rounds, autocast)
            sw = median['SW(BW+IW)']
            cells = [f'{median[k]:.1f} ({saved[k] / 2 ** 20:.1f})' for k in names]
            print(f'| {tuple(shape)} | ' + ' | '.join(cells)
                  + f' | {sw / median["BN"]:.1f}x | {sw / median["SN"]:.1f}x'
                  + f' | {sw / (median["BN"] + median["floor"]):.2f}x |', flush=True)


if __name__ == '__main__':
    main()
