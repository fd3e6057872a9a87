"""Compare normalizers in Mask R-CNN on the built-in demo data: one command, one table.

    python tools/compare_norms_det.py [--norms bn gn sn syncsn] [--iters N]
                                      [--out work_dirs/compare_norms_det/table.md]

Trains the demo config of every normalizer in turn (``tools/demo.py``, each in its own
process so timings do not interfere; same data, seed and schedule; the configs differ
only in ``norm_cfg``), then prints and writes a README-ready markdown table: bbox mAP,
segm mAP (mmdet's CocoMetric on the val split) and training seconds per iteration.

Normalizer names are the demo config suffixes: ``bn``, ``syncbn``, ``gn``, ``sn``,
``syncsn`` (everywhere) and ``bn_sn-head``, ``bn_gn-head``, ``gn_sn-head`` (backbone /
FPN+heads). In a single process SyncSN computes what SN does and SyncBN is reverted to
BN by mmengine, so their rows show the cost of the synchronized layers only.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_DIR = osp.join(ROOT, 'configs', 'mask_rcnn_demo')
LABELS = {
    'bn': 'BN / BN', 'syncbn': 'SyncBN / SyncBN', 'gn': 'GN / GN', 'sn': 'SN / SN',
    'syncsn': 'SyncSN / SyncSN', 'bn_sn-head': 'BN / SN', 'bn_gn-head': 'BN / GN',
    'gn_sn-head': 'GN / SN', 'ssn': 'SSN / SSN',
}


def config_of(norm: str) -> str:
    if norm not in LABELS:
        raise ValueError(f'unknown normalizer {norm!r}; expected one of {sorted(LABELS)}')
    suffix = norm if '_' in norm else f'{norm}-all'
    return osp.join(DEMO_DIR, f'mask-rcnn_r18_fpn_{suffix}_coco-demo.py')


def run_one(norm: str, work_root: str, iters, data_root: str, extra) -> dict:
    work_dir = osp.join(work_root, norm)
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'demo.py'), '--config', config_of(norm),
           '--work-dir', work_dir, '--data-root', data_root]
    if iters is not None:
        cmd += ['--iters', str(iters)]
    cmd += extra
    print(f'[compare] {norm}: {" ".join(cmd)}', flush=True)
    subprocess.run(cmd, check=True)
    with open(osp.join(work_dir, 'metrics.json')) as f:
        return json.load(f)


def _fmt(value) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


def _cpu(result: dict) -> str:
    value = result.get('train_cpu_seconds_per_iteration')
    return '-' if value is None else f'{value:.2f}'


def _loads(results: dict) -> str:
    loads = [x for r in results.values() for x in r.get('load_average_1min', []) if x >= 0]
    return f'{min(loads):.1f}-{max(loads):.1f}' if loads else 'unknown'


def markdown_table(results: dict) -> str:
    any_result = next(iter(results.values()))
    lines = [
        '| Normalizer (backbone / FPN + heads) | bbox mAP | bbox AP50 | segm mAP | segm AP50 '
        '| train s/iter | train CPU s/iter |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for norm, r in results.items():
        m = r['metrics']
        lines.append(f'| {LABELS[norm]} | {_fmt(m.get("coco/bbox_mAP"))} '
                     f'| {_fmt(m.get("coco/bbox_mAP_50"))} | {_fmt(m.get("coco/segm_mAP"))} '
                     f'| {_fmt(m.get("coco/segm_mAP_50"))} '
                     f'| {r["train_seconds_per_iteration"]:.2f} '
                     f'| {_cpu(r)} |')
    lines.append('')
    lines.append(
        f'Mask R-CNN, half-width ResNet-18 FPN from scratch, synthetic COCO-format shapes '
        f'(256x256, 4 classes), {any_result["iterations"]} iterations x '
        f'{any_result["images_per_iteration"]} images, mAP x100 on the val split '
        f'(mmdet CocoMetric). Measured {datetime.date.today().isoformat()} on '
        f'{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), '
        f'{any_result.get("torch_threads", "?")} torch threads, 1-minute load average '
        f'{_loads(results)} during training (wall s/iter grows with other jobs on the '
        f'machine; CPU s/iter, summed over the threads, much less), '
        f'`python tools/compare_norms_det.py`.')
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--norms', nargs='+', default=['bn', 'gn', 'sn', 'syncsn'],
                   choices=sorted(LABELS))
    p.add_argument('--iters', type=int, help='training iterations (default: the config\'s)')
    p.add_argument('--data-root', default='data/coco_demo')
    p.add_argument('--work-dir', default='work_dirs/compare_norms_det')
    p.add_argument('--out', help='markdown file (default: WORK_DIR/table.md)')
    p.add_argument('--demo-args', nargs=argparse.REMAINDER, default=[],
                   help='further arguments passed to tools/demo.py (put last)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    results = {}
    for norm in args.norms:
        results[norm] = run_one(norm, args.work_dir, args.iters, args.data_root,
                                args.demo_args)
    table = markdown_table(results)
    out = args.out or osp.join(args.work_dir, 'table.md')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        f.write(table + '\n')
    with open(osp.splitext(out)[0] + '.json', 'w') as f:
        json.dump(results, f, indent=1)
    print('\n' + table + '\n')
    print(f'[compare] {len(results)} runs in {(time.time() - start) / 60:.1f} min; '
          f'table: {osp.abspath(out)}')
    return results


if __name__ == '__main__':
    main()
