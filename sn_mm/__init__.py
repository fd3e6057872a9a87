"""sn_mm: Switchable Normalization as a first-class norm layer for OpenMMLab.

``import sn_mm`` (``custom_imports=dict(imports=['sn_mm'])`` in a config) has these
effects, and no others:

- registers the ``torch.ops.sn_mm`` custom ops (``sn_mm.ops.functional``);
- registers, in mmengine's root registries, everything listed in :mod:`sn_mm.registry`
  (the one place where sn_mm adds names): ``SN``, ``SyncSN`` and the sparse ``SSN``,
  ``SyncSSN`` in ``MODELS`` (so mmcv's ``build_norm_layer`` finds them from every scope:
  mmdet, mmseg), ``FixedNormModel`` (the builder of converted models, ``sn_mm.deploy.mm``),
  the optimizer constructor ``SNOptimWrapperConstructor`` and the hooks ``SNRatioHook``,
  ``SNBatchAverageHook``, ``SSNRadiusHook`` and the opt-in ``ExactResumeHook``,
  ``SNFiniteCheckHook`` (used only by configs that name them);
- replaces the mmengine components listed in :mod:`sn_mm.compat` (safe checkpoint
  loaders where torch needs them, and ``'Pretrained'``, strict for SN models).

It installs no global hook: models without SN build and run exactly as without the
import (``torch.compile`` included). Without mmengine installed only the pure-torch core
(``sn_mm.ops``: the layers and the custom ops) is imported, e.g. on a GPU machine with
torch alone; ``sn_mm.ops`` and ``sn_mm.deploy`` (:func:`sn_mm.deploy.to_fixed_norms`)
import no mm* package either way.
"""
import importlib.util

from .ops import (SparseSwitchableNorm, SwitchableNorm, SyncSparseSwitchableNorm,  # noqa: F401
                  SyncSwitchableNorm, convert_sync_sn, revert_sync_sn, sparsemax, sparsestmax)
from .version import __version__  # noqa: F401

if importlib.util.find_spec('mmengine') is not None:
    from . import registry  # noqa: F401  (every registration: sn_mm/registry.py)
    from . import compat

    compat.install()
