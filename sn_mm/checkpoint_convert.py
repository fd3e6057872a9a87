r"""Checkpoint conversion and inspection for SN ResNets (library of tools/convert_checkpoint.py).

Three jobs:

- :func:`official_to_mmengine` — an official SN ImageNet checkpoint (``state_dict``
  under ``module.``, SN ``weight``/``bias`` shaped (1,C,1,1), running statistics
  (1,C,1), optional ``epoch``/``best_prec1``/``optimizer``) -> a clean mmengine
  checkpoint ``{'meta': {...}, 'state_dict': {...}}``: no ``module.`` prefix, 1-D
  SN tensors, the optimizer dropped, ``fc.*`` dropped unless asked for, an optional
  key prefix (``backbone.`` makes it a ``load_from`` file for a whole detector).
  Loading the official file directly through ``init_cfg=dict(type='Pretrained')``
  works as well; the conversion gives a smaller file with a clean key report.
- :func:`bn_to_sn` — a BN ResNet state dict (torchvision layout: ``bn1``,
  ``layerK.i.bnJ``, ``layerK.0.downsample.1``) -> an SN initialization: conv
  weights, ``weight``/``bias`` and running statistics copied, ``bnJ`` renamed
  ``snJ`` (mmdet/mmseg's names for SN layers), ``num_batches_tracked`` dropped, and
  importance logits either uniform (all 1, the official initialization: softmax
  shares 1/3 each) or biased toward BN: with ``bn_share = p`` the logits are
  ``[IN, LN, BN] = [0, 0, log(2p / (1 - p))]`` for both the mean and the variance,
  so ``softmax`` gives BN ``p`` and IN, LN ``(1 - p) / 2`` each.
- :func:`describe_sn` / :func:`format_sn_table` — each SN layer's mean and variance
  shares [IN, LN, BN] (``--print``; softmax, or sparsestmax for SSN layers; another pool,
  e.g. with a GN branch, with ``branches``/``--branches``), found and computed by
  :mod:`sn_mm.analysis.ratios` (the one home of SN layer discovery and shares).

Files are read, unwrapped and their layers found by :mod:`sn_mm.checkpoint`
(``weights_only=True`` + allowlist, integrity checks) and written with ``torch.save`` (zip
format, plain Python values only).
"""
import math
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .analysis.ratios import layer_shares, share_of
from .checkpoint import (check_sn_layer, find_bn_layers, find_sn_layers, read_checkpoint,
                         sn_layer_pool, strip_prefix, unwrap_state_dict)
from .ops import pool as pool_table

__all__ = ['read_checkpoint', 'split_checkpoint', 'strip_prefix', 'find_sn_layers',
           'find_bn_layers', 'official_to_mmengine', 'bn_to_sn', 'bn_share_logits',
           'describe_sn', 'format_sn_table', 'HEAD_PREFIXES']

SN_PARAMS = ('weight', 'bias', 'mean_weight', 'var_weight')
SN_BUFFERS = ('running_mean', 'running_var')
BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var')
#: ImageNet classifier keys dropped unless ``keep_fc`` (they never match a backbone).
HEAD_PREFIXES = ('fc.',)


def split_checkpoint(ckpt: Mapping) -> Tuple['OrderedDict[str, torch.Tensor]', dict]:
    """``(state_dict, everything else)``; a bare state dict has no extras."""
    state_dict = unwrap_state_dict(ckpt)
    extras = {} if state_dict is ckpt else {k: v for k, v in ckpt.items()
                                            if ckpt.get(k) is not state_dict}
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f'state dict entries must be tensors; not tensors: {bad[:5]}')
    return OrderedDict(state_dict.items()), extras


def _key(name: str, attr: str) -> str:
    return f'{name}.{attr}' if name else attr


