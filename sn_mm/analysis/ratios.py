r"""Learned SN importance ratios from checkpoints or live models.

Each SN layer holds two vectors of pre-softmax logits, ``mean_weight`` and
``var_weight``, one per branch of its pool (:mod:`sn_mm.ops.pool`; ``layer.pool`` gives
their order, by default [IN, LN, BN], or [IN, LN] for ``using_bn=False``). The
*ratios* (shares) are their softmaxes (for a Sparse SN layer, recognised by its ``radius``
buffer, their sparsestmax at that radius: :func:`sparsestmax_shares`),

.. math:: w_k = \frac{e^{\lambda_k}}{\sum_j e^{\lambda_j}}, \quad k \in \mathrm{pool},

computed here in float64.

**Alignment.** Every share tuple here (:data:`Shares`) is indexed by the table's names
:data:`sn_mm.ops.pool.NAMES` (``IN, LN, BN, GN``): entry ``k`` is the share of
``NAMES[k]``, a branch the layer does not mix has share 0 (the BN share of a 2-logit
layer), and the tuple stops after the last branch the layer mixes, but never before the
default pool's (``IN, LN, BN``). So an ordinary SN layer has 3 shares ``(IN, LN, BN)``,
an ``('IN', 'LN', 'BN', 'GN')`` layer 4, and ``shares[k]`` for ``k < 3`` always means IN,
LN, BN. :func:`share_of` reads one branch of any tuple; :func:`columns_of` gives the
columns of a table or figure: the default pool plus any other branch some layer mixes.

**Pools from a checkpoint.** A state dict holds the logits but not the branch names: 3 and
2 logits are the official pools; a layer with any other count needs ``branches`` (its
pool), and without it the error names the layer, the count and the option
(:func:`sn_mm.checkpoint.logit_pool`). From a live model each layer's ``pool`` is used.

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
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..checkpoint import (find_sn_layers, is_sparse_layer, logit_pool, read_checkpoint,
                          sn_layer_pool, strip_key, strip_prefix, unwrap_state_dict)
from ..ops import SwitchableNorm
from ..ops import pool as pool_table
from .layers import block_of, depth_order, stage_of

#: Shares aligned to :data:`sn_mm.ops.pool.NAMES` (see the module docstring).
Shares = Tuple[float, ...]
Branches = Optional[Sequence[str]]
DEFAULT_POOL = pool_table.DEFAULT_POOL
#: The default pool under its old name, for the modules that tabulate only its columns.
BRANCHES = DEFAULT_POOL
if pool_table.NAMES[:len(DEFAULT_POOL)] != DEFAULT_POOL:  # the alignment rule relies on it
    raise ImportError(f'sn_mm.ops.pool: NAMES {pool_table.NAMES} must start with the default '
                      f'pool {DEFAULT_POOL}')


def align(values: Sequence[float], pool: Sequence[str]) -> Shares:
    """Shares given in ``pool`` order -> the tuple aligned to :data:`~sn_mm.ops.pool.NAMES`
    (absent branches 0, at least the default pool's length)."""
    if len(values) != len(pool):
        raise ValueError(f'{len(values)} shares for the {len(pool)} branches {tuple(pool)}')
    by_name = dict(zip(pool, (float(v) for v in values)))
    size = max([len(DEFAULT_POOL)] + [pool_table.NAMES.index(b) + 1 for b in pool])
    return tuple(by_name.get(name, 0.0) for name in pool_table.NAMES[:size])


def share_of(shares: Shares, branch: str) -> float:
    """The share of ``branch`` in an aligned tuple (0 past its end: a branch not mixed)."""
    k = pool_table.NAMES.index(branch)
    return float(shares[k]) if k < len(shares) else 0.0


def _pool_of(shares_len: int, using_bn: bool) -> Tuple[str, ...]:
    names = pool_table.NAMES[:max(shares_len, len(DEFAULT_POOL))]
    return tuple(b for b in names if using_bn or not pool_table.BY_NAME[b].over_batch)


@dataclass(frozen=True)
class LayerRatios:
    """Shares of one SN layer for the mean and the variance, aligned to the table's names
    (``(IN, LN, BN)`` for the default pool; ``(IN, LN, BN, GN)`` with a GN branch).

    ``pool``: the branches the layer mixes, in the table's order; by default (``None``)
    those of ``NAMES`` up to the shares' length, without BN when ``using_bn`` is False.
    """

    name: str
    mean: Shares
    var: Shares
    using_bn: bool
    stage: str = ''
    block: str = ''
    pool: Optional[Tuple[str, ...]] = None

    def __post_init__(self):
        if len(self.mean) != len(self.var) or len(self.mean) < len(DEFAULT_POOL) or \
                len(self.mean) > len(pool_table.NAMES):
            raise ValueError(f'LayerRatios {self.name!r}: mean and var must each hold one share '
                             f'per name of {pool_table.NAMES[:len(self.mean)]} (from '
                             f'{len(DEFAULT_POOL)} to {len(pool_table.NAMES)}), got '
                             f'{len(self.mean)} and {len(self.var)}')
        pool = _pool_of(len(self.mean), self.using_bn) if self.pool is None else tuple(
            b for b in pool_table.NAMES if b in self.pool)
        object.__setattr__(self, 'pool', pool)

    def share(self, kind: str, branch: str) -> float:
        """The ``kind`` (``'mean'``/``'var'``) share of ``branch`` (0 if not mixed)."""
        return share_of(getattr(self, kind), branch)

    def as_row(self, branches: Sequence[str] = ()) -> Dict[str, object]:
        """``name, stage, block, using_bn, mean_<b>..., var_<b>...`` for the columns
        ``branches`` (default: :func:`columns_of` this layer)."""
        branches = tuple(branches) or columns_of([self])
        row = OrderedDict(name=self.name, stage=self.stage, block=self.block,
                          using_bn=self.using_bn)
        for kind in ('mean', 'var'):
            for branch in branches:
                row[f'{kind}_{branch}'] = self.share(kind, branch)
        return row

    def to_dict(self) -> dict:
        """The fields as a dict; ``pool`` only when it is not the one implied by the
        shares' length and ``using_bn`` (so an ordinary layer's dict is unchanged)."""
        out = asdict(self)
        if self.pool == _pool_of(len(self.mean), self.using_bn):
            del out['pool']
        else:
            out['pool'] = list(self.pool)
        return out


def columns_of(layers: Sequence[LayerRatios]) -> Tuple[str, ...]:
    """The branch columns of a table or figure of ``layers``: the default pool, then any
    other branch of :data:`~sn_mm.ops.pool.NAMES` that some layer mixes."""
    used = {b for layer in layers for b in layer.pool}
    return DEFAULT_POOL + tuple(b for b in pool_table.NAMES if b not in DEFAULT_POOL and b in used)


def _values(logits) -> torch.Tensor:
    values = torch.as_tensor(logits).detach().to('cpu', torch.float64).flatten()
    if not torch.isfinite(values).all():
        raise ValueError(f'importance logits must be finite, got {values.tolist()}')
    return values


def softmax_shares(logits, branches: Branches = None) -> Shares:
    """float64 softmax of one logit vector, aligned (see the module docstring).

    ``branches``: the pool behind the logits; by default 3 logits are [IN, LN, BN] and 2
    are [IN, LN] (BN share 0); any other count needs ``branches``."""
    values = torch.as_tensor(logits).detach().flatten()
    pool = logit_pool(values.numel(), branches)
    return align(torch.softmax(_values(values), 0).tolist(), pool)


def sparsestmax_shares(logits, radius, fixed=None, branches: Branches = None) -> Shares:
    """float64 sparsestmax of an SSN layer's logits at its saved ``radius`` (one-hot on
    the largest logit when its ``*_fixed`` flag is set), aligned like :func:`softmax_shares`."""
    from sn_mm.ops import sparsestmax

    values = torch.as_tensor(logits).detach().flatten()
    pool = logit_pool(values.numel(), branches)
    values = _values(values)
    if fixed is not None and bool(torch.as_tensor(fixed)):
        shares = torch.nn.functional.one_hot(values.argmax(), values.numel()).double()
    else:
        shares = sparsestmax(values, float(torch.as_tensor(radius)))
    return align(shares.tolist(), pool)


def _finish(raw: Sequence[Tuple[str, Shares, Shares, bool, Tuple[str, ...]]]
            ) -> List[LayerRatios]:
    by_name = {name: rest for name, *rest in raw}
    names = depth_order([name for name, *_ in raw])
    return [LayerRatios(name, *by_name[name][:3], stage=stage_of(name, names),
                        block=block_of(name, names), pool=by_name[name][3]) for name in names]


def layer_shares(state: Mapping, name: str, branches: Branches = None
                 ) -> Tuple[Shares, Shares]:
    """(mean, var) shares of the SN layer ``name`` of a state dict, aligned (see the module
    docstring): softmax, or sparsestmax at the saved radius for a Sparse SN layer (it has a
    ``radius``). ``branches``: the pool, needed for a count other than 3 or 2."""
    prefix = f'{name}.' if name else ''
    pool = sn_layer_pool(state, name, branches)
    mean_logits, var_logits = state[prefix + 'mean_weight'], state[prefix + 'var_weight']
    if not is_sparse_layer(state, name):
        return softmax_shares(mean_logits, pool), softmax_shares(var_logits, pool)
    radius = state[prefix + 'radius']
    return (sparsestmax_shares(mean_logits, radius, state.get(prefix + 'mean_fixed'), pool),
            sparsestmax_shares(var_logits, radius, state.get(prefix + 'var_fixed'), pool))


def ratios_from_state_dict(checkpoint: Mapping, branches: Branches = None) -> List[LayerRatios]:
    """Ratios of every SN layer of a checkpoint or state dict, in depth order.

    An SN layer is a prefix ``P`` with both ``P.mean_weight`` and ``P.var_weight``;
    ``module.`` prefixes are removed. Raises ``ValueError`` if no SN layer is found, a
    layer's two vectors differ in length, or a layer's count is neither 3 nor 2 nor that
    of ``branches`` (the pool of the layers with as many logits).
    """
    state = strip_prefix(unwrap_state_dict(checkpoint))
    raw = []
    for name in find_sn_layers(state):
        try:
            pool = sn_layer_pool(state, name, branches)
            mean, var = layer_shares(state, name, pool)
        except ValueError as err:
            message = str(err)
            raise ValueError(message if message.startswith('SN layer ')
                             else f'SN layer {name!r}: {message}') from None
        raw.append((name, mean, var, pool_table.uses_batch(pool), pool))
    if not raw:
        keys = list(state)[:5]
        raise ValueError('no SN layer found: expected keys ending in "mean_weight" and '
                         f'"var_weight" (SN importance logits); first keys are {keys}')
    return _finish(raw)


def ratios_from_model(model: nn.Module) -> List[LayerRatios]:
    """Ratios of every :class:`sn_mm.ops.SwitchableNorm` in a live model, in depth order.

    Uses ``layer.importance()`` (weights in the order of ``layer.pool``); wrappers
    (``model.module``) are looked through by name.
    """
    raw = []
    for name, module in model.named_modules():
        if isinstance(module, SwitchableNorm):
            name = strip_key(name)
            mean, var = module.importance()
            pool = tuple(module.pool)
            raw.append((name or 'sn', align(mean.cpu().flatten().tolist(), pool),
                        align(var.cpu().flatten().tolist(), pool), module.using_bn, pool))
    if not raw:
        raise ValueError(f'no SwitchableNorm layer found in {type(model).__name__}')
    return _finish(raw)


def ratios_from_checkpoint(path: str, branches: Branches = None) -> List[LayerRatios]:
    """Ratios of every SN layer of the checkpoint file at ``path`` (see module docstring)."""
    checkpoint = read_checkpoint(path)  # its errors name the file already
    try:
        return ratios_from_state_dict(checkpoint, branches)
    except ValueError as err:
        raise ValueError(f'{path}: {err}') from None


Source = Union[str, Mapping, nn.Module]


def extract_ratios(source: Source, branches: Branches = None) -> List[LayerRatios]:
    """Dispatch: a path, a checkpoint/state dict, or an ``nn.Module`` (whose layers know
    their pools; ``branches`` is for checkpoints)."""
    if isinstance(source, nn.Module):
        return ratios_from_model(source)
    if isinstance(source, Mapping):
        return ratios_from_state_dict(source, branches)
    if isinstance(source, str):
        return ratios_from_checkpoint(source, branches)
    raise TypeError(f'expected a checkpoint path, a state dict or an nn.Module, '
                    f'got {type(source).__name__}')


def _average(layers: Sequence[LayerRatios], kind: str) -> Shares:
    size = max(len(getattr(l, kind)) for l in layers)
    return tuple(math.fsum(share_of(getattr(l, kind), pool_table.NAMES[k]) for l in layers)
                 / len(layers) for k in range(size))


def average_shares(layers: Sequence[LayerRatios]) -> Dict[str, Shares]:
    """Unweighted mean over layers: ``{'mean': (IN, LN, BN), 'var': ..., 'both': ...}``,
    aligned (one more entry, GN, when a layer mixes it; a layer without a branch counts 0).

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
