"""Per-layer ratio tables: text for the terminal, CSV and JSON files.

Columns: ``checkpoint, name, stage, block, using_bn, mean_IN, mean_LN, mean_BN,
var_IN, var_LN, var_BN`` (softmaxed shares; each triple sums to 1) for the default pool;
a branch outside it that some layer mixes (``GN``) adds its ``mean_``/``var_`` columns
after the default pool's (:func:`sn_mm.analysis.ratios.columns_of`; 0 for the layers that
do not mix it), and the JSON file's ``branches`` lists the columns.

Switchable Whitening layers (:mod:`sn_mm.analysis.sw_ratios`) are rows of the same table:
their branches ``BW``/``IW`` add columns after SN's (``BN``/``IN``/``LN`` are the columns
SN has; ``var_`` is the covariance weight), and a ``kind`` column (``SN``/``SW``) is added
after ``using_bn`` when a table has an SW layer (a table of SN layers keeps the columns
above). The JSON file's ``average`` is over each checkpoint's SN layers, as before;
``sw_average`` over its SW layers, in the columns ``sw_branches``.
"""
import csv
import json
import os
from typing import List, Sequence, Tuple

from .ratios import DEFAULT_POOL, LayerRatios, average_shares, columns_of, share_of
from .sw_ratios import average_weights, columns_for, is_sw, row_of, split_kinds, sw_columns

Labelled = Sequence[Tuple[str, Sequence[LayerRatios]]]


def columns(branches: Sequence[str] = DEFAULT_POOL, with_kind: bool = False) -> List[str]:
    """The CSV columns for the branch columns ``branches`` (``kind`` too for a table with
    SW layers)."""
    return ['checkpoint', 'name', 'stage', 'block', 'using_bn'] + (
        ['kind'] if with_kind else []) + [
        f'{kind}_{b}' for kind in ('mean', 'var') for b in branches]


#: The columns of a table of default-pool layers.
COLUMNS = columns()


def table_branches(tables: Labelled) -> Tuple[str, ...]:
    """The branch columns of all the tables together (:func:`columns_of`; with SW layers
    :func:`sn_mm.analysis.sw_ratios.columns_for`)."""
    return columns_for([layer for _, layers in tables for layer in layers])


def has_sw(tables: Labelled) -> bool:
    return any(is_sw(layer) for _, layers in tables for layer in layers)


def rows(tables: Labelled) -> List[dict]:
    branches = table_branches(tables)
    with_kind = has_sw(tables)
    out = []
    for label, layers in tables:
        for layer in layers:
            row = {'checkpoint': label}
            values = row_of(layer, branches)
            if with_kind:
                values['kind'] = 'SW' if is_sw(layer) else 'SN'
            row.update((k, values[k]) for k in columns(branches, with_kind)[1:])
            out.append(row)
    return out


def format_table(label: str, layers: Sequence[LayerRatios]) -> str:
    """Aligned text table with an "average" line (unweighted over layers)."""
    branches = columns_of(layers)
    width = max([len('layer'), len('average')] + [len(l.name) for l in layers])
    head = f'{"layer":<{width}}  ' + '  '.join(f'mean_{b:<2}' for b in branches) + '  ' + \
        '  '.join(f'var_{b:<3}' for b in branches)
    lines = [f'# {label}: {len(layers)} SN layers, shares [{", ".join(branches)}] after '
             'softmax', head, '-' * len(head)]

    def fmt(name, mean, var):
        return f'{name:<{width}}  ' + '  '.join(
            f'{share_of(shares, b):7.3f}' for shares in (mean, var) for b in branches)

    for layer in layers:
        lines.append(fmt(layer.name, layer.mean, layer.var))
    avg = average_shares(layers)
    lines.append('-' * len(head))
    lines.append(fmt('average', avg['mean'], avg['var']))
    return '\n'.join(lines)


def write_table(tables: Labelled, path: str) -> str:
    """Write ``.csv`` or ``.json`` (chosen by the extension); returns ``path``."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in ('.csv', '.json'):
        raise ValueError(f'--out must end in .csv or .json, got {path!r}')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = rows(tables)
    branches = table_branches(tables)
    if ext == '.csv':
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=columns(branches, has_sw(tables)))
            writer.writeheader()
            writer.writerows(data)
    else:
        summary, sw_summary = {}, {}
        all_sw = [layer for _, layers in tables for layer in split_kinds(layers)[1]]
        sw_branches = sw_columns(all_sw)
        for label, layers in tables:
            sn, sw = split_kinds(layers)
            if sn:
                summary[label] = {k: list(v)
                                  for k, v in average_weights(sn, branches).items()}
            if sw:
                sw_summary[label] = {k: list(v)
                                     for k, v in average_weights(sw, sw_branches).items()}
        out = {'branches': list(branches), 'layers': data, 'average': summary}
        if all_sw:
            out.update(sw_branches=list(sw_branches), sw_average=sw_summary)
        with open(path, 'w') as f:
            json.dump(out, f, indent=1)
    return path