def _plain(value):
    """Checkpoint extras as plain Python values (safe to load anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


def _drop_and_prefix(state_dict: Mapping, keep_fc: bool, prefix: str) -> 'OrderedDict':
    out = OrderedDict()
    for key, value in state_dict.items():
        if not keep_fc and key.startswith(HEAD_PREFIXES):
            continue
        out[prefix + key] = value
    return out


def official_to_mmengine(ckpt: Mapping, prefix: str = '', keep_fc: bool = False,
                         source: Optional[str] = None) -> dict:
    """Official SN checkpoint (any variant) -> ``{'meta': ..., 'state_dict': ...}``."""
    state_dict, extras = split_checkpoint(ckpt)
    state_dict = strip_prefix(state_dict, 'module.')
    layers = find_sn_layers(state_dict)
    if not layers:
        raise ValueError('no SN layer (mean_weight + var_weight) found: not an SN checkpoint'
                         + (f' ({source})' if source else ''))
    for name in layers:
        channels = check_sn_layer(state_dict, name)
        for attr in ('weight', 'bias') + SN_BUFFERS:
            key = _key(name, attr)
            if key in state_dict:
                state_dict[key] = state_dict[key].reshape(channels).clone()
    using_bn = {pool_table.uses_batch(sn_layer_pool(state_dict, n)) for n in layers}
    meta = dict(converted_by='sn_mm tools/convert_checkpoint.py official',
                source=source, num_sn_layers=len(layers),
                using_bn=using_bn.pop() if len(using_bn) == 1 else 'mixed')
    for key in ('epoch', 'arch', 'best_prec1', 'best_acc1'):
        if key in extras:
            meta[key] = _plain(extras[key])
    return dict(meta=meta, state_dict=_drop_and_prefix(state_dict, keep_fc, prefix))


def bn_share_logits(bn_share: Optional[float], using_bn: bool = True) -> torch.Tensor:
    """Logits of the default pool [IN, LN(, BN)] (:func:`sn_mm.ops.pool.resolve_pool`): all
    1 (uniform) for ``None``, else BN share ``bn_share`` (the others share the rest)."""
    pool = pool_table.resolve_pool(None, using_bn)
    if bn_share is None:
        return torch.ones(len(pool))
    if not using_bn:
        raise ValueError('bn_share needs the BN branch; it cannot be used with using_bn=False')
    if not (isinstance(bn_share, (int, float)) and 0.0 < bn_share < 1.0):
        raise ValueError(f'bn_share must be a number in (0, 1), got {bn_share!r}')
    logits = torch.zeros(len(pool))
    logits[pool.index('BN')] = math.log((len(pool) - 1) * bn_share / (1.0 - bn_share))
    return logits


_BN_NAME = re.compile(r'^bn(\d*)$')


def _sn_name(name: str) -> str:
    head, _, last = name.rpartition('.')
    match = _BN_NAME.match(last)
    if not match:
        return name
    new = f'sn{match.group(1)}'
    return f'{head}.{new}' if head else new


def bn_to_sn(state_dict: Mapping, bn_share: Optional[float] = None, using_bn: bool = True,
             keep_fc: bool = False, prefix: str = '') -> 'OrderedDict[str, torch.Tensor]':
    """BN ResNet state dict -> SN initialization (see module docstring)."""
    state_dict = OrderedDict(state_dict)
    bn_layers = find_bn_layers(state_dict)
    if not bn_layers:
        raise ValueError('no BN layer (1-D weight, bias, running_mean, running_var) found')
    logits = bn_share_logits(bn_share, using_bn)
    renamed: Dict[str, str] = {name: _sn_name(name) for name in bn_layers}
    out = OrderedDict()
    for key, value in state_dict.items():
        name, _, attr = key.rpartition('.')
        if name in renamed and attr in BN_KEYS + ('num_batches_tracked',):
            if attr == 'num_batches_tracked' or (not using_bn and attr in SN_BUFFERS):
                continue
            new = _key(renamed[name], attr)
            out[new] = value.clone()
            if attr == 'bias':  # logits right after the affine, as SN's state_dict orders them
                out[_key(renamed[name], 'mean_weight')] = logits.clone()
                out[_key(renamed[name], 'var_weight')] = logits.clone()
        else:
            out[key] = value
    return _drop_and_prefix(out, keep_fc, prefix)


def _table_order(pool) -> Tuple[str, ...]:
    return tuple(b for b in pool_table.NAMES if b in pool)


def describe_sn(state_dict: Mapping, branches: Optional[Sequence[str]] = None) -> List[dict]:
    """Per SN layer: ``name``, ``channels``, ``using_bn``, ``mean``/``var`` shares of the
    branches it mixes, in the table's order (softmax; sparsestmax at the saved radius for
    Sparse SN layers: :func:`~sn_mm.analysis.ratios.layer_shares`), and ``branches`` (those
    names) when the pool is not an official one ([IN, LN, BN] for 3 logits, [IN, LN] for
    2, which the counts imply). ``branches``: the pool of the layers with as many logits
    (:func:`sn_mm.checkpoint.logit_pool`; needed for counts other than 3 and 2)."""
    rows = []
    for name in find_sn_layers(state_dict):
        channels = check_sn_layer(state_dict, name, branches)
        pool = sn_layer_pool(state_dict, name, branches)
        mean, var = layer_shares(state_dict, name, pool)
        order = _table_order(pool)
        row = dict(name=name, channels=channels, using_bn=pool_table.uses_batch(pool),
                   mean=[share_of(mean, b) for b in order],
                   var=[share_of(var, b) for b in order])
        if pool not in pool_table.OFFICIAL_POOLS:
            row['branches'] = list(order)
        rows.append(row)
    return rows


def _row_pool(row: dict) -> Tuple[str, ...]:
    return tuple(row['branches']) if 'branches' in row else \
        _table_order(pool_table.pool_of_logits(len(row['mean'])))


def format_sn_table(rows: List[dict]) -> str:
    """A text table of :func:`describe_sn` rows plus the average over the layers that mix
    every column. Columns: IN, LN (and BN when a layer has it), then any other branch of
    :data:`sn_mm.ops.pool.NAMES` that a layer mixes; ``-`` where a layer does not."""
    if not rows:
        return 'no SN layer found'
    pools = [_row_pool(r) for r in rows]
    used = {b for pool in pools for b in pool}
    branches = tuple(b for b in pool_table.NAMES
                     if b in used or (b in pool_table.DEFAULT_POOL
                                      and not pool_table.BY_NAME[b].over_batch))
    shares = [{kind: dict(zip(pool, r[kind])) for kind in ('mean', 'var')}
              for r, pool in zip(rows, pools)]
    same = [s for s, pool in zip(shares, pools) if set(branches) <= set(pool)]
    width = max(len(f'average ({len(same)} layers)'), max(len(r['name']) for r in rows))

    def cells(values: Dict[str, float]):
        return ' '.join(f'{values[b]:6.3f}' if b in values else f'{"-":>6}' for b in branches)

    head = ' '.join(f'{b:>6}' for b in branches)
    lines = [f'{"layer":<{width}}  {"C":>5}  mean: {head}  |  var: {head}']
    for r, s in zip(rows, shares):
        lines.append(f'{r["name"]:<{width}}  {r["channels"]:>5}  mean: {cells(s["mean"])}'
                     f'  |  var: {cells(s["var"])}')
    if not same:
        lines.append(f'no layer mixes every branch ({", ".join(branches)}): no average')
        return '\n'.join(lines)
    avg = {kind: {b: sum(s[kind][b] for s in same) / len(same) for b in branches}
           for kind in ('mean', 'var')}
    lines.append(f'{"average (" + str(len(same)) + " layers)":<{width}}  {"":>5}  mean: '
                 f'{cells(avg["mean"])}  |  var: {cells(avg["var"])}')
    return '\n'.join(lines)
