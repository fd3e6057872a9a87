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
  shares [IN, LN, BN] (``--print``; softmax, or sparsestmax for SSN layers), found and computed by
  :mod:`sn_mm.analysis.ratios` (the one home of SN layer discovery and shares).

Files are read, unwrapped and their layers found by :mod:`sn_mm.checkpoint`
(``weights_only=True`` + allowlist, integrity checks) and written with ``torch.save`` (zip
format, plain Python values only).
"""
import math
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from .analysis.ratios import layer_shares
from .checkpoint import (check_sn_layer, find_bn_layers, find_sn_layers, read_checkpoint,
                         strip_prefix, unwrap_state_dict)
from .ops import BRANCHES

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
    using_bn = {state_dict[_key(n, 'mean_weight')].numel() == 3 for n in layers}
    meta = dict(converted_by='sn_mm tools/convert_checkpoint.py official',
                source=source, num_sn_layers=len(layers),
                using_bn=using_bn.pop() if len(using_bn) == 1 else 'mixed')
    for key in ('epoch', 'arch', 'best_prec1', 'best_acc1'):
        if key in extras:
            meta[key] = _plain(extras[key])
    return dict(meta=meta, state_dict=_drop_and_prefix(state_dict, keep_fc, prefix))


def bn_share_logits(bn_share: Optional[float], using_bn: bool = True) -> torch.Tensor:
    """Logits [IN, LN(, BN)]: all 1 (uniform) for ``None``, else BN share ``bn_share``."""
    if bn_share is None:
        return torch.ones(3 if using_bn else 2)
    if not using_bn:
        raise ValueError('bn_share needs the BN branch; it cannot be used with using_bn=False')
    if not (isinstance(bn_share, (int, float)) and 0.0 < bn_share < 1.0):
        raise ValueError(f'bn_share must be a number in (0, 1), got {bn_share!r}')
    return torch.tensor([0.0, 0.0, math.log(2.0 * bn_share / (1.0 - bn_share))])


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


def describe_sn(state_dict: Mapping) -> List[dict]:
    """Per SN layer: ``name``, ``channels``, ``using_bn``, ``mean``/``var`` shares (softmax;
    sparsestmax at the saved radius for Sparse SN layers:
    :func:`~sn_mm.analysis.ratios.layer_shares`)."""
    rows = []
    for name in find_sn_layers(state_dict):
        channels = check_sn_layer(state_dict, name)
        n = state_dict[_key(name, 'mean_weight')].numel()  # 3: [IN, LN, BN]; 2: [IN, LN]
        mean, var = layer_shares(state_dict, name)
        rows.append(dict(name=name, channels=channels, using_bn=n == 3,
                         mean=list(mean)[:n], var=list(var)[:n]))
    return rows


def format_sn_table(rows: List[dict]) -> str:
    """A text table of :func:`describe_sn` rows plus the average over layers."""
    if not rows:
        return 'no SN layer found'
    n_avg = sum(1 for r in rows if r['using_bn']) or len(rows)
    width = max(len(f'average ({n_avg} layers)'), max(len(r['name']) for r in rows))
    branches = BRANCHES if any(r['using_bn'] for r in rows) else BRANCHES[:2]

    def cells(values):
        values = list(values) + [float('nan')] * (len(branches) - len(values))
        return ' '.join(f'{v:6.3f}' if v == v else f'{"-":>6}' for v in values)

    head = ' '.join(f'{b:>6}' for b in branches)
    lines = [f'{"layer":<{width}}  {"C":>5}  mean: {head}  |  var: {head}']
    for r in rows:
        lines.append(f'{r["name"]:<{width}}  {r["channels"]:>5}  mean: {cells(r["mean"])}'
                     f'  |  var: {cells(r["var"])}')
    n = len(branches)
    same = [r for r in rows if len(r['mean']) == n]
    avg_mean = [sum(r['mean'][i] for r in same) / len(same) for i in range(n)]
    avg_var = [sum(r['var'][i] for r in same) / len(same) for i in range(n)]
    lines.append(f'{"average (" + str(len(same)) + " layers)":<{width}}  {"":>5}  mean: '
                 f'{cells(avg_mean)}  |  var: {cells(avg_var)}')
    return '\n'.join(lines)
