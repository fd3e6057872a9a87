"""Compare normalizers in Mask R-CNN on the built-in demo data, over seeds.

    python tools/compare_norms_det.py [--rows sn gn bn ssn sn@lr1 sn@lr10 sw en] [--seeds 0 1 2]
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

from sn_mm.apis import compare, compare_cli  # noqa: E402
from sn_mm.apis.det_demo import HEADLINE, run_det_demo  # noqa: E402
from sn_mm.apis.norm_tables import det_rows  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(REPO, 'configs', 'mask_rcnn_demo')
DEFAULT_ROWS = ['sn', 'gn', 'bn', 'ssn', 'sn@lr1', 'sn@lr10', 'sw', 'en']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    compare_cli.add_common_arguments(p, DEFAULT_ROWS, 'data/coco_demo',
                                     'work_dirs/compare_norms_det')
    p.add_argument('--num-train', type=int, help='demo images to generate (default: 400)')
    p.add_argument('--num-val', type=int, help='default: 80')
    return compare_cli.parse_rows(p, argv, lambda a: det_rows(a.rows, CONFIG_DIR),
                                  counts=('iters', 'threads', 'num_train', 'num_val'))


def main(argv=None):
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    meta = compare_cli.run_meta(args, REPO, 'tools/compare_norms_det.py', argv)

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
    compare_cli.write_report(args, args.work_dir, results, summary, HEADLINE, table, meta)
    return summary


if __name__ == '__main__':
    main()
