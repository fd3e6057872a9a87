"""sn_mm: Switchable Normalization as a first-class norm layer for OpenMMLab.

``import sn_mm`` registers ``SN``, ``SyncSN`` and the sparse ``SSN``, ``SyncSSN`` in
mmengine's root ``MODELS`` and the engine pieces (optimizer constructor, hooks, safe checkpoint loading) in the
root registries, so mmdet and mmseg configs find them through ``custom_imports``.
"""
from . import engine  # noqa: F401  (registration side effects)
from . import registry  # noqa: F401  (registration side effect)
from . import deploy  # noqa: F401  (registers FixedNormModel, the converted-model builder)
from .ops import (SparseSwitchableNorm, SwitchableNorm, SyncSparseSwitchableNorm,  # noqa: F401
                  SyncSwitchableNorm, convert_sync_sn, revert_sync_sn, sparsemax, sparsestmax)
from .version import __version__  # noqa: F401
