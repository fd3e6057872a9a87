"""Every name ``import sn_mm`` adds to mmengine's root registries, in one place.

mmcv's ``build_norm_layer`` and every downstream scope (mmdet, mmseg) fall back to the
root registries, so the names below work in any OpenMMLab config once ``sn_mm`` is
imported (``custom_imports=dict(imports=['sn_mm'])``). Added here (and nowhere else):

- ``MODELS``: ``'SN'`` (:class:`~sn_mm.ops.SwitchableNorm`), ``'SyncSN'``
  (:class:`~sn_mm.ops.SyncSwitchableNorm`), ``'SSN'`` (:class:`~sn_mm.ops.SparseSwitchableNorm`),
  ``'SyncSSN'`` (:class:`~sn_mm.ops.SyncSparseSwitchableNorm`), and ``'FixedNormModel'``
  (:func:`sn_mm.deploy.mm.build_fixed_norm_model`);
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

MODELS.register_module('SN', module=SwitchableNorm)
MODELS.register_module('SyncSN', module=SyncSwitchableNorm)
MODELS.register_module('SSN', module=SparseSwitchableNorm)
MODELS.register_module('SyncSSN', module=SyncSparseSwitchableNorm)
MODELS.register_module('FixedNormModel', module=build_fixed_norm_model, force=True)
HOOKS.register_module('SNRatioHook', module=SNRatioHook)
HOOKS.register_module('SNBatchAverageHook', module=SNBatchAverageHook)
HOOKS.register_module('SSNRadiusHook', module=SSNRadiusHook)
OPTIM_WRAPPER_CONSTRUCTORS.register_module('SNOptimWrapperConstructor',
                                           module=SNOptimWrapperConstructor)
HOOKS.register_module('ExactResumeHook', module=ExactResumeHook)  # opt-in: exact resume
HOOKS.register_module('SNFiniteCheckHook', module=SNFiniteCheckHook)  # opt-in: NaN/Inf check

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

# Exemplar Normalization (issue 19): per-sample importance ratios (sn_mm.ops.exemplar_norm)
from .ops.exemplar_norm import ExemplarNorm, SyncExemplarNorm  # noqa: E402

MODELS.register_module('EN', module=ExemplarNorm)
MODELS.register_module('SyncEN', module=SyncExemplarNorm)
