"""Normalizer comparisons over seeds: run every (row, seed), resume, summarize, write.

A comparison is a list of :class:`Row` (a config, optional ``cfg_options``, and the row it
is compared to) and a list of seeds, the same for every row. :func:`run_comparison` trains
each (row, seed) with a caller-given function (the demo runner,
:func:`sn_mm.apis.demo_run.run_demo`), one after another, printing which row and seed
runs and an ETA for the whole comparison; every finished run is stored in
``<work_root>/<row>/seed<k>/result.json`` with the settings that produced it, and a
later call with the same settings reuses it instead of training again (resume after an
interruption).

Statistics (:func:`summarize`), per row and metric over its seeds ``x_1..x_n``:

- mean and sample standard deviation ``s = sqrt(sum (x_i - mean)^2 / (n - 1))``;
- the paired difference to the reference row, ``d_i = x_i - r_i`` over the seeds both
  have, with the 95% t-interval ``mean(d) +- t_{0.975, n-1} * s_d / sqrt(n)`` (``n >= 2``).
  Pairing by seed removes what the seed does to every row alike (initial weights, data
  order), so the interval is about the normalizer. An interval that excludes 0 is a
  difference the seeds support; one that contains 0 is not, at this number of seeds.

Also per SN row: the layers whose learned shares stay within 0.05 of 1/3 (mean and
variance shares, every branch) on every seed (layers that chose nothing), and per part
of the model the branch it leans to when every seed agrees
(:func:`sn_mm.analysis.seed_spread.part_leanings`); :func:`shares_figure` draws every
SN row's shares per layer with one mark per seed.
"""
import csv
import datetime
import json
import math
import os
import os.path as osp
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

#: a share within this distance of 1/3 counts as "has not left the start"
UNDECIDED_TOL = 0.05


@dataclass
class Row:
    """One row of a comparison.

    ``name``: unique id (also the folder name); ``label``: what the table shows;
    ``config``: the config file; ``cfg_options``: settings merged into it for this row
    (beyond the comparison's common ones); ``reference``: the ``name`` of the row it is
    compared to (None for a reference row); ``group``: rows of one group share a table
    (for example a data layout).
    """
    name: str
    label: str
    config: str
    cfg_options: dict = field(default_factory=dict)
    reference: Optional[str] = None
    group: str = ''

    @property
    def plain(self) -> bool:
        """True when the row trains its config as the demo does (no row options)."""
        return not self.cfg_options


def check_rows(rows: Sequence[Row], seeds: Sequence[int]) -> None:
    """Raise ValueError for duplicate names, unknown references or bad seeds."""
    names = [r.name for r in rows]
    if not rows:
        raise ValueError('a comparison needs at least one row')
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f'row names must be unique, got duplicates {dup}')
    for r in rows:
        if not re.fullmatch(r'[A-Za-z0-9_.@/+-]+', r.name) or '..' in r.name:
            raise ValueError(f'row name {r.name!r} must be letters, digits and _.@/+- only')
        if r.reference is not None and r.reference not in names:
            raise ValueError(f'row {r.name!r} is compared to {r.reference!r}, which is not '
                             f'a row; rows are {names}')
    if not seeds or len(set(seeds)) != len(seeds) or any(
            not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f'seeds must be distinct ints >= 0, got {list(seeds)}')


def run_dir(work_root: str, row: Row, seed: int) -> str:
    return osp.join(work_root, row.name, f'seed{seed}')


def run_key(row: Row, seed: int, common: dict) -> dict:
    """What a stored result must have been run with to be reused."""
    return json.loads(json.dumps(dict(config=osp.basename(row.config),
                                      cfg_options=row.cfg_options, seed=seed, common=common),
                                 sort_keys=True, default=str))


def _stored(path: str, key: dict) -> Optional[dict]:
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data['result'] if data.get('key') == key else None


def _minutes(seconds: float) -> str:
    return f'{seconds / 60:.1f} min'


