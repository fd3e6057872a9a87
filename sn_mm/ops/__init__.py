"""Pure-torch core of sn_mm: the SN math and the synchronized statistics (no mm* import).

``import sn_mm.ops`` registers the ``torch.ops.sn_mm`` custom ops (``functional``).
"""
from .batch_average import BatchAverage
from .convert import convert_sync_sn, revert_sync_sn
from .functional import switchable_norm
from .simplex import sparsemax, sparsestmax
from .sparse_switchable_norm import SparseSwitchableNorm, SyncSparseSwitchableNorm
from .switchable_norm import BRANCHES, SwitchableNorm, SyncSwitchableNorm
from .switchable_whitening import SwitchableWhitening, SyncSwitchableWhitening

__all__ = ['BatchAverage', 'BRANCHES', 'SwitchableNorm', 'SyncSwitchableNorm',
           'switchable_norm', 'convert_sync_sn', 'revert_sync_sn',
           'SparseSwitchableNorm', 'SyncSparseSwitchableNorm', 'sparsemax', 'sparsestmax',
           'SwitchableWhitening', 'SyncSwitchableWhitening']
