"""README-ready table: SyncBN / GN / SN / SyncSN for DeepLab on both built-in demo datasets.

    python tools/compare_norms_seg.py [--model {deeplabv3,deeplabv3plus}] [--iters N]
                                      [--layouts cityscapes ade20k] [--norms syncbn gn sn syncsn]
                                      [--threads N] [--data-root data/seg_demo]
                                      [--work-dir work_dirs/compare_norms_seg]

Every (normalizer, layout) pair is trained with ``tools/train.py`` on its demo config
(``configs/seg_demo/<model>_r18-d8-<norm>_demo-<layout>.py``: same model, data, schedule
and seed; only ``norm_cfg`` differs, plus no weight decay on SN parameters) and its
checkpoint evaluated with ``tools/test.py`` (mmseg ``IoUMetric``, val split, single scale).
On one process SyncBN is BN (mmengine reverts it) and SyncSN is SN.

Reported per run: mIoU, mean seconds per training iteration (mmengine's logged ``time``,
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
import sys
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from demo_seg import LAYOUTS, MODELS, NORMS, ROOT, train_and_test  # noqa: E402

LABELS = {'syncbn': 'SyncBN (= BN on one process)', 'gn': 'GN (16 groups)', 'sn': 'SN',
          'syncsn': 'SyncSN (= SN on one process)', 'ssn': 'SSN (sparsestmax)'}
TITLES = {'cityscapes': 'Cityscapes-layout demo', 'ade20k': 'ADE20K-layout demo'}


def sn_shares(checkpoint: str):
    """(IN, LN, BN) importance averaged over SN layers and mean/var weights, or None."""
    from sn_mm.analysis import average_shares, ratios_from_checkpoint
    layers = ratios_from_checkpoint(checkpoint)
    return average_shares(layers)['both'] if layers else None


def load_average() -> str:
    try:
        return '/'.join(f'{x:.1f}' for x in os.getloadavg())
    except OSError:
        return 'n/a'


def format_table(results: dict, layouts, norms, meta: dict) -> str:
    head = ['Normalizer'] + [f'{TITLES[l]} mIoU' for l in layouts] \
        + [f'{TITLES[l]} s/iter' for l in layouts] + ['SN shares IN/LN/BN']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for norm in norms:
        row = [LABELS[norm]]
        row += [f'{results[(norm, l)]["test"]["mIoU"]:.2f}' for l in layouts]
        row += [f'{results[(norm, l)]["sec_per_iter"]:.2f}' for l in layouts]
        shares = [results[(norm, l)].get('shares') for l in layouts]
        row.append(', '.join(f'{l}: ' + '/'.join(f'{v:.2f}' for v in s)
                             for l, s in zip(layouts, shares) if s) or '-')
        lines.append('| ' + ' | '.join(row) + ' |')
    notes = [
        '',
        f'{meta["model_title"]} R18-D8 (half width, from scratch), {meta["iters"]} iterations x '
        f'{meta["batch"]} crops of 128x128, SGD lr 0.02 poly, 1 process; mIoU on the 20 val '
        'images (mmseg IoUMetric, single scale; classes absent from the val split are skipped).',
        f'Machine: {meta["cpus"]} CPU cores ({meta["cpu"]}), torch {meta["torch"]}, '
        f'OMP_NUM_THREADS={meta["threads"]}; load average (1/5/15 min) {meta["load_before"]} '
        f'before, {meta["load_after"]} after; wall time {meta["minutes"]:.1f} min. '
        'Other processes on the machine slow every run; compare times within one table.',
    ]
    return '\n'.join(lines + notes) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', choices=MODELS, default='deeplabv3')
    parser.add_argument('--layouts', nargs='+', choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument('--norms', nargs='+', choices=NORMS,
                        default=['syncbn', 'gn', 'sn', 'syncsn'])
    parser.add_argument('--iters', type=int, default=None, help='default: the configs (600)')
    parser.add_argument('--threads', type=int, default=None,
                        help='OMP_NUM_THREADS of each run (default: torch default)')
    parser.add_argument('--data-root', default='data/seg_demo')
    parser.add_argument('--work-dir', default='work_dirs/compare_norms_seg')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.iters is not None and args.iters < 1:
        raise SystemExit(f'--iters must be >= 1, got {args.iters}')
    import torch
    from mmengine.config import Config

    from demo_seg import demo_config
    from sn_mm.datasets.seg_demo import ensure_seg_demo
    for layout in args.layouts:
        ensure_seg_demo(osp.join(args.data_root, layout), layout, progress=print)
    cfg = Config.fromfile(osp.join(ROOT, demo_config(args.model, 'sn', args.layouts[0])))
    meta = dict(model_title='DeepLabV3' if args.model == 'deeplabv3' else 'DeepLabV3+',
                iters=args.iters or cfg.train_cfg.max_iters,
                batch=cfg.train_dataloader.batch_size, cpus=os.cpu_count(),
                cpu=platform.processor() or platform.machine(), torch=torch.__version__,
                threads=args.threads if args.threads is not None
                else os.environ.get('OMP_NUM_THREADS', 'unset'),
                load_before=load_average())
    start = time.time()
    results = {}
    for layout in args.layouts:
        for norm in args.norms:
            print(f'=== {args.model} {norm} on the {layout}-layout demo ===', flush=True)
            r = train_and_test(args.model, norm, layout, args.data_root, args.work_dir,
                               args.iters, args.threads, echo=False)
            if norm in ('sn', 'syncsn', 'ssn'):
                r['shares'] = sn_shares(r['checkpoint'])
            results[(norm, layout)] = r
            print(f'    mIoU {r["test"]["mIoU"]:.2f}, {r["sec_per_iter"]:.2f} s/iter, '
                  f'log {r["work_dir"]}/train_stdout.log', flush=True)
    meta.update(load_after=load_average(), minutes=(time.time() - start) / 60)
    table = format_table(results, args.layouts, args.norms, meta)
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