def run_comparison(rows: Sequence[Row], seeds: Sequence[int], work_root: str,
                   run_one: Callable[[Row, int, str], dict], common: Optional[dict] = None,
                   log: Callable[[str], None] = print,
                   clock: Callable[[], float] = time.time,
                   run_missing: bool = True) -> Dict[Tuple[str, int], dict]:
    """Run (or reuse) every (row, seed), rows in the given order, seeds within a row.

    ``run_one(row, seed, work_dir)`` trains one run and returns its summary (a JSON-able
    dict with ``metrics``); ``common``: the settings shared by all rows (iterations, data,
    threads...), part of the resume key. ``run_missing=False`` trains nothing and returns
    the finished runs only (a report on a comparison still running or interrupted).
    Returns ``{(row name, seed): summary}``.
    """
    check_rows(rows, seeds)
    common = common or {}
    plan = [(row, seed) for row in rows for seed in seeds]
    results: Dict[Tuple[str, int], dict] = {}
    durations: List[float] = []
    for i, (row, seed) in enumerate(plan, 1):
        work_dir = run_dir(work_root, row, seed)
        path = osp.join(work_dir, 'result.json')
        key = run_key(row, seed, common)
        head = f'[compare] {i}/{len(plan)} row {row.name} ({row.label}), seed {seed}'
        stored = _stored(path, key)
        if stored is not None:
            results[(row.name, seed)] = stored
            log(f'{head}: finished earlier, reusing {path}')
            continue
        if not run_missing:
            log(f'{head}: not run yet, left out of this report')
            continue
        left = len(plan) - i + 1
        if durations:
            eta = sum(durations) / len(durations) * left
            finish = datetime.datetime.fromtimestamp(clock() + eta, datetime.timezone.utc)
            log(f'{head}: running; ETA for the whole comparison {_minutes(eta)} '
                f'({left} runs left at {_minutes(sum(durations) / len(durations))} each, '
                f'done about {finish:%H:%M} UTC)')
        else:
            log(f'{head}: running; {left} runs left, ETA after this first run')
        t0 = clock()
        result = run_one(row, seed, work_dir)
        durations.append(clock() - t0)
        os.makedirs(work_dir, exist_ok=True)
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(dict(key=key, result=result), f, indent=1, default=str)
        os.replace(tmp, path)  # a result file is complete or absent
        results[(row.name, seed)] = result
        shown = ', '.join(f'{k} {v:.4g}' for k, v in sorted(result.get('metrics', {}).items())
                          if isinstance(v, (int, float)))
        log(f'{head}: done in {_minutes(durations[-1])}: {shown}')
    return results


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy.stats import t
    if not 0 < p < 1 or df < 1:
        raise ValueError(f't_quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}')
    return float(t.ppf(p, df))


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0.0 for one value)."""
    if not values:
        raise ValueError('mean_std needs at least one value')
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def paired_interval(values: Sequence[float], reference: Sequence[float],
                    level: float = 0.95) -> dict:
    """Mean of ``values[i] - reference[i]`` with its ``level`` t-interval.

    Returns ``{'mean', 'lo', 'hi', 'n'}``; ``lo``/``hi`` are None for n < 2.
    """
    if len(values) != len(reference):
        raise ValueError(f'paired values need equal lengths, got {len(values)} and '
                         f'{len(reference)}')
    d = [a - b for a, b in zip(values, reference)]
    mean, std = mean_std(d)
    if len(d) < 2:
        return dict(mean=mean, lo=None, hi=None, n=len(d))
    half = t_quantile(0.5 + level / 2, len(d) - 1) * std / math.sqrt(len(d))
    return dict(mean=mean, lo=mean - half, hi=mean + half, n=len(d))


def undecided_layers(layer_runs: Sequence[Sequence[dict]], tol: float = UNDECIDED_TOL) -> list:
    """Names of the layers whose shares stay within ``tol`` of 1/3 in every run.

    ``layer_runs``: per run, the ``sn_layers`` list of a demo summary
    (``[{name, mean, var}]``).
    """
    if not layer_runs or not all(layer_runs):
        return []
    names = [l['name'] for l in layer_runs[0]]
    out = []
    for name in names:
        shares = [l for run in layer_runs for l in run if l['name'] == name]
        third = 1 / len(shares[0]['mean'])
        if len(shares) == len(layer_runs) and all(
                abs(x - third) <= tol for l in shares for x in l['mean'] + l['var']):
            out.append(name)
    return out


def summarize(rows: Sequence[Row], seeds: Sequence[int], results: dict,
              metrics: Sequence[str], level: float = 0.95) -> List[dict]:
    """Per row: the seeds it has, mean/std/values per metric, the paired difference to
    its reference with the ``level`` t-interval, timings and undecided SN layers."""
    out = []
    by_name = {r.name: r for r in rows}
    for row in rows:
        have = [s for s in seeds if (row.name, s) in results]
        if not have:
            continue  # a row with no finished run is not in the table
        entry = dict(name=row.name, label=row.label, group=row.group,
                     config=osp.basename(row.config), cfg_options=row.cfg_options,
                     reference=row.reference, seeds=have, metrics={}, diff={})
        for m in metrics:
            values = [results[(row.name, s)]['metrics'].get(m) for s in have]
            values = [v for v in values if v is not None]
            if values:
                mean, std = mean_std(values)
                entry['metrics'][m] = dict(mean=mean, std=std, values=values)
            ref = by_name.get(row.reference) if row.reference else None
            if ref is None:
                continue
            pairs = [(results[(row.name, s)]['metrics'].get(m),
                      results[(ref.name, s)]['metrics'].get(m))
                     for s in have if (ref.name, s) in results]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if pairs:
                entry['diff'][m] = paired_interval([a for a, _ in pairs],
                                                   [b for _, b in pairs], level)
        times = [results[(row.name, s)].get('train_seconds_per_iteration') for s in have]
        times = [t for t in times if t is not None]
        entry['train_seconds_per_iteration'] = sum(times) / len(times) if times else None
        cpu = [results[(row.name, s)].get('train_cpu_seconds_per_iteration') for s in have]
        cpu = [t for t in cpu if t is not None]
        entry['train_cpu_seconds_per_iteration'] = sum(cpu) / len(cpu) if cpu else None
        layer_runs = [results[(row.name, s)].get('sn_layers') or [] for s in have]
        entry['sn_layers'] = len(layer_runs[0]) if layer_runs else 0
        entry['undecided_layers'] = undecided_layers(layer_runs)
        from sn_mm.analysis.seed_spread import part_leanings
        entry['leanings'] = part_leanings(layer_runs)
        out.append(entry)
    return out


def shares_figure(rows: Sequence[Row], seeds: Sequence[int], results: dict,
                  path: str, title: str = '') -> Optional[str]:
    """The learned shares of every row with SN layers, one mark per seed
    (:func:`sn_mm.analysis.seed_spread.plot_seed_shares`); None when no row has SN."""
    from sn_mm.analysis.seed_spread import plot_seed_shares
    data = [(row.label, [results[(row.name, s)].get('sn_layers') or [] for s in seeds
                         if (row.name, s) in results]) for row in rows]
    data = [(label, runs) for label, runs in data if any(runs)]
    return plot_seed_shares(data, path, title) if data else None


def leanings_text(summary: Sequence[dict]) -> List[str]:
    """One line per SN row: what each part leans to across the seeds, and how many
    layers never left 1/3."""
    lines = []
    for e in summary:
        if not e.get('leanings'):
            continue
        parts = '; '.join(f'{part}: {v["leans"]} (per seed IN/LN/BN '
                          + ', '.join('/'.join(f'{x:.2f}' for x in s) for s in v['per_seed'])
                          + ')' for part, v in e['leanings'].items())
        where = f'{e["group"]}, ' if e.get('group') else ''
        lines.append(f'- {where}{e["label"]}: {parts}; {len(e["undecided_layers"])} of '
                     f'{e["sn_layers"]} SN layers within {UNDECIDED_TOL} of 1/3 on every seed.')
    return lines


def _fmt(stats: Optional[dict], scale: float, digits: int) -> str:
    if not stats:
        return '-'
    return f'{scale * stats["mean"]:.{digits}f} ± {scale * stats["std"]:.{digits}f}'


def _fmt_diff(diff: Optional[dict], scale: float, digits: int) -> str:
    if not diff:
        return ''
    text = f'{scale * diff["mean"]:+.{digits}f}'
    if diff['lo'] is None:
        return text + ' (1 seed)'
    lo, hi = scale * diff['lo'], scale * diff['hi']
    mark = ' *' if lo > 0 or hi < 0 else ''
    return f'{text} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark}'


def markdown_table(summary: Sequence[dict], metrics: Dict[str, str], scale: float = 1.0,
                   digits: int = 1, reference_label: str = 'SN') -> str:
    """Markdown: per group a table of mean ± std and the paired difference to the
    reference with its 95% interval (``*``: the interval excludes 0) for every metric of
    ``metrics`` (``{key: column title}``), the seeds and the seconds per iteration."""
    groups: Dict[str, list] = {}
    for entry in summary:
        groups.setdefault(entry['group'], []).append(entry)
    blocks = []
    for group, entries in groups.items():
        head = [group or 'Row']
        for title in metrics.values():
            head += [f'{title} (mean ± std)', f'{title} − {reference_label} [95% CI]']
        head += ['seeds', 'wall s/iter', 'CPU s/iter']
        lines = ['| ' + ' | '.join(head) + ' |',
                 '|---|' + '---:|' * (len(head) - 1)]
        for e in entries:
            cells = [e['label']]
            for key in metrics:
                cells += [_fmt(e['metrics'].get(key), scale, digits),
                          _fmt_diff(e['diff'].get(key), scale, digits)
                          if e['reference'] else '(reference)']
            wall, cpu = e['train_seconds_per_iteration'], e['train_cpu_seconds_per_iteration']
            cells += [str(len(e['seeds'])), '-' if wall is None else f'{wall:.2f}',
                      '-' if cpu is None else f'{cpu:.2f}']
            lines.append('| ' + ' | '.join(cells) + ' |')
        blocks.append('\n'.join(lines))
    return '\n\n'.join(blocks) + '\n'


def write_outputs(work_root: str, rows: Sequence[Row], seeds: Sequence[int], results: dict,
                  summary: Sequence[dict], metrics: Sequence[str], table: str,
                  meta: dict) -> Dict[str, str]:
    """``table.md`` (the Markdown table and ``meta['note']``), ``results.json``
    (meta, per-row summary, every run's metrics and timings) and ``runs.csv`` (one line
    per run) under ``work_root``; returns their paths."""
    os.makedirs(work_root, exist_ok=True)
    paths = {k: osp.join(work_root, f) for k, f in
             (('table', 'table.md'), ('json', 'results.json'), ('csv', 'runs.csv'))}
    with open(paths['table'], 'w') as f:
        f.write(table + ('\n' + meta['note'] + '\n' if meta.get('note') else ''))
    keep = ('metrics', 'seed', 'iterations', 'train_seconds_per_iteration', 'sec_per_iter',
            'train_cpu_seconds_per_iteration', 'load_average_1min', 'torch_threads',
            'sn_shares_in_ln_bn', 'checkpoint', 'commit')
    runs = [dict(row=name, **{k: r.get(k) for k in keep}) for (name, _), r in results.items()]
    with open(paths['json'], 'w') as f:
        json.dump(dict(meta=meta, seeds=list(seeds), summary=list(summary), runs=runs), f,
                  indent=1, default=str)
    with open(paths['csv'], 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['row', 'seed'] + list(metrics)
                        + ['train_seconds_per_iteration', 'train_cpu_seconds_per_iteration'])
        for row in rows:
            for seed in seeds:
                r = results.get((row.name, seed))
                if r is not None:
                    writer.writerow([row.name, seed] + [r['metrics'].get(m) for m in metrics]
                                    + [r.get('train_seconds_per_iteration'),
                                       r.get('train_cpu_seconds_per_iteration')])
    return paths


def expected_entries(rows: Sequence[Row], summary: Sequence[dict], meta: dict) -> dict:
    """Entries for :func:`sn_mm.apis.expected.update_expected`: the plain rows (configs
    run as the demos run them) with all their seeds."""
    by_name = {e['name']: e for e in summary}
    out = {}
    for row in rows:
        e = by_name.get(row.name)  # None: no finished run
        if e is None or not row.plain or not e['seeds']:
            continue
        out[osp.splitext(osp.basename(row.config))[0]] = dict(
            iterations=meta.get('iterations'), seeds=e['seeds'], threads=meta.get('threads'),
            measured=meta.get('runs_finished') or meta.get('date'),
            commit=', '.join(meta.get('run_commits') or [str(meta.get('commit'))]),
            command=meta.get('command'),
            metrics={m: dict(mean=round(s['mean'], 5), std=round(s['std'], 5),
                             values=[round(v, 5) for v in s['values']])
                     for m, s in e['metrics'].items()})
    return out


def machine_meta(threads: int) -> dict:
    """Date, machine, torch version, threads and load average, for the table's note."""
    import platform

    import torch
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                cpus=os.cpu_count(), cpu=platform.processor() or platform.machine(),
                torch=torch.__version__, threads=threads, load_start=load)


