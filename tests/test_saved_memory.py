"""What SN keeps for backward against BatchNorm2d (issue target: at most 1.05x).

Counted exactly by :func:`sn_mm.benchmark.saved_bytes` (the measurement
``bench/bench_sn.py`` reports: ``torch.autograd.graph.saved_tensors_hooks``, unique
storages), at detection-backbone shapes and at RoI-head shapes, where the ``(N, C)``
tensors SN saves are largest relative to ``x``.
"""
import pytest
import torch
from torch import nn

from sn_mm.benchmark import saved_bytes
from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm

BACKBONE_SHAPE = (2, 64, 40, 48)
ROI_7X7_SHAPE = (128, 32, 7, 7)


@pytest.mark.parametrize('shape', [BACKBONE_SHAPE, (64, 32, 14, 14), ROI_7X7_SHAPE])
@pytest.mark.parametrize('layer_type', [SwitchableNorm, SyncSwitchableNorm])
@pytest.mark.parametrize('training', [True, False])
def test_saved_bytes_within_5_percent_of_batchnorm(shape, layer_type, training):
    x = torch.randn(shape, requires_grad=True)
    sn, bn = layer_type(shape[1]).train(training), nn.BatchNorm2d(shape[1]).train(training)
    sn_bytes, bn_bytes = saved_bytes(sn, x), saved_bytes(bn, x)
    assert sn_bytes >= x.numel() * x.element_size()  # x itself is saved
    assert sn_bytes <= 1.05 * bn_bytes, (sn_bytes, bn_bytes)


def _autocast_saved(shape, dtype):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    sn, bn = SwitchableNorm(shape[1]), nn.BatchNorm2d(shape[1])
    autocast = ('cpu', dtype)
    sn_bytes, bn_bytes = saved_bytes(sn, x, autocast), saved_bytes(bn, x, autocast)
    assert sn_bytes < x.numel() * 4  # less than a float32 copy of x
    return sn_bytes, bn_bytes


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_saved_bytes_under_autocast_within_5_percent_of_batchnorm_at_backbone_shapes(dtype):
    """Under autocast SN saves the low-precision x (no float32 copy) and (N, C) statistics."""
    sn_bytes, bn_bytes = _autocast_saved(BACKBONE_SHAPE, dtype)
    assert sn_bytes <= 1.05 * bn_bytes, (sn_bytes, bn_bytes)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_saved_bytes_under_autocast_within_10_percent_of_batchnorm_at_7x7_roi_maps(dtype):
    """On 7x7 RoI maps the two float32 (N, C) IN moments are 8 bytes per 98 bytes of a
    16-bit row, so the 5% target does not hold there (docs/benchmarks.md: 1.081x at
    (512, 256, 7, 7)); the bound is 10%."""
    sn_bytes, bn_bytes = _autocast_saved(ROI_7X7_SHAPE, dtype)
    assert sn_bytes <= 1.10 * bn_bytes, (sn_bytes, bn_bytes)


def test_saved_bytes_counts_unique_storages_and_checks_autocast():
    """The counter itself: a layer saving x twice (and a view of it) counts x once; a
    layer that saves nothing counts zero; a malformed ``autocast`` is refused by name."""
    x = torch.randn(3, 5, requires_grad=True)

    class SavesTwice(nn.Module):
        def forward(self, t):
            return t * t + t[:, :2].sum()

    assert saved_bytes(SavesTwice(), x) == x.numel() * x.element_size()
    assert saved_bytes(nn.Identity(), x) == 0
    with pytest.raises(ValueError, match=r"autocast must be \(device_type, dtype\) or None, "
                                         r"got 'cpu'"):
        saved_bytes(nn.Identity(), x, 'cpu')
