"""Pure-torch core of sn_mm: the SN math and the synchronized statistics (no mm* import)."""
from .batch_average import BatchAverage
from .convert import convert_sync_sn, revert_sync_sn
from .functional import SwitchableNormFunction, switchable_norm
from .sparse_switchable_norm import SparseSwitchableNorm, SyncSparseSwitchableNorm
from .simplex import sparsemax, sparsestmax
from .switchable_norm import BRANCHES, SwitchableNorm, SyncSwitchableNorm

__all__ = ['BatchAverage', 'BRANCHES', 'SwitchableNorm', 'SyncSwitchableNorm',
           'SwitchableNormFunction', 'switchable_norm', 'convert_sync_sn', 'revert_sync_sn',
           'SparseSwitchableNorm', 'SyncSparseSwitchableNorm', 'sparsemax', 'sparsestmax']
