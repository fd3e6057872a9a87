r"""Learned Switchable Whitening (SW) importance weights from checkpoints or live models.

An SW layer (:class:`sn_mm.ops.SwitchableWhitening`, docs/sw.md) holds the logits
``sw_mean_weight`` (means) and ``sw_var_weight`` (covariances; absent when ``tie_weight``,
then the covariances use the mean weights), one per branch in the authors' order:

- ``sw_type=1``: [BW]; ``sw_type=2``: [BW, IW]; ``sw_type=3``: [BW, IW, LN];
- ``sw_type=5``: [BW, IW, BN, IN, LN].

The shares are their softmaxes, computed here in float64,

.. math:: w_k = \frac{e^{\lambda_k}}{\sum_j e^{\lambda_j}}, \quad
          k \in \mathrm{branches}(\mathrm{sw\_type}),

so each layer's mean shares and covariance shares each sum to 1. A checkpoint holds no
``sw_type``: it is the number of logits (1, 2, 3 or 5; any other count is an error that
names the layer). An SW layer is a prefix ``P`` with ``P.sw_mean_weight``; ``module.``
prefixes are removed, and the checkpoint layouts of :mod:`sn_mm.analysis.ratios` are
accepted (mmengine, the authors' ``{'state_dict': {'module.layer1.1.sw2...'}}``, bare).

**Shown like SN's shares.** :class:`SWLayerRatios` has the interface of
:class:`sn_mm.analysis.ratios.LayerRatios` that the tables and the figure use (``name``,
``stage``, ``block``, ``using_bn``, ``share(kind, branch)``, ``as_row``), with ``kind``
``'mean'`` or ``'var'`` (the covariance weights). Its branch names are SW's, ``BW`` and
``IW`` beside the standardizations ``BN``, ``IN`` and ``LN`` that SN also mixes (the same
names, and colours in the figure, for the same statistics). :func:`columns_for` gives
the branch columns of any list of SN and SW layers: SN's (:func:`~sn_mm.analysis.ratios.
columns_of`) when there is an SN layer, then SW's branches in the order above.
"""
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from ..checkpoint import strip_key, strip_prefix, unwrap_state_dict
from ..ops import pool as pool_table
from ..ops.switchable_whitening import BATCH_BRANCHES, SW_TYPES, SwitchableWhitening
from .layers import block_of, depth_order, stage_of
from .ratios import LayerRatios, columns_of

#: SW's branches in the authors' order (that of ``sw_type=5``, which every type follows)
SW_BRANCHES = SW_TYPES[5]
if any(tuple(b for b in SW_BRANCHES if b in branches) != branches
       for branches in SW_TYPES.values()):  # columns_for relies on one order for all types
    raise ImportError(f'sn_mm.ops.switchable_whitening.SW_TYPES {SW_TYPES} must all follow '
                      f'the order of sw_type=5 {SW_BRANCHES}')
KINDS = ('mean', 'var')


@dataclass(frozen=True)
class SWLayerRatios:
    """Softmaxed importance weights of one SW layer, in the order of ``branches``.

    ``mean``: weights of the means; ``var``: weights of the covariances (equal to
    ``mean`` for a ``tie_weight`` layer, ``tied=True``).
    """

    name: str
    branches: Tuple[str, ...]
    mean: Tuple[float, ...]
    var: Tuple[float, ...]
    tied: bool = False
    stage: str = ''
    block: str = ''

    def __post_init__(self):
        if self.branches not in SW_TYPES.values():
            raise ValueError(f'SW layer {self.name!r}: branches {self.branches} are not those '
                             f'of an sw_type; expected one of {list(SW_TYPES.values())}')
        if len(self.mean) != len(self.branches) or len(self.var) != len(self.branches):
            raise ValueError(f'SW layer {self.name!r}: expected one mean and one covariance '
                             f'weight per branch of {self.branches}, got {len(self.mean)} '
                             f'and {len(self.var)}')

    @property
    def sw_type(self) -> int:
        return len(self.branches)

    @property
    def using_bn(self) -> bool:
        """True when the layer mixes a batch branch (BW or BN)."""
        return any(b in BATCH_BRANCHES for b in self.branches)

    def share(self, kind: str, branch: str) -> float:
        """The ``kind`` (``'mean'``/``'var'``) weight of ``branch`` (0 if not mixed)."""
        if kind not in KINDS:
            raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
        if branch not in self.branches:
            return 0.0
        return float(getattr(self, kind)[self.branches.index(branch)])

    def as_row(self, branches: Sequence[str] = ()) -> Dict[str, object]:
        """``name, stage, block, using_bn, mean_<b>..., var_<b>...`` for the columns
        ``branches`` (default: this layer's branches)."""
        branches = tuple(branches) or self.branches
        row = OrderedDict(name=self.name, stage=self.stage, block=self.block,
                          using_bn=self.using_bn)
        for kind in KINDS:
            for branch in branches:
                row[f'{kind}_{branch}'] = self.share(kind, branch)
        return row


