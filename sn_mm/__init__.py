"""sn_mm: Switchable Normalization as a first-class norm layer for OpenMMLab.

``import sn_mm`` (``custom_imports=dict(imports=['sn_mm'])`` in a config) has these
effects, and no others:

- registers the ``torch.ops.sn_mm`` custom ops (``sn_mm.ops.functional``);
- registers ``SN``, ``SyncSN`` and the sparse ``SSN``, ``SyncSSN`` in mmengine's root
  ``MODELS`` (``sn_mm.registry``), so mmcv's ``build_norm_layer`` finds them from every
  scope (mmdet, mmseg), and ``FixedNormModel``, the builder of converted models
  (``sn_mm.deploy``);
- registers the engine pieces in the root registries (``sn_mm.engine``): the optimizer
  constructor ``SNOptimWrapperConstructor`` and the hooks ``SNRatioHook``,
  ``SNBatchAverageHook``, ``SSNRadiusHook``, and (``sn_mm.registry``) the opt-in
  ``ExactResumeHook`` and ``SNFiniteCheckHook``, used only by configs that name them;
- replaces the mmengine components listed in :mod:`sn_mm.compat` (safe checkpoint
  loaders where torch needs them, and ``'Pretrained'``, strict for SN models).

It installs no global hook: models without SN build and run exactly as without the
import (``torch.compile`` included). Without mmengine installed only the pure-torch core
(``sn_mm.ops``: the layers and the custom ops) is imported, e.g. on a GPU machine with
torch alone.
"""
import importlib.util

from .ops import (SparseSwitchableNorm, SwitchableNorm, SyncSparseSwitchableNorm,  # noqa: F401
                  SyncSwitchableNorm, convert_sync_sn, revert_sync_sn, sparsemax, sparsestmax)
from .version import __version__  # noqa: F401

if importlib.util.find_spec('mmengine') is not None:
    from . import engine  # noqa: F401  (registration side effects)
    from . import registry  # noqa: F401  (registration side effect)
    from . import deploy  # noqa: F401  (registers FixedNormModel, the converted-model builder)
    from . import compat

    compat.install()
