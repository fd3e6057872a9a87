"""Compare normalizers in Mask R-CNN on the built-in demo data, over seeds.

    python tools/compare_norms_det.py [--rows sn gn bn ssn sn@lr1 sn@lr10] [--seeds 0 1 2]
                                      [--iters N] [--threads 1] [--data-root data/coco_demo]
                                      [--work-dir work_dirs/compare_norms_det]
                                      [--write-expected docs/demo_expected.json]

Every row (a normalizer of ``sn_mm.apis.norm_tables.DET_NORMS``; ``<norm>@lr<x>`` trains
its SN logits at x times the lr instead of the demo's 30x) is trained with every seed
(the same seeds for every row) by the demo runner (``sn_mm.apis.demo_run.run_demo``,
what ``tools/demo.py`` runs), one run after another in this process. Progress lines name
the row, the seed and the ETA of the whole comparison. Finished runs are stored under
``--work-dir/<row>/seed<k>/result.json``; running the same command again (after an
interruption, or with more rows or seeds) reuses them.

Written to ``--work-dir``: ``table.md`` (bbox and segm mAP x100: mean ± std over the seeds
and the paired difference to SN with its 95% t-interval; seconds per iteration),
``results.json`` (everything, including the SN layers that stayed at 1/3 on every seed),
``runs.csv`` (one line per run). ``--write-expected`` also records the mean ± std of the
rows that train a demo config unchanged, which ``tools/demo.py`` prints its result beside.
"""
import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # see tools/demo.py

import argparse  # noqa: E402
import os.path as osp  # noqa: E402
import sys  # noqa: E402

from sn_mm.apis import compare  # noqa: E402
from sn_mm.apis.det_demo import HEADLINE, run_det_demo  # noqa: E402
from sn_mm.apis.expected import update_expected  # noqa: E402
from sn_mm.apis.norm_tables import det_rows  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(REPO, 'configs', 'mask_rcnn_demo')
DEFAULT_ROWS = ['sn', 'gn', 'bn', 'ssn', 'sn@lr1', 'sn@lr10']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rows', '--norms', nargs='+', default=DEFAULT_ROWS,
                   help=f'rows to run, in order (default: {" ".join(DEFAULT_ROWS)})')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--iters', type=int, help="training iterations (default: the configs')")
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    p.add_argument('--data-root', default='data/coco_demo')
    p.add_argument('--num-train', type=int, help='demo images to generate (default: 400)')
    p.add_argument('--num-val', type=int, help='default: 80')
    p.add_argument('--work-dir', default='work_dirs/compare_norms_det')
    p.add_argument('--report-only', action='store_true',
                   help='train nothing: table and files from the runs finished so far')
    p.add_argument('--write-expected', metavar='JSON',
                   help='record the demo rows\' mean ± std here (docs/demo_expected.json)')
    args = p.parse_args(argv)
    for name in ('iters', 'threads', 'num_train', 'num_val'):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    try:
        args.row_list = det_rows(args.rows, CONFIG_DIR)
        compare.check_rows(args.row_list, args.seeds)
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    meta = compare.machine_meta(args.threads)
    meta.update(commit=compare.source_commit(REPO), seeds=args.seeds,
                command='python tools/compare_norms_det.py ' + ' '.join(sys.argv[1:] if argv is None else argv))

    def run_one(row, seed, work_dir):
        result = run_det_demo(row.config, work_dir, args.data_root, args.num_train,
                              args.num_val, args.iters, row.cfg_options, seed=seed,
                              log=lambda line: print(line, flush=True))
        return dict(result, commit=meta['commit'])  # the code this run trained with

    common = dict(iters=args.iters, threads=args.threads, num_train=args.num_train,
                  num_val=args.num_val)
    results = compare.run_comparison(args.row_list, args.seeds, args.work_dir, run_one,
                                     common, log=lambda line: print(line, flush=True),
                                     run_missing=not args.report_only)
    if not results:
        raise SystemExit('[compare] no finished runs to report')
    meta.update(compare.runs_meta(args.row_list, args.seeds, args.work_dir, results))
    any_run = next(iter(results.values()))
    meta['iterations'] = any_run['iterations']
    summary = compare.summarize(args.row_list, args.seeds, results, HEADLINE)
    table = compare.markdown_table(summary, {'coco/bbox_mAP': 'bbox mAP',
                                             'coco/segm_mAP': 'segm mAP'}, scale=100)
    meta['note'] = compare.note(meta, (
        f'Mask R-CNN, half-width ResNet-18 FPN from scratch, synthetic COCO-format shapes, '
        f'{any_run["iterations"]} iterations x {any_run["images_per_iteration"]} images, '
        f'mAP x100 on the val split (mmdet CocoMetric).'))
    leanings = compare.leanings_text(summary)
    if leanings:
        meta['note'] += ('\n\nLearned shares (backbone; neck + heads), averaged over layers and '
                         'over mean and variance shares; a part "leans" to a branch only when '
                         'every seed agrees:\n' + '\n'.join(leanings))
    paths = compare.write_outputs(args.work_dir, args.row_list, args.seeds, results, summary,
                                  HEADLINE, table, meta)
    if args.write_expected:
        update_expected(args.write_expected,
                        compare.expected_entries(args.row_list, summary, meta))
    figure = compare.shares_figure(args.row_list, args.seeds, results,
                                   osp.join(args.work_dir, 'shares_over_seeds.png'),
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
    return summary


if __name__ == '__main__':
    main()
