"""Compare normalizers in Mask R-CNN on the built-in demo data: one command, one table.

    python tools/compare_norms_det.py [--norms bn gn sn syncsn] [--iters N]
                                      [--out work_dirs/compare_norms_det/table.md]

Trains the demo config of every normalizer in turn (``tools/demo.py``, each in its own
process so timings do not interfere; same data, seed and schedule; the configs differ
only in ``norm_cfg``), then prints and writes a README-ready markdown table: bbox mAP,
segm mAP (mmdet's CocoMetric on the val split) and training seconds per iteration.
Each run's results are read from the ``metrics.json`` that tools/demo.py writes.

Normalizers (``sn_mm.apis.norm_tables.DET_NORMS``): ``bn``, ``syncbn``, ``gn``, ``sn``,
``syncsn`` (everywhere) and ``bn_sn-head``, ``bn_gn-head``, ``gn_sn-head`` (backbone /
FPN+heads). In a single process SyncSN computes what SN does and SyncBN is reverted to
BN by mmengine, so their rows show the cost of the synchronized layers only.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

from sn_mm.apis.norm_tables import DET_NORMS, det_config, det_table

DEMO = osp.join(osp.dirname(osp.abspath(__file__)), 'demo.py')


def run_one(norm: str, work_root: str, iters, data_root: str, extra) -> dict:
    work_dir = osp.join(work_root, norm)
    cmd = [sys.executable, DEMO, '--config', det_config(norm), '--work-dir', work_dir,
           '--data-root', data_root]
    if iters is not None:
        cmd += ['--iters', str(iters)]
    cmd += extra
    print(f'[compare] {norm}: {" ".join(cmd)}', flush=True)
    subprocess.run(cmd, check=True)
    with open(osp.join(work_dir, 'metrics.json')) as f:
        return json.load(f)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--norms', nargs='+', default=['bn', 'gn', 'sn', 'syncsn'],
                   choices=sorted(DET_NORMS))
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
    results = {norm: run_one(norm, args.work_dir, args.iters, args.data_root, args.demo_args)
               for norm in args.norms}
    table = det_table(results)
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
