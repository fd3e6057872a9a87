"""sn_mm: Switchable Normalization as a first-class norm layer for OpenMMLab.

``import sn_mm`` registers ``SN`` and ``SyncSN`` in mmengine's root ``MODELS`` and
the engine pieces (optimizer constructor, hooks, safe checkpoint loading) in the
root registries, so mmdet and mmseg configs find them through ``custom_imports``.
"""
from . import engine  # noqa: F401  (registration side effects)
from . import registry  # noqa: F401  (registration side effect)
from .ops import (SwitchableNorm, SyncSwitchableNorm, convert_sync_sn,  # noqa: F401
                  revert_sync_sn)
from .version import __version__  # noqa: F401
