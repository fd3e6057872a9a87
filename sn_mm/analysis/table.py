"""Per-layer ratio tables: text for the terminal, CSV and JSON files.

Columns: ``checkpoint, name, stage, block, using_bn, mean_IN, mean_LN, mean_BN,
var_IN, var_LN, var_BN`` (softmaxed shares; each triple sums to 1) for the default pool;
a branch outside it that some layer mixes (``GN``) adds its ``mean_``/``var_`` columns
after the default pool's (:func:`sn_mm.analysis.ratios.columns_of`; 0 for the layers that
do not mix it), and the JSON file's ``branches`` lists the columns.
"""
import csv
import json
import os
from typing import List, Sequence, Tuple

from .ratios import DEFAULT_POOL, LayerRatios, average_shares, columns_of, share_of

Labelled = Sequence[Tuple[str, Sequence[LayerRatios]]]


def columns(branches: Sequence[str] = DEFAULT_POOL) -> List[str]:
    """The CSV columns for the branch columns ``branches``."""
    return ['checkpoint', 'name', 'stage', 'block', 'using_bn'] + [
        f'{kind}_{b}' for kind in ('mean', 'var') for b in branches]


#: The columns of a table of default-pool layers.
COLUMNS = columns()


def table_branches(tables: Labelled) -> Tuple[str, ...]:
    """The branch columns of all the tables together (:func:`columns_of`)."""
    return columns_of([layer for _, layers in tables for layer in layers])


def rows(tables: Labelled) -> List[dict]:
    branches = table_branches(tables)
    out = []
    for label, layers in tables:
        for layer in layers:
            row = {'checkpoint': label}
            row.update(layer.as_row(branches))
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
            writer = csv.DictWriter(f, fieldnames=columns(branches))
            writer.writeheader()
            writer.writerows(data)
    else:
        summary = {label: {k: [share_of(v, b) for b in branches]
                           for k, v in average_shares(layers).items()}
                   for label, layers in tables}
        with open(path, 'w') as f:
            json.dump({'branches': list(branches), 'layers': data, 'average': summary}, f,
                      indent=1)
    return path