def is_sw(layer) -> bool:
    return isinstance(layer, SWLayerRatios)


def share_in(layer, kind: str, branch: str) -> float:
    """``layer.share(kind, branch)`` for an SN or SW layer; 0 for an SN layer and a branch
    only SW has (``BW``, ``IW``: not normalizers of :mod:`sn_mm.ops.pool`)."""
    if not is_sw(layer) and branch in SW_BRANCHES and branch not in pool_table.NAMES:
        return 0.0
    return layer.share(kind, branch)


def row_of(layer, branches: Sequence[str]) -> Dict[str, object]:
    """``layer.as_row(branches)`` for an SN or SW layer (0 for a branch it cannot mix)."""
    if is_sw(layer):
        return layer.as_row(branches)
    row = layer.as_row([b for b in branches if b in pool_table.NAMES])
    out = OrderedDict((k, row[k]) for k in ('name', 'stage', 'block', 'using_bn'))
    for kind in KINDS:
        for branch in branches:
            out[f'{kind}_{branch}'] = share_in(layer, kind, branch)
    return out


def sw_columns(layers: Sequence[SWLayerRatios]) -> Tuple[str, ...]:
    """The branches some layer of ``layers`` mixes, in the authors' order."""
    used = {b for layer in layers for b in layer.branches}
    return tuple(b for b in SW_BRANCHES if b in used)


def columns_for(layers: Sequence) -> Tuple[str, ...]:
    """Branch columns of a table or figure of SN (:class:`LayerRatios`) and SW layers:
    SN's columns when there is an SN layer, then the SW branches not among them."""
    sn = [l for l in layers if not is_sw(l)]
    first = columns_of(sn) if sn else ()
    return first + tuple(b for b in sw_columns([l for l in layers if is_sw(l)])
                         if b not in first)


def average_weights(layers: Sequence, branches: Sequence[str]) -> Dict[str, Tuple[float, ...]]:
    """Unweighted mean over ``layers`` per column of ``branches`` (a layer without a branch
    counts 0): ``{'mean': ..., 'var': ..., 'both': ...}``, as
    :func:`sn_mm.analysis.ratios.average_shares` for SN layers."""
    if not layers:
        raise ValueError('no layers to average')
    out = OrderedDict(
        (kind, tuple(math.fsum(share_in(l, kind, b) for l in layers) / len(layers)
                     for b in branches)) for kind in KINDS)
    out['both'] = tuple((m + v) / 2 for m, v in zip(out['mean'], out['var']))
    return out


def _softmax(values, what: str) -> Tuple[float, ...]:
    values = torch.as_tensor(values).detach().to('cpu', torch.float64).flatten()
    if not torch.isfinite(values).all():
        raise ValueError(f'{what}: importance logits must be finite, got {values.tolist()}')
    return tuple(torch.softmax(values, 0).tolist())


def find_sw_layers(state_dict: Mapping) -> List[str]:
    """Names of the SW layers of a state dict, in its order: every prefix ``P`` with a
    ``P.sw_mean_weight`` (``''`` for a bare layer's keys)."""
    return [key[:-len('sw_mean_weight')].rstrip('.') for key in state_dict
            if isinstance(key, str) and (key.endswith('.sw_mean_weight')
                                         or key == 'sw_mean_weight')]


def _with_places(raw: Sequence, all_names: Sequence[str]) -> List:
    """``raw`` layers with ``stage``/``block`` set from ``all_names`` (every layer shown
    together), in depth order."""
    from dataclasses import replace
    by_name = {layer.name: layer for layer in raw}
    return [replace(by_name[n], stage=stage_of(n, all_names), block=block_of(n, all_names))
            for n in depth_order(list(by_name))]


def sw_ratios_from_state_dict(checkpoint: Mapping) -> List[SWLayerRatios]:
    """Weights of every SW layer of a checkpoint or state dict, in depth order (``[]`` when
    it has none). Raises ``ValueError`` naming the layer for a logit count that is no
    ``sw_type`` or a ``sw_var_weight`` of another length than ``sw_mean_weight``."""
    state = strip_prefix(unwrap_state_dict(checkpoint))
    raw = []
    for name in find_sw_layers(state):
        prefix = f'{name}.' if name else ''
        mean_logits = torch.as_tensor(state[prefix + 'sw_mean_weight']).flatten()
        count = mean_logits.numel()
        if count not in SW_TYPES:
            raise ValueError(f'SW layer {name!r}: {count} logits in sw_mean_weight; expected '
                             f'{sorted(SW_TYPES)} (the branches of sw_type 1, 2, 3 or 5)')
        var_key = prefix + 'sw_var_weight'
        tied = var_key not in state
        var_logits = mean_logits if tied else torch.as_tensor(state[var_key]).flatten()
        if var_logits.numel() != count:
            raise ValueError(f'SW layer {name!r}: sw_var_weight has {var_logits.numel()} '
                             f'logits, sw_mean_weight {count}; expected the same sw_type')
        what = f'SW layer {name!r}'
        raw.append(SWLayerRatios(name or 'sw', SW_TYPES[count], _softmax(mean_logits, what),
                                 _softmax(var_logits, what), tied))
    return _with_places(raw, [l.name for l in raw])


