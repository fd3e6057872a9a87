r"""Learned SN importance ratios from checkpoints or live models.

Each SN layer holds two vectors of pre-softmax logits, ``mean_weight`` and
``var_weight``, in the order [IN, LN, BN] (or [IN, LN] for ``using_bn=False``). The
*ratios* (shares) are their softmaxes (for a Sparse SN layer, recognised by its ``radius``
buffer, their sparsestmax at that radius: :func:`sparsestmax_shares`),

.. math:: w_k = \frac{e^{\lambda_k}}{\sum_j e^{\lambda_j}}, \quad k \in \{IN, LN, BN\},

computed here in float64. A 2-logit layer gets a BN share of exactly 0.

Accepted checkpoint layouts:

- mmengine: ``{'meta': ..., 'state_dict': {'backbone.layer1.0.sn1.mean_weight': ...}}``;
- official SN: ``{'state_dict': {'module.layer1.0.sn1.mean_weight': (3,), ...}, 'epoch': ...}``
  with (1, C, 1, 1) affine parameters (shapes other than the logits' are not used);
- a bare state dict, or ``{'model': state_dict}``.

Every leading ``module.`` (DataParallel/DDP) is removed from every key.

This module is the one place that finds SN layers and their shares, in a live model or
in a checkpoint of either layout: the converter (``sn_mm.checkpoint_convert``), the
hooks (``sn_mm.engine``), the demos (``sn_mm.apis``) and the analysis tools call it.
Files are read, unwrapped and their SN layers found by :mod:`sn_mm.checkpoint`.
"""
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from ..checkpoint import (find_sn_layers, is_sparse_layer, read_checkpoint, strip_key,
                          strip_prefix, unwrap_state_dict)
from ..ops import BRANCHES, SwitchableNorm
from .layers import block_of, depth_order, stage_of

Shares = Tuple[float, float, float]


@dataclass(frozen=True)
class LayerRatios:
    """Softmaxed shares of one SN layer, [IN, LN, BN] for the mean and the variance."""

    name: str
    mean: Shares
    var: Shares
    using_bn: bool
    stage: str = ''
    block: str = ''

    def as_row(self) -> Dict[str, object]:
        row = OrderedDict(name=self.name, stage=self.stage, block=self.block,
                          using_bn=self.using_bn)
        for kind in ('mean', 'var'):
            for branch, value in zip(BRANCHES, getattr(self, kind)):
                row[f'{kind}_{branch}'] = value
        return row

    def to_dict(self) -> dict:
        return asdict(self)


def softmax_shares(logits) -> Shares:
    """float64 softmax of 2 or 3 logits [IN, LN(, BN)] -> (IN, LN, BN), BN = 0 for 2."""
    values = torch.as_tensor(logits).detach().to('cpu', torch.float64).flatten()
    if values.numel() not in (2, 3):
        raise ValueError(f'expected 2 ([IN, LN]) or 3 ([IN, LN, BN]) importance logits, '
                         f'got {values.numel()}: {values.tolist()}')
    if not torch.isfinite(values).all():
        raise ValueError(f'importance logits must be finite, got {values.tolist()}')
    shares = torch.softmax(values, 0).tolist()
    if len(shares) == 2:
        shares.append(0.0)
    return tuple(shares)


def sparsestmax_shares(logits, radius, fixed=None) -> Shares:
    """float64 sparsestmax of an SSN layer's 2 or 3 logits at its saved ``radius``
    (one-hot on the largest logit when its ``*_fixed`` flag is set) -> (IN, LN, BN)."""
    from sn_mm.ops import sparsestmax

    values = torch.as_tensor(logits).detach().to('cpu', torch.float64).flatten()
    softmax_shares(values)  # the same validation (2 or 3 finite logits)
    if fixed is not None and bool(torch.as_tensor(fixed)):
        shares = torch.nn.functional.one_hot(values.argmax(), values.numel()).double()
    else:
        shares = sparsestmax(values, float(torch.as_tensor(radius)))
    shares = shares.tolist()
    if len(shares) == 2:
        shares.append(0.0)
    return tuple(shares)


def _finish(raw: Sequence[Tuple[str, Shares, Shares, bool]]) -> List[LayerRatios]:
    by_name = {name: (mean, var, using_bn) for name, mean, var, using_bn in raw}
    names = depth_order([name for name, *_ in raw])
    return [LayerRatios(name, *by_name[name], stage=stage_of(name, names),
                        block=block_of(name, names)) for name in names]


def layer_shares(state: Mapping, name: str) -> Tuple[Shares, Shares]:
    """(mean, var) shares (IN, LN, BN) of the SN layer ``name`` of a state dict: softmax,
    or sparsestmax at the saved radius for a Sparse SN layer (it has a ``radius``)."""
    prefix = f'{name}.' if name else ''
    mean_logits, var_logits = state[prefix + 'mean_weight'], state[prefix + 'var_weight']
    if not is_sparse_layer(state, name):
        return softmax_shares(mean_logits), softmax_shares(var_logits)
    radius = state[prefix + 'radius']
    return (sparsestmax_shares(mean_logits, radius, state.get(prefix + 'mean_fixed')),
            sparsestmax_shares(var_logits, radius, state.get(prefix + 'var_fixed')))


