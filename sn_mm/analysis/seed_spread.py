"""The learned shares across seeds: which choices the seeds agree on, and a figure.

Input per run: the ``sn_layers`` list of a demo summary
(:func:`sn_mm.apis.demo_run.sn_layer_shares`: ``[{name, mean, var}]``, shares in the
order of :data:`sn_mm.analysis.BRANCHES`), one list per seed, the same layers in each.

- :func:`part_leanings`: per part (``backbone``, ``neck + heads``), the share of every
  branch averaged over the part's layers and over mean and variance shares, per seed; the
  part "leans to" a branch only when that branch is the largest on every seed and more
  than ``tol`` above 1/3 on every seed, else ``'seeds disagree'`` (two seeds lean to
  different branches) or ``'undecided'``
  (:func:`agreed_leaning`, the one rule; the cross-task comparison
  :mod:`sn_mm.analysis.compare` uses it per stage).
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
        out[part] = dict(per_seed=[[round(v, 4) for v in s] for s in shares],
                         leans=agreed_leaning(shares, tol))
    return out


def agreed_leaning(per_seed: Sequence[Sequence[float]], tol: float = UNDECIDED_TOL) -> str:
    """The rule for "a group leans to a branch", over seeds: ``per_seed`` holds one share
    vector (in :data:`BRANCHES` order) per seed, K branches.

    A seed leans to its largest share's branch when that share is above ``1/K + tol``, else
    it is undecided. The group leans to branch ``k`` only when every seed leans to ``k``;
    it is ``'seeds disagree'`` when two seeds lean to different branches, and
    ``'undecided'`` otherwise (no seed leans, or some seeds lean to ``k`` and the others
    to nothing). One seed is the same rule over one run.
    """
    if not per_seed:
        raise ValueError('agreed_leaning needs the shares of at least one seed')
    third = 1 / len(per_seed[0])
    leans = set()
    for s in per_seed:
        k = max(range(len(s)), key=s.__getitem__)
        leans.add(BRANCHES[k] if s[k] > third + tol else 'undecided')
    if len(leans) == 1:
        return leans.pop()
    return 'seeds disagree' if len(leans - {'undecided'}) > 1 else 'undecided'


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
