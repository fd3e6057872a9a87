"""sn_mm: Switchable Normalization as a first-class norm layer for OpenMMLab.

``import sn_mm`` (``custom_imports=dict(imports=['sn_mm'])`` in a config) has these
effects, and no others:

- registers the ``torch.ops.sn_mm`` custom ops (``sn_mm.ops.functional``);
- registers ``SN`` and ``SyncSN`` in mmengine's root ``MODELS`` (``sn_mm.registry``), so
  mmcv's ``build_norm_layer`` finds them from every scope (mmdet, mmseg);
- registers the engine pieces in the root registries (``sn_mm.engine``): the optimizer
  constructor ``SNOptimWrapperConstructor`` and the hooks ``SNRatioHook``,
  ``SNBatchAverageHook``;
- replaces the mmengine components listed in :mod:`sn_mm.compat` (safe checkpoint
  loaders where torch needs them, and ``'Pretrained'`` with an SN ``using_bn`` check).

It installs no global hook: models without SN build and run exactly as without the
import (``torch.compile`` included). Without mmengine installed only the pure-torch core
(``sn_mm.ops``: the layers and the custom ops) is imported, e.g. on a GPU machine with
torch alone.
"""
import importlib.util

from .ops import (SwitchableNorm, SyncSwitchableNorm, convert_sync_sn,  # noqa: F401
                  revert_sync_sn)
from .version import __version__  # noqa: F401

if importlib.util.find_spec('mmengine') is not None:
    from . import engine  # noqa: F401  (registration side effects)
    from . import registry  # noqa: F401  (registration side effect)
    from . import compat

    compat.install()
