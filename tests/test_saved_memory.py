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
