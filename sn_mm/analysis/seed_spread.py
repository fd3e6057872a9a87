"""The learned shares across seeds: which choices the seeds agree on, and a figure.

Input per run: the ``sn_layers`` list of a demo summary
(:func:`sn_mm.apis.demo_run.sn_layer_shares`: ``[{name, mean, var}]``, shares in the
order of :data:`sn_mm.analysis.BRANCHES`), one list per seed, the same layers in each.

- :func:`part_leanings`: per part (``backbone``, ``neck + heads``), the share of every
  branch averaged over the part's layers and over mean and variance shares, per seed; the
  part "leans to" a branch only when that branch is the largest on every seed and more
  than ``tol`` above 1/3 on every seed, else ``'seeds disagree'`` or ``'undecided'``.
- :func:`plot_seed_shares`: per row (a column), per branch a panel: that branch's share
  per layer, the mean over seeds as a line and one mark per seed (mean shares filled,
  variance shares hollow).
"""
import os
from typing import Dict, List, Sequence, Tuple

from .ratios import BRANCHES

UNDECIDED_TOL = 0.05


def _part(name: str) -> str:
    return 'backbone' if name.startswith('backbone') else 'neck + heads'


def part_shares(layers: Sequence[dict]) -> Dict[str, List[float]]:
    """``{part: [share per branch]}``: averaged over the part's layers, mean and var."""
    parts: Dict[str, list] = {}
    for layer in layers:
        parts.setdefault(_part(layer['name']), []).append(layer)
    return {part: [sum(l['mean'][k] + l['var'][k] for l in group) / (2 * len(group))
                   for k in range(len(group[0]['mean']))]
            for part, group in parts.items()}


def part_leanings(runs: Sequence[Sequence[dict]], tol: float = UNDECIDED_TOL) -> dict:
    """``{part: {'per_seed': [[shares], ...], 'leans': branch | 'seeds disagree' |
    'undecided'}}`` over ``runs`` (one ``sn_layers`` list per seed)."""
    runs = [r for r in runs if r]
    if not runs:
        return {}
    per_seed = [part_shares(r) for r in runs]
    out = {}
    for part in per_seed[0]:
        shares = [p[part] for p in per_seed if part in p]
        third = 1 / len(shares[0])
        tops = {max(range(len(s)), key=s.__getitem__) for s in shares}
        if len(tops) > 1:
            leans = 'seeds disagree'
        else:
            (k,) = tops
            leans = BRANCHES[k] if all(s[k] > third + tol for s in shares) else 'undecided'
        out[part] = dict(per_seed=[[round(v, 4) for v in s] for s in shares], leans=leans)
    return out


def plot_seed_shares(rows: Sequence[Tuple[str, Sequence[Sequence[dict]]]], path: str,
                     title: str = '') -> str:
    """Draw ``[(row label, [sn_layers of each seed])]`` into ``path`` (.png/.pdf/.svg)."""
    from .plot import COLORS, new_figure
    rows = [(label, [r for r in runs if r]) for label, runs in rows]
    rows = [(label, runs) for label, runs in rows if runs]
    if not rows:
        raise ValueError('nothing to plot: expected at least one row with SN layers')
    ext = os.path.splitext(path)[1].lower()
    if ext not in ('.png', '.pdf', '.svg'):
        raise ValueError(f'plot file must end in .png, .pdf or .svg, got {path!r}')
    most = max(len(runs[0]) for _, runs in rows)
    width = min(max(4.0, 0.16 * most + 1.5), 12.0)
    fig = new_figure(width * len(rows), 2.6 * len(BRANCHES) + 1.2)
    axes = fig.subplots(len(BRANCHES), len(rows), squeeze=False)
    for col, (label, runs) in enumerate(rows):
        names = [l['name'] for l in runs[0]]
        xs = range(len(names))
        for k, branch in enumerate(BRANCHES):
            ax = axes[k][col]
            for kind, fill in (('mean', True), ('var', False)):
                per_seed = [[l[kind][k] for l in run] for run in runs]
                avg = [sum(v) / len(v) for v in zip(*per_seed)]
                ax.plot(xs, avg, '-' if fill else '--', color=COLORS[branch], linewidth=1,
                        label=f'{kind} share, mean over {len(runs)} seeds')
                for values in per_seed:
                    ax.plot(xs, values, 'o', markersize=2.5, color=COLORS[branch],
                            markerfacecolor=COLORS[branch] if fill else 'none',
                            markeredgewidth=0.6, alpha=0.8)
            ax.axhline(1 / 3, color='0.5', linewidth=0.6, linestyle=':')
            ax.set_ylim(0, 1)
            ax.set_xlim(-0.5, len(names) - 0.5)
            ax.set_ylabel(f'{branch} share', color=COLORS[branch], fontsize=9)
            ax.set_xticks(list(xs))
            if k == len(BRANCHES) - 1:
                ax.set_xticklabels(names, rotation=90, fontsize=5)
            else:
                ax.set_xticklabels([])
            if k == 0:
                ax.set_title(f'{label} (marks: one per seed; filled mean, hollow variance)',
                             fontsize=9, loc='left')
                ax.legend(loc='upper right', fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, x=0.01, ha='left')
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
