"""Per-layer ratio tables: text for the terminal, CSV and JSON files.

Columns: ``checkpoint, name, stage, block, using_bn, mean_IN, mean_LN, mean_BN,
var_IN, var_LN, var_BN`` (softmaxed shares; each triple sums to 1).
"""
import csv
import json
import os
from typing import List, Sequence, Tuple

from .ratios import BRANCHES, LayerRatios, average_shares

Labelled = Sequence[Tuple[str, Sequence[LayerRatios]]]
COLUMNS = ['checkpoint', 'name', 'stage', 'block', 'using_bn'] + [
    f'{kind}_{b}' for kind in ('mean', 'var') for b in BRANCHES]


def rows(tables: Labelled) -> List[dict]:
    out = []
    for label, layers in tables:
        for layer in layers:
            row = {'checkpoint': label}
            row.update(layer.as_row())
            out.append(row)
    return out


def format_table(label: str, layers: Sequence[LayerRatios]) -> str:
    """Aligned text table with an "average" line (unweighted over layers)."""
    width = max([len('layer'), len('average')] + [len(l.name) for l in layers])
    head = f'{"layer":<{width}}  ' + '  '.join(f'mean_{b:<2}' for b in BRANCHES) + '  ' + \
        '  '.join(f'var_{b:<3}' for b in BRANCHES)
    lines = [f'# {label}: {len(layers)} SN layers, shares [IN, LN, BN] after softmax', head,
             '-' * len(head)]

    def fmt(name, mean, var):
        return f'{name:<{width}}  ' + '  '.join(f'{v:7.3f}' for v in (*mean, *var))

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
    if ext == '.csv':
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(data)
    else:
        summary = {label: {k: list(v) for k, v in average_shares(layers).items()}
                   for label, layers in tables}
        with open(path, 'w') as f:
            json.dump({'branches': list(BRANCHES), 'layers': data, 'average': summary}, f,
                      indent=1)
    return path
