"""Compare normalizers in DeepLab on both built-in segmentation demos, over seeds.

    python tools/compare_norms_seg.py [--model {deeplabv3,deeplabv3plus}]
                                      [--rows sn syncbn gn ssn sn@lr1 sn@lr10 sw en] [--seeds 0 1 2]
                                      [--layouts cityscapes ade20k] [--iters N] [--threads 1]
                                      [--data-root data/seg_demo]
                                      [--work-dir work_dirs/compare_norms_seg]
                                      [--write-expected docs/demo_expected.json]

Every (layout, row) pair, where a row is a normalizer of
``sn_mm.apis.norm_tables.SEG_NORMS`` (``<norm>@lr<x>``: SN logits at x times the lr
instead of the demo's 30x), is trained with every seed (the same seeds for every row)
by the demo runner (``sn_mm.apis.demo_run.run_demo``, what ``tools/demo_seg.py`` runs),
in this process, one after another, with progress lines (row, seed, ETA of the whole
comparison). Finished runs are stored under ``--work-dir/<model>/<layout>/<row>/seed<k>/``
and reused when the command runs again. On one process SyncBN is BN (mmengine reverts
it) and SyncSN is SN.

Written to ``--work-dir/<model>/``: ``table.md`` (mIoU: mean ± std over the seeds and the
paired difference to SN of the same layout with its 95% t-interval; seconds per
iteration), ``results.json``, ``runs.csv``; ``--write-expected`` records the demo rows'
mean ± std for ``tools/demo_seg.py``.
"""
import argparse
import os.path as osp

from sn_mm.apis import compare, compare_cli
from sn_mm.apis.demo_run import run_demo
from sn_mm.apis.norm_tables import seg_rows
from sn_mm.apis.seg_demo import HEADLINE, LAYOUTS, MODELS, data_options

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(REPO, 'configs', 'seg_demo')
DEFAULT_ROWS = ['sn', 'syncbn', 'gn', 'ssn', 'sn@lr1', 'sn@lr10', 'sw', 'en']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', choices=MODELS, default='deeplabv3')
    p.add_argument('--layouts', nargs='+', choices=LAYOUTS, default=list(LAYOUTS))
    compare_cli.add_common_arguments(p, DEFAULT_ROWS, 'data/seg_demo',
                                     'work_dirs/compare_norms_seg')
    return compare_cli.parse_rows(
        p, argv, lambda a: seg_rows(a.model, a.rows, a.layouts, CONFIG_DIR))


def main(argv=None):
    args = parse_args(argv)
    import torch

    from sn_mm.datasets.seg_demo import ensure_seg_demo
    torch.set_num_threads(args.threads)
    for layout in ([] if args.report_only else args.layouts):
        ensure_seg_demo(osp.join(args.data_root, layout), layout, progress=print)
    meta = compare_cli.run_meta(args, REPO, 'tools/compare_norms_seg.py', argv)

    def run_one(row, seed, work_dir):
        layout = row.name.split('/')[0]
        options = data_options(osp.join(args.data_root, layout))
        options.update(row.cfg_options)
        result = run_demo(row.config, work_dir, options, iters=args.iters, seed=seed)
        return dict(result, commit=meta['commit'])  # the code this run trained with

    work_root = osp.join(args.work_dir, args.model)
    results = compare.run_comparison(args.row_list, args.seeds, work_root, run_one,
                                     dict(iters=args.iters, threads=args.threads),
                                     log=lambda line: print(line, flush=True),
                                     run_missing=not args.report_only)
    if not results:
        raise SystemExit('[compare] no finished runs to report')
    meta.update(compare.runs_meta(args.row_list, args.seeds, work_root, results))
    any_run = next(iter(results.values()))
    meta['iterations'] = any_run['iterations']
    summary = compare.summarize(args.row_list, args.seeds, results, HEADLINE)
    table = compare.markdown_table(summary, {'mIoU': 'mIoU'}, digits=2)
    title = 'DeepLabV3' if args.model == 'deeplabv3' else 'DeepLabV3+'
    meta['note'] = compare.note(meta, (
        f'{title} R18-D8 (half width, from scratch), {any_run["iterations"]} iterations x '
        f'{any_run["images_per_iteration"]} crops of 128x128, mIoU on the 20 val images '
        '(mmseg IoUMetric, single scale).'))
    compare_cli.write_report(args, work_root, results, summary, HEADLINE, table, meta)
    return summary


if __name__ == '__main__':
    main()
