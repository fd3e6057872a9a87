"""The README's demo results in one machine-readable place, and the demo's line beside them.

The comparison tools (``tools/compare_norms_det.py``, ``tools/compare_norms_seg.py``) write
the mean, standard deviation and per-seed values of every demo config they ran unchanged
(no option beyond the data root) into a JSON file (the repository keeps it in
``docs/demo_expected.json``); the README's tables come from the same run, and
``tools/demo.py`` / ``tools/demo_seg.py`` print their result beside the entry of their
config. File layout::

    {"entries": {"<config file name without .py>": {
        "iterations": 300, "seeds": [0, 1, 2], "threads": 1, "measured": "...",
        "commit": "...", "command": "...",
        "metrics": {"<metric>": {"mean": m, "std": s, "values": [...]}}}}}

``std`` is the sample standard deviation (n - 1) over the seeds.
"""
import json
import os
import os.path as osp
from typing import Dict, Optional, Sequence


def config_key(config: str) -> str:
    """The entry name of a config: its file name without ``.py``."""
    return osp.splitext(osp.basename(config))[0]


def load_expected(path: Optional[str]) -> dict:
    """``{config key: entry}`` from ``path``; ``{}`` when ``path`` is None or missing."""
    if not path or not osp.isfile(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    entries = data.get('entries') if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f'{path}: expected a JSON object with an "entries" object, got '
                         f'{type(entries).__name__ if entries is not None else "none"}')
    return entries


def update_expected(path: str, entries: Dict[str, dict]) -> None:
    """Write ``entries`` into ``path``, keeping the entries of other configs."""
    old = load_expected(path)
    old.update(entries)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump({'description': 'Demo results over seeds, written by '
                   'tools/compare_norms_det.py / tools/compare_norms_seg.py '
                   '(sn_mm.apis.expected); the README tables come from the same runs.',
                   'entries': dict(sorted(old.items()))}, f, indent=1)
        f.write('\n')


def expected_line(summary: dict, expected: Optional[dict], metrics: Sequence[str],
                  scale: float = 1.0, tag: str = '[demo]') -> str:
    """One line: this run's ``metrics`` beside the expected mean +- std of its config.

    ``scale`` multiplies values for display (100 for COCO mAP). A value within mean +-
    2 std (or within the seeds' range) is called typical.
    """
    key = config_key(summary['config'])
    entry = (expected or {}).get(key)
    if entry is None:
        return (f'{tag} no recorded mean +- std for {key} (docs/demo_expected.json, '
                'written by the comparison tools)')
    if entry.get('iterations') != summary.get('iterations'):
        return (f'{tag} the recorded mean +- std for {key} are for {entry.get("iterations")} '
                f'iterations; this run trained {summary.get("iterations")}')
    parts, typical = [], []
    for metric in metrics:
        stats = entry.get('metrics', {}).get(metric)
        value = summary.get('metrics', {}).get(metric)
        if stats is None or value is None:
            continue
        mean, std, values = stats['mean'], stats['std'], stats.get('values') or [stats['mean']]
        lo, hi = min(mean - 2 * std, min(values)), max(mean + 2 * std, max(values))
        typical.append(lo <= value <= hi)
        parts.append(f'{metric.split("/")[-1]} {scale * value:.1f} vs '
                     f'{scale * mean:.1f} +- {scale * std:.1f}')
    if not parts:
        return f'{tag} the recorded entry for {key} has none of {list(metrics)}'
    verdict = ('typical (within mean +- 2 std)' if all(typical)
               else 'OUTSIDE mean +- 2 std of the recorded seeds')
    threads = entry.get('threads')
    if threads is not None and summary.get('torch_threads') not in (None, threads):
        verdict += (f' (recorded with {threads} torch thread(s), this run '
                    f'{summary["torch_threads"]}: another summation order, another draw; '
                    'docs/reproducibility.md)')
    return (f'{tag} this run vs the README (mean +- std over seeds {entry.get("seeds")}, '
            f'{entry.get("measured", "?")}): ' + '; '.join(parts) + f': {verdict}')
