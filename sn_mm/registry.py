"""Register the SN layers in mmengine's root MODELS registry.

mmcv's ``build_norm_layer`` and every downstream scope (mmdet, mmseg) fall back to the
root registry, so ``norm_cfg=dict(type='SN')`` / ``dict(type='SyncSN')`` (and the sparse
variants ``'SSN'`` / ``'SyncSSN'``) work in any OpenMMLab config once ``sn_mm`` is
imported (``custom_imports=dict(imports=['sn_mm'])``).
"""
from mmengine.registry import MODELS

from .ops import (SparseSwitchableNorm, SwitchableNorm, SyncSparseSwitchableNorm,
                  SyncSwitchableNorm)

MODELS.register_module('SN', module=SwitchableNorm)
MODELS.register_module('SyncSN', module=SyncSwitchableNorm)
MODELS.register_module('SSN', module=SparseSwitchableNorm)
MODELS.register_module('SyncSSN', module=SyncSparseSwitchableNorm)

# Switchable Whitening (issue 19): norm_cfg=dict(type='SW', sw_type=2, num_pergroup=16, T=5)
from .ops.switchable_whitening import SwitchableWhitening, SyncSwitchableWhitening  # noqa: E402

MODELS.register_module('SW', module=SwitchableWhitening)
MODELS.register_module('SyncSW', module=SyncSwitchableWhitening)

# The SW authors' ResNet layout in mmdet (sn_mm.sw_resnet), for their ImageNet checkpoints;
# a builder function, so that ``import sn_mm`` does not import mmdet


def _build_sw_resnet(*args, **kwargs):
    from .sw_resnet import SWResNet
    return SWResNet(*args, **kwargs)


MODELS.register_module('SWResNet', module=_build_sw_resnet)
