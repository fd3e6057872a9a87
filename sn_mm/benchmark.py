"""Measurements that ``bench/`` reports and the tests check (pure torch, no mm* import).

:func:`saved_bytes` counts what a layer keeps for backward: every tensor autograd saves
during one forward passes through ``torch.autograd.graph.saved_tensors_hooks``' pack hook;
the bytes of their *unique* storages are summed (a view of ``x`` and ``x`` itself count
once; a tensor without a storage, e.g. a wrapper subclass, counts zero).
"""
from typing import Optional, Tuple

import torch
from torch import nn


def saved_bytes(layer: nn.Module, x: torch.Tensor,
                autocast: Optional[Tuple[str, torch.dtype]] = None) -> int:
    """Bytes of the unique storages ``layer(x)`` saves for backward.

    Args:
        layer: the module to run (its current train/eval mode is used).
        x: the input; it must require grad for the input's own storage to be counted where
            the backward needs it.
        autocast: ``(device_type, dtype)`` to run the forward under ``torch.autocast``
            (e.g. ``('cpu', torch.bfloat16)``), or None for none.
    """
    if autocast is not None and (not isinstance(autocast, tuple) or len(autocast) != 2):
        raise ValueError(f'autocast must be (device_type, dtype) or None, got {autocast!r}')
    storages = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if autocast is None:
            y = layer(x)
        else:
            with torch.autocast(autocast[0], dtype=autocast[1]):
                y = layer(x)
    del y
    return sum(storages.values())
