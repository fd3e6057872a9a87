"""README-ready table: SyncBN / GN / SN / SyncSN for DeepLab on both built-in demo datasets.

    python tools/compare_norms_seg.py [--model {deeplabv3,deeplabv3plus}] [--iters N]
                                      [--layouts cityscapes ade20k] [--norms syncbn gn sn syncsn]
                                      [--threads N] [--data-root data/seg_demo]
                                      [--work-dir work_dirs/compare_norms_seg]

Every (normalizer, layout) pair is trained on its demo config
(``configs/seg_demo/<model>_r18-d8-<norm>_demo-<layout>.py``: same model, data, schedule
and seed; only ``norm_cfg`` differs, plus no weight decay on SN parameters) and its
checkpoint evaluated (mmseg ``IoUMetric``, val split, single scale), in this process
(``sn_mm.apis.seg_demo.train_and_test``). On one process SyncBN is BN (mmengine reverts
it) and SyncSN is SN.

Reported per run: mIoU, mean seconds per training iteration (mmengine's ``train/time``,
first logging window dropped as warm-up) and, for SN runs, the learned importance
shares IN/LN/BN averaged over layers and over the mean/variance weights. The Markdown
table, the machine description (cores, threads, load average before and after: other
work on the machine slows every run) and a JSON file go to ``--work-dir``.
"""
import argparse
import json
import os
import os.path as osp
import platform
import time

from sn_mm.apis.norm_tables import SEG_NORMS, load_average, seg_table
from sn_mm.apis.seg_demo import LAYOUTS, MODELS, ROOT, demo_config, demo_options, train_and_test


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', choices=MODELS, default='deeplabv3')
    parser.add_argument('--layouts', nargs='+', choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument('--norms', nargs='+', choices=list(SEG_NORMS),
                        default=['syncbn', 'gn', 'sn', 'syncsn'])
    parser.add_argument('--iters', type=int, default=None, help='default: the configs (600)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch default)')
    parser.add_argument('--data-root', default='data/seg_demo')
    parser.add_argument('--work-dir', default='work_dirs/compare_norms_seg')
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        parser.error(f'--iters must be >= 1, got {args.iters}')
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmengine.config import Config

    from sn_mm.analysis import average_shares, ratios_from_checkpoint
    from sn_mm.datasets.seg_demo import ensure_seg_demo
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for layout in args.layouts:
        ensure_seg_demo(osp.join(args.data_root, layout), layout, progress=print)
    cfg = Config.fromfile(osp.join(ROOT, demo_config(args.model, 'sn', args.layouts[0])))
    meta = dict(model_title='DeepLabV3' if args.model == 'deeplabv3' else 'DeepLabV3+',
                iters=args.iters or cfg.train_cfg.max_iters,
                batch=cfg.train_dataloader.batch_size, cpus=os.cpu_count(),
                cpu=platform.processor() or platform.machine(), torch=torch.__version__,
                threads=torch.get_num_threads(), load_before=load_average())
    start = time.time()
    results = {}
    for layout in args.layouts:
        for norm in args.norms:
            print(f'=== {args.model} {norm} on the {layout}-layout demo ===', flush=True)
            config = demo_config(args.model, norm, layout)
            work_dir = osp.join(args.work_dir, osp.splitext(osp.basename(config))[0])
            r = train_and_test(config, work_dir,
                               demo_options(osp.join(args.data_root, layout), args.iters))
            if norm in ('sn', 'syncsn', 'ssn'):
                r['shares'] = average_shares(ratios_from_checkpoint(r['checkpoint']))['both']
            results[(norm, layout)] = r
            print(f'    mIoU {r["test"]["mIoU"]:.2f}, {r["sec_per_iter"]:.2f} s/iter, '
                  f'work dir {r["work_dir"]}', flush=True)
    meta.update(load_after=load_average(), minutes=(time.time() - start) / 60)
    table = seg_table(results, args.layouts, args.norms, meta)
    os.makedirs(args.work_dir, exist_ok=True)
    table_path = osp.join(args.work_dir, f'table_{args.model}.md')
    with open(table_path, 'w') as f:
        f.write(table)
    with open(osp.join(args.work_dir, f'results_{args.model}.json'), 'w') as f:
        json.dump(dict(meta=meta, runs={f'{n}/{l}': r for (n, l), r in results.items()}), f,
                  indent=1)
    print('\n' + table)
    print(f'Table: {osp.abspath(table_path)}')


if __name__ == '__main__':
    main()
