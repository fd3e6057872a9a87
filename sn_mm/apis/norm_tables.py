"""Which config each normalizer trains in the comparisons, as rows of
:mod:`sn_mm.apis.compare` (``tools/compare_norms_det.py``, ``tools/compare_norms_seg.py``).

To compare another normalizer, add one line to :data:`DET_NORMS` or :data:`SEG_NORMS`
(and its demo configs). A row name ``<norm>@lr<x>`` trains ``<norm>``'s config with the
parameters that learn the mixture at ``x`` times the learning rate
(``optim_wrapper.paramwise_cfg.sn_lr_mult``; the demo configs use 30): SN's importance
logits, SW's (``sw_mean_weight``/``sw_var_weight``), EN's ratio network. A row whose
model learns no mixture (:data:`NO_LOGITS`: BN, GN) would train the same model with
``@lr<x>``, and is an error. Config folders
are arguments: the package does not know where a source checkout is.
"""
import re
from typing import List, Optional, Sequence, Tuple

from .compare import Row

#: detection: name -> (table label "backbone / FPN + heads", demo config file name)
DET_NORMS = {
    'bn': ('BN / BN', 'mask-rcnn_r18_fpn_bn-all_coco-demo.py'),
    'syncbn': ('SyncBN / SyncBN', 'mask-rcnn_r18_fpn_syncbn-all_coco-demo.py'),
    'gn': ('GN / GN', 'mask-rcnn_r18_fpn_gn-all_coco-demo.py'),
    'sn': ('SN / SN', 'mask-rcnn_r18_fpn_sn-all_coco-demo.py'),
    'syncsn': ('SyncSN / SyncSN', 'mask-rcnn_r18_fpn_syncsn-all_coco-demo.py'),
    'bn_sn-head': ('BN / SN', 'mask-rcnn_r18_fpn_bn_sn-head_coco-demo.py'),
    'bn_gn-head': ('BN / GN', 'mask-rcnn_r18_fpn_bn_gn-head_coco-demo.py'),
    'gn_sn-head': ('GN / SN', 'mask-rcnn_r18_fpn_gn_sn-head_coco-demo.py'),
    'ssn': ('SSN / SSN', 'mask-rcnn_r18_fpn_ssn-all_coco-demo.py'),
    'sw': ('SW / SW (BW+IW)', 'mask-rcnn_r18_fpn_sw-all_coco-demo.py'),
    'en': ('EN / EN', 'mask-rcnn_r18_fpn_en-all_coco-demo.py'),
}

#: segmentation: name (the ``-<norm>_`` of configs/seg_demo/*) -> table label
SEG_NORMS = {'syncbn': 'SyncBN (= BN on one process)', 'gn': 'GN (16 groups)', 'sn': 'SN',
             'syncsn': 'SyncSN (= SN on one process)', 'ssn': 'SSN (sparsestmax)',
             'sw': 'SW (BW+IW)', 'en': 'EN'}
SEG_TITLES = {'cityscapes': 'Cityscapes-layout demo', 'ade20k': 'ADE20K-layout demo'}
#: the sn_lr_mult of the demo configs
DEMO_SN_LR_MULT = 30.0
#: rows whose models learn no mixture, so ``sn_lr_mult`` has nothing to scale
NO_LOGITS = frozenset({'bn', 'syncbn', 'gn', 'bn_gn-head'})
#: the row every other row is compared to
REFERENCE = 'sn'


def parse_row_name(name: str, norms) -> Tuple[str, Optional[float]]:
    """``'sn@lr1'`` -> ``('sn', 1.0)``; ``'gn'`` -> ``('gn', None)``."""
    match = re.fullmatch(r'([A-Za-z0-9_-]+)(?:@lr([0-9]+(?:\.[0-9]+)?))?', name)
    if match is None or match.group(1) not in norms:
        raise ValueError(f'unknown row {name!r}; expected a normalizer of {sorted(norms)}, '
                         "optionally with '@lr<sn_lr_mult>' (for example 'sn@lr1')")
    if match.group(2) is not None and match.group(1) in NO_LOGITS:
        raise ValueError(f'row {name!r}: {match.group(1)!r} has no importance logits, so '
                         f'sn_lr_mult changes nothing (it scales the logits of SN, SSN and '
                         f'SW and the ratio network of EN); use {match.group(1)!r}')
    return match.group(1), None if match.group(2) is None else float(match.group(2))


def _lr_options(mult: Optional[float]) -> dict:
    if mult is None:
        return {}
    return {'optim_wrapper.paramwise_cfg.sn_lr_mult': mult}


def _lr_label(label: str, mult: Optional[float]) -> str:
    shown = DEMO_SN_LR_MULT if mult is None else mult
    return f'{label}, logits at {shown:g}x lr' if mult is not None else label


def det_config(norm: str, config_dir: str) -> str:
    """Path of the detection demo config of ``norm`` (a :data:`DET_NORMS` key)."""
    import os.path as osp
    if norm not in DET_NORMS:
        raise ValueError(f'unknown normalizer {norm!r}; expected one of {sorted(DET_NORMS)}')
    return osp.join(config_dir, DET_NORMS[norm][1])


def det_rows(names: Sequence[str], config_dir: str) -> List[Row]:
    """Detection rows (each compared to ``sn`` when present)."""
    rows = []
    for name in names:
        norm, mult = parse_row_name(name, DET_NORMS)
        rows.append(Row(name=name, label=_lr_label(DET_NORMS[norm][0], mult),
                        config=det_config(norm, config_dir), cfg_options=_lr_options(mult)))
    return _with_reference(rows)


def seg_rows(model: str, norms: Sequence[str], layouts: Sequence[str],
             config_dir: str) -> List[Row]:
    """Segmentation rows ``<layout>/<norm>``, grouped by layout, each compared to the
    ``sn`` row of its layout when present."""
    from .seg_demo import demo_config
    rows = []
    for layout in layouts:
        group = []
        for name in norms:
            norm, mult = parse_row_name(name, SEG_NORMS)
            group.append(Row(name=f'{layout}/{name}', label=_lr_label(SEG_NORMS[norm], mult),
                             config=demo_config(model, norm, layout, config_dir),
                             cfg_options=_lr_options(mult), group=SEG_TITLES[layout]))
        rows += _with_reference(group, prefix=f'{layout}/')
    return rows


def _with_reference(rows: List[Row], prefix: str = '') -> List[Row]:
    names = {r.name for r in rows}
    ref = prefix + REFERENCE
    if ref in names:
        for r in rows:
            if r.name != ref:
                r.reference = ref
    return rows