def sw_ratios_from_model(model: nn.Module) -> List[SWLayerRatios]:
    """Weights of every :class:`~sn_mm.ops.SwitchableWhitening` (SyncSW too) of a live
    model, in depth order, from ``layer.importance()`` (float64 softmax of its logits);
    ``[]`` when it has none. Wrappers (``model.module``) are looked through by name."""
    raw = []
    for name, module in model.named_modules():
        if isinstance(module, SwitchableWhitening):
            what = f'SW layer {name!r}'
            mean_logits = module.sw_mean_weight
            tied = module.sw_var_weight is None
            var_logits = mean_logits if tied else module.sw_var_weight
            raw.append(SWLayerRatios(strip_key(name) or 'sw', tuple(module.branches),
                                     _softmax(mean_logits, what), _softmax(var_logits, what),
                                     tied))
    return _with_places(raw, [l.name for l in raw])


def place_together(layers: Sequence) -> List:
    """SN and SW layers of one model in one depth order, their stages and blocks named
    over all of them (as :mod:`sn_mm.analysis.layers` does for the layers of one kind)."""
    names = [l.name for l in layers]
    return _with_places(layers, names)


def format_sw_table(label: str, layers: Sequence[SWLayerRatios]) -> str:
    """Aligned text table of SW layers with an "average" line (unweighted over layers),
    as :func:`sn_mm.analysis.table.format_table` for SN layers; ``var_`` columns are the
    covariance weights."""
    if not layers:
        raise ValueError(f'{label}: no SW layers to tabulate')
    branches = sw_columns(layers)
    width = max([len('layer'), len('average')] + [len(l.name) for l in layers])
    head = f'{"layer":<{width}}  ' + '  '.join(f'mean_{b:<2}' for b in branches) + '  ' + \
        '  '.join(f'var_{b:<3}' for b in branches)
    tied = sum(l.tied for l in layers)
    lines = [f'# {label}: {len(layers)} SW layers, weights [{", ".join(branches)}] after '
             'softmax (mean: of the means, var: of the covariances'
             + (f'; {tied} tie_weight layers use one set' if tied else '') + ')',
             head, '-' * len(head)]

    def fmt(name, values):
        return f'{name:<{width}}  ' + '  '.join(f'{v:7.3f}' for v in values)

    for layer in layers:
        lines.append(fmt(layer.name, [layer.share(k, b) for k in KINDS for b in branches]))
    avg = average_weights(layers, branches)
    lines.append('-' * len(head))
    lines.append(fmt('average', list(avg['mean']) + list(avg['var'])))
    return '\n'.join(lines)


def split_kinds(layers: Sequence) -> Tuple[List[LayerRatios], List[SWLayerRatios]]:
    """(SN layers, SW layers) of a mixed list, each in its order."""
    return [l for l in layers if not is_sw(l)], [l for l in layers if is_sw(l)]


def layers_from_state_dict(checkpoint: Mapping, branches=None) -> List:
    """Every SN layer (:func:`~sn_mm.analysis.ratios.ratios_from_state_dict`, ``branches``
    as there) and every SW layer of a checkpoint, in one depth order. Raises
    ``ValueError`` when it has neither."""
    from ..checkpoint import find_sn_layers
    from .ratios import ratios_from_state_dict
    state = strip_prefix(unwrap_state_dict(checkpoint))
    sn = ratios_from_state_dict(state, branches) if find_sn_layers(state) else []
    sw = sw_ratios_from_state_dict(state)
    if not sn and not sw:
        keys = list(state)[:5]
        raise ValueError('no SN or SW layer found: expected keys ending in "mean_weight" and '
                         '"var_weight" (SN importance logits) or "sw_mean_weight" (SW); first '
                         f'keys are {keys} (Exemplar Normalization: --en-ratios CONFIG CKPT)')
    return place_together(sn + sw)


def layers_from_checkpoint(path: str, branches=None) -> List:
    """:func:`layers_from_state_dict` of the checkpoint file at ``path``."""
    from ..checkpoint import read_checkpoint
    checkpoint = read_checkpoint(path)  # its errors name the file already
    try:
        return layers_from_state_dict(checkpoint, branches)
    except ValueError as err:
        raise ValueError(f'{path}: {err}') from None
