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

# Exact resume (sn_mm.engine.exact_resume_hook): only configs that name it use it.
from mmengine.registry import HOOKS  # noqa: E402

from .engine.exact_resume_hook import ExactResumeHook  # noqa: E402

HOOKS.register_module('ExactResumeHook', module=ExactResumeHook)

# Opt-in NaN/Inf check (sn_mm.engine.finite_check_hook).
from .engine.finite_check_hook import SNFiniteCheckHook  # noqa: E402

HOOKS.register_module('SNFiniteCheckHook', module=SNFiniteCheckHook)
