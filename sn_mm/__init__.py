"""sn_mm: Switchable Normalization as a first-class norm layer for OpenMMLab.

``import sn_mm`` registers ``SN`` and ``SyncSN`` in mmengine's root ``MODELS`` and
the engine pieces (optimizer constructor, hooks, safe checkpoint loading) in the
root registries, so mmdet and mmseg configs find them through ``custom_imports``.
Without mmengine installed only the pure-torch core (``sn_mm.ops``: the layers and the
``torch.ops.sn_mm`` custom ops) is available.
"""
import importlib.util

from .ops import (SwitchableNorm, SyncSwitchableNorm, convert_sync_sn,  # noqa: F401
                  revert_sync_sn)
from .version import __version__  # noqa: F401

if importlib.util.find_spec('mmengine') is not None:
    from . import engine  # noqa: F401  (registration side effects)
    from . import registry  # noqa: F401  (registration side effect)
