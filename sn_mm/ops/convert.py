"""Swap SwitchableNorm <-> SyncSwitchableNorm in a model, carrying every tensor over.

The sparse variants map likewise: SSN <-> SyncSSN.
"""
from torch import nn

from . import norm_eval
from .sparse_switchable_norm import SparseSwitchableNorm, SyncSparseSwitchableNorm
from .switchable_norm import SwitchableNorm, SyncSwitchableNorm

_SYNC_OF = {SwitchableNorm: SyncSwitchableNorm, SparseSwitchableNorm: SyncSparseSwitchableNorm}
_PLAIN_OF = {sync: plain for plain, sync in _SYNC_OF.items()}


def _rebuild(layer: SwitchableNorm, cls, **extra) -> SwitchableNorm:
    norm_eval.resolve_pending_freeze(layer)  # before the logits move to the new layer
    new = cls(layer.num_features, **layer.config(), **extra)
    # Same Parameter/buffer objects: optimizer state and sharing are preserved.
    for name, param in layer.named_parameters(recurse=False):
        setattr(new, name, param)
    for name, buf in layer.named_buffers(recurse=False):
        setattr(new, name, buf)
    owner = norm_eval.owner_of(layer)
    if owner is not None:  # keep the norm_eval owner the layer was built in
        vars(new)[norm_eval._OWNER] = owner
    new.train(layer.training)
    return new


def convert_sync_sn(module: nn.Module, process_group=None) -> nn.Module:
    """Return ``module`` with every plain ``SwitchableNorm`` replaced by ``SyncSwitchableNorm``
    (and every plain SSN by SyncSSN).

    Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: parameters and buffers are
    carried over as the same objects; ``process_group`` defaults to WORLD.
    """
    if type(module) in _SYNC_OF:
        return _rebuild(module, _SYNC_OF[type(module)], process_group=process_group)
    for name, child in module.named_children():
        new_child = convert_sync_sn(child, process_group)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


def revert_sync_sn(module: nn.Module) -> nn.Module:
    """Return ``module`` with every ``SyncSwitchableNorm`` replaced by ``SwitchableNorm``
    (a SyncSSN by an SSN)."""
    if isinstance(module, SyncSwitchableNorm):
        plain = next(_PLAIN_OF[cls] for cls in type(module).__mro__ if cls in _PLAIN_OF)
        return _rebuild(module, plain)
    for name, child in module.named_children():
        new_child = revert_sync_sn(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module
