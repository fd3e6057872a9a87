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

# Exemplar Normalization (issue 19): per-sample importance ratios (sn_mm.ops.exemplar_norm)
from .ops.exemplar_norm import ExemplarNorm, SyncExemplarNorm  # noqa: E402

MODELS.register_module('EN', module=ExemplarNorm)
MODELS.register_module('SyncEN', module=SyncExemplarNorm)
