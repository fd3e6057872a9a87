"""Paper-style figure of learned SN ratios (matplotlib, Agg canvas, no pyplot state).

For each checkpoint (one column each, side by side) two panels: the shares of the mean
(top) and of the variance (bottom). Each layer is one stacked bar IN / LN / BN (bottom
to top, summing to 1; a branch outside the default pool that some layer mixes, GN, is
stacked on top: :func:`sn_mm.analysis.ratios.columns_of`), layers in depth order; thin
grey lines separate blocks, dashed black lines separate stages, whose names are written
above the top panel (without the prefix all of them share, e.g. ``backbone.``, which goes
into the column title). Where a
name is wider than its stage (the 1-layer stem of a ResNet-50), the names alternate
between two rows, so none overlaps its neighbour. A legend (IN, LN, BN) sits above the
panels at the right. Every normalizer of :data:`sn_mm.ops.pool.NAMES` has a colour in
:data:`COLORS`.

Switchable Whitening layers (:mod:`sn_mm.analysis.sw_ratios`) are drawn the same way:
one bar per layer of its weights over [BW, IW, BN, IN, LN] (the authors' order, the
branches it mixes; bottom panel: the covariance weights), BN/IN/LN in SN's colours,
BW/IW in their own.
"""
import os
from typing import List, Sequence, Tuple

from ..ops import pool as pool_table
from .ratios import LayerRatios
from .sw_ratios import SW_BRANCHES, average_weights, columns_for, is_sw, share_in

COLORS = {'IN': '#4C72B0', 'LN': '#55A868', 'BN': '#C44E52', 'GN': '#DD8452',
          'BW': '#8172B3', 'IW': '#937860'}
_uncoloured = [name for name in pool_table.NAMES + SW_BRANCHES if name not in COLORS]
if _uncoloured:
    raise ImportError(f'sn_mm.analysis.plot.COLORS has no colour for {_uncoloured}, '
                      f'normalizers of sn_mm.ops.pool or SW branches')
Labelled = Sequence[Tuple[str, Sequence[LayerRatios]]]


def new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _common_prefix(names: Sequence[str]) -> str:
    split = [n.split('.') for n in names]
    prefix = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    if prefix and any(len(s) <= len(prefix) for s in split):
        prefix = prefix[:-1]
    return '.'.join(prefix) + '.' if prefix else ''


def _panel(ax, layers: Sequence[LayerRatios], kind: str, show_stages: bool, fontsize: float,
           branches: Sequence[str]):
    xs = range(len(layers))
    bottom = [0.0] * len(layers)
    for branch in branches:
        heights = [share_in(layer, kind, branch) for layer in layers]
        ax.bar(xs, heights, bottom=bottom, width=0.85, color=COLORS[branch], label=branch,
               linewidth=0)
        bottom = [b + h for b, h in zip(bottom, heights)]
    for i in range(1, len(layers)):
        if layers[i].stage != layers[i - 1].stage:
            ax.axvline(i - 0.5, color='black', linestyle='--', linewidth=1.2, zorder=3)
        elif layers[i].block != layers[i - 1].block:
            ax.axvline(i - 0.5, color='0.15', linewidth=0.7, zorder=3)
    if show_stages:
        _stage_labels(ax, layers, 8.0)
    avg = average_weights(layers, branches)[kind]
    second = ('covariance' if all(is_sw(l) for l in layers) else 'variance / covariance'
              if any(is_sw(l) for l in layers) else 'variance')
    ax.set_ylabel(f'{"mean" if kind == "mean" else second} share\n'
                  + ' '.join(f'{b} {a:.2f}' for b, a in zip(branches, avg)), fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.6, len(layers) - 0.4)


def _stage_spans(layers: Sequence[LayerRatios]) -> List[Tuple[int, int, str]]:
    """``(first, last, stage)`` index ranges of the consecutive layers of each stage."""
    spans, start = [], 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or layers[i].stage != layers[start].stage:
            spans.append((start, i - 1, layers[start].stage))
            start = i
    return spans


def stage_label_rows(spans: Sequence[Tuple[int, int, str]], points_per_layer: float,
                     fontsize: float) -> List[int]:
    """Row of each stage name above the panel: 0 when the name fits above its stage
    (about 0.6 ``fontsize`` points per character), else 1 and 2 in turn, so a name wider
    than its stage overlaps neither its neighbours nor the previous wide name."""
    rows, wide = [], 0
    for first, last, name in spans:
        if 0.6 * fontsize * len(name) <= (last - first + 1) * points_per_layer:
            rows.append(0)
        else:
            rows.append(1 + wide % 2)
            wide += 1
    return rows


def _stage_labels(ax, layers: Sequence[LayerRatios], fontsize: float) -> None:
    spans = _stage_spans(layers)
    prefix = _common_prefix([name for _, _, name in spans]) if len(spans) > 1 else ''
    spans = [(a, b, name[len(prefix):] or name) for a, b, name in spans]
    width_points = ax.get_position().width * ax.figure.get_figwidth() * 72
    rows = stage_label_rows(spans, width_points / (len(layers) + 0.2), fontsize)
    for (first, last, name), row in zip(spans, rows):
        ax.text((first + last) / 2, 1.02 + 0.07 * row, name, ha='center', va='bottom',
                fontsize=fontsize, transform=ax.get_xaxis_transform())


def plot_ratios(tables: Labelled, path: str, title: str = '') -> str:
    """Draw the figure for ``[(label, layers), ...]`` into ``path`` (.png/.pdf/.svg)."""
    if not tables:
        raise ValueError('nothing to plot: expected at least one (label, layers) pair')
    for label, layers in tables:
        if not layers:
            raise ValueError(f'{label}: no SN layers to plot (nor SW layers)')
    ext = os.path.splitext(path)[1].lower()
    if ext not in ('.png', '.pdf', '.svg'):
        raise ValueError(f'plot file must end in .png, .pdf or .svg, got {path!r}')
    most = max(len(layers) for _, layers in tables)
    col_width = min(max(3.5, 0.17 * most + 1.2), 14.0)
    branches = columns_for([layer for _, layers in tables for layer in layers])
    fig = new_figure(col_width * len(tables), 6.8)
    axes = fig.subplots(2, len(tables), squeeze=False)
    for col, (label, layers) in enumerate(tables):
        layers = list(layers)
        fontsize = max(5.0, min(8.0, 300.0 / max(len(layers), 1) / max(1, len(tables)) ** 0.5))
        prefix = _common_prefix([l.name for l in layers])
        for row, kind in enumerate(('mean', 'var')):
            ax = axes[row][col]
            _panel(ax, layers, kind, show_stages=row == 0, fontsize=fontsize,
                   branches=branches)
            ax.set_xticks(range(len(layers)))
            if row == 1:
                ax.set_xticklabels([l.name[len(prefix):] for l in layers], rotation=90,
                                   fontsize=fontsize)
            else:
                ax.set_xticklabels([])
                stages = sorted({l.stage for l in layers})
                stage_prefix = _common_prefix(stages) if len(stages) > 1 else ''
                shown = f'{label} ({stage_prefix.rstrip(".")})' if stage_prefix else label
                ax.set_title(shown, fontsize=10, pad=36, loc='left')
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc='upper right', ncol=len(branches), fontsize=9, frameon=False,
               title='normalizer', title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11, x=0.01, ha='left')
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
