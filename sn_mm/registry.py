"""Every name ``import sn_mm`` adds to mmengine's root registries, in one place.

mmcv's ``build_norm_layer`` and every downstream scope (mmdet, mmseg) fall back to the
root registries, so the names below work in any OpenMMLab config once ``sn_mm`` is
imported (``custom_imports=dict(imports=['sn_mm'])``). Added here (and nowhere else):

- ``MODELS``: ``'SN'`` (:class:`~sn_mm.ops.SwitchableNorm`), ``'SyncSN'``
  (:class:`~sn_mm.ops.SyncSwitchableNorm`), ``'SSN'`` (:class:`~sn_mm.ops.SparseSwitchableNorm`),
  ``'SyncSSN'`` (:class:`~sn_mm.ops.SyncSparseSwitchableNorm`), ``'SW'``, ``'SyncSW'``
  (:mod:`sn_mm.ops.switchable_whitening`), ``'EN'``, ``'SyncEN'``
  (:mod:`sn_mm.ops.exemplar_norm`), ``'FixedNormModel'``
  (:func:`sn_mm.deploy.mm.build_fixed_norm_model`) and ``'SWResNet'`` (:mod:`sn_mm.sw_resnet`);
- ``HOOKS``: ``'SNRatioHook'`` (:mod:`sn_mm.engine.sn_ratio_hook`), ``'SNBatchAverageHook'``
  (:mod:`sn_mm.engine.batch_average_hook`), ``'SSNRadiusHook'``
  (:mod:`sn_mm.engine.ssn_radius_hook`), ``'ExactResumeHook'``
  (:mod:`sn_mm.engine.exact_resume_hook`), ``'SNFiniteCheckHook'``
  (:mod:`sn_mm.engine.finite_check_hook`);
- ``OPTIM_WRAPPER_CONSTRUCTORS``: ``'SNOptimWrapperConstructor'`` (:mod:`sn_mm.engine.optim`).

``FixedNormModel`` is a builder function (the model of a config written by
``tools/deploy_sn.py``), registered with ``force=True`` as before (a second registration
replaces the entry instead of failing).

Besides these additions, ``import sn_mm`` *replaces* two mmengine components
(``CheckpointLoader``'s schemes on torch >= 2.6, and ``'Pretrained'`` in
``WEIGHT_INITIALIZERS`` by :class:`sn_mm.engine.pretrained.SNPretrainedInit`). Those are
overrides, not additions: what they replace, why and when is documented with the code
that does it, :mod:`sn_mm.compat` (``compat.install()``, called by ``sn_mm/__init__.py``
after this module).

The layers, hooks and the constructor carry no registration decorator: importing their
modules registers nothing; importing this module (``import sn_mm`` does) registers them.
"""
from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from .deploy.mm import build_fixed_norm_model
from .engine.batch_average_hook import SNBatchAverageHook
from .engine.exact_resume_hook import ExactResumeHook
from .engine.finite_check_hook import SNFiniteCheckHook
from .engine.optim import SNOptimWrapperConstructor
from .engine.sn_ratio_hook import SNRatioHook
from .engine.ssn_radius_hook import SSNRadiusHook
from .ops import (SparseSwitchableNorm, SwitchableNorm, SyncSparseSwitchableNorm,
                  SyncSwitchableNorm)
from .ops.exemplar_norm import ExemplarNorm, SyncExemplarNorm
from .ops.switchable_whitening import SwitchableWhitening, SyncSwitchableWhitening


def _build_sw_resnet(*args, **kwargs):
    """The SW authors' ResNet layout in mmdet (:mod:`sn_mm.sw_resnet`), for their ImageNet
    checkpoints; a builder function, so that ``import sn_mm`` does not import mmdet."""
    from .sw_resnet import SWResNet
    return SWResNet(*args, **kwargs)


# the norm layers: norm_cfg=dict(type=...)
MODELS.register_module('SN', module=SwitchableNorm)
MODELS.register_module('SyncSN', module=SyncSwitchableNorm)
MODELS.register_module('SSN', module=SparseSwitchableNorm)
MODELS.register_module('SyncSSN', module=SyncSparseSwitchableNorm)
MODELS.register_module('SW', module=SwitchableWhitening)
MODELS.register_module('SyncSW', module=SyncSwitchableWhitening)
MODELS.register_module('EN', module=ExemplarNorm)
MODELS.register_module('SyncEN', module=SyncExemplarNorm)
# models
MODELS.register_module('FixedNormModel', module=build_fixed_norm_model, force=True)
MODELS.register_module('SWResNet', module=_build_sw_resnet)
# hooks (ExactResumeHook and SNFiniteCheckHook act only in configs that name them)
HOOKS.register_module('SNRatioHook', module=SNRatioHook)
HOOKS.register_module('SNBatchAverageHook', module=SNBatchAverageHook)
HOOKS.register_module('SSNRadiusHook', module=SSNRadiusHook)
HOOKS.register_module('ExactResumeHook', module=ExactResumeHook)
HOOKS.register_module('SNFiniteCheckHook', module=SNFiniteCheckHook)
# the optimizer constructor (no weight decay / lr multipliers for SN, SW and EN parameters)
OPTIM_WRAPPER_CONSTRUCTORS.register_module('SNOptimWrapperConstructor',
                                           module=SNOptimWrapperConstructor)