def source_commit(path: str) -> str:
    """``git describe``-like id of the checkout at ``path`` (commit, ``+dirty`` when the
    tracked files differ from it), or ``'unknown'`` outside a git checkout."""
    import subprocess
    try:
        commit = subprocess.run(['git', '-C', path, 'rev-parse', '--short=12', 'HEAD'],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', path, 'status', '--porcelain',
                                '--untracked-files=no'], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return commit + ('+dirty' if dirty else '')


def runs_meta(rows: Sequence[Row], seeds: Sequence[int], work_root: str,
              results: dict) -> dict:
    """When the finished runs were written (UTC, from their result files), the range of
    the 1-minute load averages recorded at their start and end, and their summed time."""
    stamps = [osp.getmtime(osp.join(run_dir(work_root, row, s), 'result.json'))
              for row in rows for s in seeds if (row.name, s) in results]
    loads = [x for r in results.values() for x in (r.get('load_average_1min') or [])]
    fmt = '%Y-%m-%d %H:%M'
    utc = datetime.timezone.utc
    return dict(
        runs_finished=(f'{datetime.datetime.fromtimestamp(min(stamps), utc):{fmt}} to '
                       f'{datetime.datetime.fromtimestamp(max(stamps), utc):{fmt}} UTC')
        if stamps else None,
        run_load_1min=[min(loads), max(loads)] if loads else None,
        run_commits=sorted({str(r.get('commit', 'unrecorded')) for r in results.values()}),
        run_minutes=sum(r.get('total_seconds') or 0 for r in results.values()) / 60)


def note(meta: dict, what: str) -> str:
    """The line under a table: what was run, where, when, under which load."""
    load = meta.get('run_load_1min')
    loads = f'{load[0]:.1f}-{load[1]:.1f}' if load else 'unknown'
    return (f'{what} Seeds {meta["seeds"]} (the same for every row); mean ± sample std over '
            f'the seeds; "− SN" is the paired difference (same seed) with its 95% '
            f't-interval, * where it excludes 0. Runs finished {meta.get("runs_finished")} '
            f'on {meta["cpus"]} CPU cores ({meta["cpu"]}), torch {meta["torch"]}, '
            f'{meta["threads"]} torch thread(s), 1-minute load average {loads} (other jobs '
            f'shared the machine: wall s/iter is not comparable across tables; CPU s/iter '
            f'is less affected), runs on sn_mm {", ".join(meta.get("run_commits") or ["?"])}, '
            f'{meta.get("run_minutes", 0):.0f} min of runs; report by sn_mm '
            f'{meta.get("commit")}: `{meta["command"]}`.')
