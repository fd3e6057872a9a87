"""How the choice moves during training: SN share trajectories from a run's scalars.

:class:`sn_mm.engine.SNRatioHook` writes, every ``interval`` iterations, scalars named
``{prefix}/{layer}/{mean|var}_{IN|LN|BN}`` and ``{prefix}_avg/{stage|all}/...`` through
the runner's visualizer. mmengine's ``LocalVisBackend`` appends each call as one JSON line
(``{key: value, ..., "step": iterations done}``) to ``<work_dir>/<timestamp>/vis_data/
scalars.json``; the same values go to TensorBoard when ``TensorboardVisBackend`` is on.
This module reads ``scalars.json`` (no TensorBoard needed) and draws the ratio curves as
the paper's figure of ratios over training does: one panel per group (a stage average,
``all``, or a layer), mean shares and variance shares, one line per normalizer.

A layer without a BN branch has no ``BN`` keys: its curve is absent, not 0.
"""
import glob
import json
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

from .layers import depth_order
from .ratios import BRANCHES

Curve = Tuple[List[int], List[float]]
# group -> kind ('mean'|'var') -> branch -> (steps, values)
Trajectories = 'OrderedDict[str, Dict[str, Dict[str, Curve]]]'
_KEY_RE = re.compile(r'^(?P<group>.+)/(?P<kind>mean|var)_(?P<branch>IN|LN|BN)$')


def find_scalars(path: str) -> str:
    """The ``scalars.json`` of a run: the file itself, a ``vis_data`` or timestamp folder,
    or a work_dir (its newest ``*/vis_data/scalars.json``)."""
    if os.path.isfile(path):
        return path
    for pattern in ('scalars.json', os.path.join('vis_data', 'scalars.json'),
                    os.path.join('*', 'vis_data', 'scalars.json')):
        found = sorted(glob.glob(os.path.join(path, pattern)), key=os.path.getmtime)
        if found:
            return found[-1]
    raise FileNotFoundError(f'no scalars.json in {path!r}: expected a scalars.json file, a '
                            'vis_data folder, or a work_dir with <timestamp>/vis_data/scalars.json '
                            '(written when a config has SNRatioHook and LocalVisBackend)')


def read_trajectories(path: str, prefix: str = 'sn_ratio', averages: bool = True) -> Trajectories:
    """Curves of one run from its ``scalars.json`` (see :func:`find_scalars`).

    ``averages=True``: the groups under ``{prefix}_avg/`` (stages in depth order, then
    ``all``); ``False``: the per-layer groups under ``{prefix}/`` (layers in depth order).
    Raises ``ValueError`` naming the file when it has no such scalars.
    """
    scalars = find_scalars(path)
    head = f'{prefix}_avg/' if averages else f'{prefix}/'
    found: Dict[str, Dict[str, Dict[str, Curve]]] = {}
    with open(scalars) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f'{scalars}:{number}: not a JSON line ({err})') from None
            if 'step' not in record:
                continue
            for key, value in record.items():
                if not key.startswith(head):
                    continue
                match = _KEY_RE.match(key[len(head):])
                if not match:
                    continue
                curve = found.setdefault(match['group'], {}).setdefault(
                    match['kind'], {}).setdefault(match['branch'], ([], []))
                curve[0].append(int(record['step']))
                curve[1].append(float(value))
    if not found:
        raise ValueError(f'{scalars}: no "{head}<group>/<mean|var>_<IN|LN|BN>" scalars; was '
                         'the run trained with SNRatioHook'
                         + (' (per_stage=True)?' if averages else ' (per_layer=True)?'))
    groups = [g for g in found if g != 'all']
    order = depth_order(groups)  # layers, or stages (``*.stem`` first within its part)
    if 'all' in found:
        order.append('all')
    return OrderedDict((g, found[g]) for g in order)


def select(traj: Trajectories, groups: Optional[Sequence[str]]) -> Trajectories:
    """The named groups of ``traj`` (all when ``groups`` is empty); unknown names are an
    error listing the available ones."""
    if not groups:
        return traj
    unknown = [g for g in groups if g not in traj]
    if unknown:
        raise ValueError(f'unknown trajectory group(s) {unknown}; available: {list(traj)}')
    return OrderedDict((g, traj[g]) for g in groups)


def final_shares(traj: Trajectories) -> Dict[str, Dict[str, Tuple[int, Dict[str, float]]]]:
    """Last logged step and shares per group and kind: ``{group: {kind: (step, {b: v})}}``."""
    out = {}
    for group, kinds in traj.items():
        out[group] = {}
        for kind, branches in kinds.items():
            step = max(steps[-1] for steps, _ in branches.values())
            out[group][kind] = (step, {b: values[-1] for b, (_, values) in branches.items()})
    return out


def format_trajectories(traj: Trajectories) -> str:
    """Text summary: first and last logged shares of every group."""
    lines = ['group                              kind  step   IN     LN     BN']
    for group, kinds in traj.items():
        for kind in ('mean', 'var'):
            if kind not in kinds:
                continue
            for pick in (0, -1):
                step = next(iter(kinds[kind].values()))[0][pick]
                vals = [f'{kinds[kind][b][1][pick]:.3f}' if b in kinds[kind] else '  -  '
                        for b in BRANCHES]
                lines.append(f'{group:<34} {kind:<5} {step:>5}  ' + '  '.join(vals))
    return '\n'.join(lines)


def plot_trajectories(traj: Trajectories, path: str, title: str = '') -> str:
    """One row per group, mean shares (left) and variance shares (right) over iterations."""
    from .plot import COLORS, new_figure

    if not traj:
        raise ValueError('nothing to plot: no trajectory groups')
    ext = os.path.splitext(path)[1].lower()
    if ext not in ('.png', '.pdf', '.svg'):
        raise ValueError(f'plot file must end in .png, .pdf or .svg, got {path!r}')
    rows = len(traj)
    fig = new_figure(10.0, 1.9 * rows + 1.0)
    axes = fig.subplots(rows, 2, squeeze=False, sharex=True)
    for r, (group, kinds) in enumerate(traj.items()):
        for c, kind in enumerate(('mean', 'var')):
            ax = axes[r][c]
            for branch in BRANCHES:
                if branch in kinds.get(kind, {}):
                    steps, values = kinds[kind][branch]
                    ax.plot(steps, values, color=COLORS[branch], linewidth=1.5, label=branch)
            ax.axhline(1 / 3, color='0.6', linewidth=0.6, linestyle=':')
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(f'{"mean" if kind == "mean" else "variance"} shares', fontsize=10)
            if c == 0:
                ax.set_ylabel(group, fontsize=8)
            if r == rows - 1:
                ax.set_xlabel('iteration')
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='upper right', ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, x=0.01, ha='left')
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def run_trajectories(run: str, plot: Optional[str] = None, groups: Sequence[str] = (),
                     per_layer: bool = False, title: str = '', quiet: bool = False,
                     prefix: str = 'sn_ratio') -> Trajectories:
    """``tools/analyze_sn.py --trajectories RUN``: summary printed, figure written
    (default: ``sn_trajectories.png`` beside the run's ``scalars.json``)."""
    scalars = find_scalars(run)
    traj = select(read_trajectories(scalars, prefix, averages=not per_layer), groups)
    if not quiet:
        print(f'# {scalars}')
        print(format_trajectories(traj))
    plot = plot or os.path.join(os.path.dirname(os.path.abspath(scalars)),
                                'sn_trajectories.png')
    print(f'figure written to {plot_trajectories(traj, plot, title or scalars)}')
    return traj