def ratios_from_state_dict(checkpoint: Mapping) -> List[LayerRatios]:
    """Ratios of every SN layer of a checkpoint or state dict, in depth order.

    An SN layer is a prefix ``P`` with both ``P.mean_weight`` and ``P.var_weight``;
    ``module.`` prefixes are removed. Raises ``ValueError`` if no SN layer is found or
    a layer's logits are not 2 or 3 values, or its two vectors differ in length.
    """
    state = strip_prefix(unwrap_state_dict(checkpoint))
    raw = []
    for name in find_sn_layers(state):
        prefix = f'{name}.' if name else ''
        mean_logits, var_logits = state[prefix + 'mean_weight'], state[prefix + 'var_weight']
        mean_logits, var_logits = torch.as_tensor(mean_logits), torch.as_tensor(var_logits)
        if mean_logits.numel() != var_logits.numel():
            raise ValueError(f'{prefix}mean_weight has {mean_logits.numel()} logits but '
                             f'{prefix}var_weight has {var_logits.numel()}; expected equal '
                             'lengths (3: [IN, LN, BN] or 2: [IN, LN])')
        try:
            mean, var = layer_shares(state, name)
        except ValueError as err:
            raise ValueError(f'SN layer {name!r}: {err}') from None
        raw.append((name, mean, var, mean_logits.numel() == 3))
    if not raw:
        keys = list(state)[:5]
        raise ValueError('no SN layer found: expected keys ending in "mean_weight" and '
                         f'"var_weight" (SN importance logits); first keys are {keys}')
    return _finish(raw)


def ratios_from_model(model: nn.Module) -> List[LayerRatios]:
    """Ratios of every :class:`sn_mm.ops.SwitchableNorm` in a live model, in depth order.

    Uses ``layer.importance()``; wrappers (``model.module``) are looked through by name.
    """
    raw = []
    for name, module in model.named_modules():
        if isinstance(module, SwitchableNorm):
            name = strip_key(name)
            mean, var = module.importance()
            raw.append((name or 'sn', _pad(mean), _pad(var), module.using_bn))
    if not raw:
        raise ValueError(f'no SwitchableNorm layer found in {type(model).__name__}')
    return _finish(raw)


def _pad(weights: torch.Tensor) -> Shares:
    values = [float(v) for v in weights.detach().cpu().flatten()]
    if len(values) == 2:
        values.append(0.0)
    return tuple(values)


def ratios_from_checkpoint(path: str) -> List[LayerRatios]:
    """Ratios of every SN layer of the checkpoint file at ``path`` (see module docstring)."""
    checkpoint = read_checkpoint(path)  # its errors name the file already
    try:
        return ratios_from_state_dict(checkpoint)
    except ValueError as err:
        raise ValueError(f'{path}: {err}') from None


Source = Union[str, Mapping, nn.Module]


def extract_ratios(source: Source) -> List[LayerRatios]:
    """Dispatch: a path, a checkpoint/state dict, or an ``nn.Module``."""
    if isinstance(source, nn.Module):
        return ratios_from_model(source)
    if isinstance(source, Mapping):
        return ratios_from_state_dict(source)
    if isinstance(source, str):
        return ratios_from_checkpoint(source)
    raise TypeError(f'expected a checkpoint path, a state dict or an nn.Module, '
                    f'got {type(source).__name__}')


def _average(layers: Sequence[LayerRatios], kind: str) -> Shares:
    return tuple(math.fsum(getattr(l, kind)[k] for l in layers) / len(layers) for k in range(3))


def average_shares(layers: Sequence[LayerRatios]) -> Dict[str, Shares]:
    """Unweighted mean over layers: ``{'mean': (IN, LN, BN), 'var': ..., 'both': ...}``.

    ``both`` is the mean of the mean and variance shares (the paper's "ratio averaged
    over layers" is read this way when one number per normalizer is quoted).
    """
    if not layers:
        raise ValueError('no layers to average')
    mean, var = _average(layers, 'mean'), _average(layers, 'var')
    return OrderedDict(mean=mean, var=var, both=tuple((m + v) / 2 for m, v in zip(mean, var)))


def stage_averages(layers: Sequence[LayerRatios]) -> 'OrderedDict[str, Dict[str, Shares]]':
    """:func:`average_shares` per stage, stages in depth order."""
    groups: 'OrderedDict[str, List[LayerRatios]]' = OrderedDict()
    for layer in layers:
        groups.setdefault(layer.stage, []).append(layer)
    return OrderedDict((stage, average_shares(group)) for stage, group in groups.items())
