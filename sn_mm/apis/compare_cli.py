"""The command-line part that ``tools/compare_norms_det.py`` and ``tools/compare_norms_seg.py``
share: their common options, the run's metadata, and the report written after the runs.

- :func:`add_common_arguments` / :func:`parse_rows`: ``--rows`` (alias ``--norms``),
  ``--seeds``, ``--iters``, ``--threads``, ``--data-root``, ``--work-dir``,
  ``--report-only``, ``--write-expected``; counts must be >= 1 and rows and seeds valid
  (an ``argparse`` error naming the option and the value otherwise).
- :func:`run_meta`: :func:`sn_mm.apis.compare.machine_meta` plus the commit, the seeds and
  the command line.
- :func:`write_report`: adds the learned-share leanings to ``meta['note']``, writes
  ``table.md`` / ``results.json`` / ``runs.csv`` (:func:`sn_mm.apis.compare.write_outputs`),
  updates ``--write-expected``, draws ``shares_over_seeds.png`` and prints the table, the
  note, the undecided SN layers and the paths.
"""
import argparse
import os.path as osp
import sys
from typing import Optional, Sequence

from . import compare
from .expected import update_expected


def add_common_arguments(p: argparse.ArgumentParser, default_rows: Sequence[str],
                         data_root: str, work_dir: str) -> None:
    """Add the options every comparison tool takes (module docstring) to ``p``."""
    p.add_argument('--rows', '--norms', nargs='+', default=list(default_rows),
                   help=f'rows to run, in order (default: {" ".join(default_rows)})')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--iters', type=int, help="training iterations (default: the configs')")
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    p.add_argument('--data-root', default=data_root)
    p.add_argument('--work-dir', default=work_dir)
    p.add_argument('--report-only', action='store_true',
                   help='train nothing: table and files from the runs finished so far')
    p.add_argument('--write-expected', metavar='JSON',
                   help='record the demo rows\' mean ± std here (docs/demo_expected.json)')


def check_at_least_one(p: argparse.ArgumentParser, args: argparse.Namespace,
                       names: Sequence[str] = ('iters', 'threads')) -> None:
    """``p.error`` unless every given count in ``names`` (attributes of ``args``) is >= 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1, got {value}')


def parse_rows(p: argparse.ArgumentParser, argv: Optional[Sequence[str]], make_rows,
               counts: Sequence[str] = ('iters', 'threads')) -> argparse.Namespace:
    """Parse ``argv``, check the ``counts`` (:func:`check_at_least_one`) and set
    ``args.row_list = make_rows(args)`` (checked by :func:`sn_mm.apis.compare.check_rows`);
    a bad row or seed is an ``argparse`` error naming it."""
    args = p.parse_args(argv)
    check_at_least_one(p, args, counts)
    try:
        args.row_list = make_rows(args)
        compare.check_rows(args.row_list, args.seeds)
    except ValueError as err:
        p.error(str(err))
    return args


def run_meta(args: argparse.Namespace, repo: str, tool: str,
             argv: Optional[Sequence[str]]) -> dict:
    """Machine, commit of ``repo``, seeds and the command (``python <tool> <argv>``)."""
    meta = compare.machine_meta(args.threads)
    meta.update(commit=compare.source_commit(repo), seeds=args.seeds,
                command=f'python {tool} ' + ' '.join(sys.argv[1:] if argv is None else argv))
    return meta


def write_report(args: argparse.Namespace, work_root: str, results: dict, summary: list,
                 headline: Sequence[str], table: str, meta: dict) -> dict:
    """Write and print the comparison's report (module docstring); returns the paths."""
    leanings = compare.leanings_text(summary)
    if leanings:
        meta['note'] += ('\n\nLearned shares (backbone; neck + heads), averaged over layers and '
                         'over mean and variance shares; a part "leans" to a branch only when '
                         'every seed agrees:\n' + '\n'.join(leanings))
    paths = compare.write_outputs(work_root, args.row_list, args.seeds, results, summary,
                                  headline, table, meta)
    if args.write_expected:
        update_expected(args.write_expected,
                        compare.expected_entries(args.row_list, summary, meta))
    figure = compare.shares_figure(args.row_list, args.seeds, results,
                                   osp.join(work_root, 'shares_over_seeds.png'),
                                   'learned SN shares per layer, over seeds')
    print('\n' + table + '\n' + meta['note'] + '\n')
    for e in summary:
        if e['undecided_layers']:
            print(f'[compare] {e["name"]}: {len(e["undecided_layers"])} of {e["sn_layers"]} SN '
                  f'layers within {compare.UNDECIDED_TOL} of 1/3 on every seed: '
                  + ', '.join(e['undecided_layers']))
    if figure:
        print(f'[compare] figure: {figure}')
    print(f'[compare] table: {paths["table"]}, data: {paths["json"]}, {paths["csv"]}')
    return paths
