"""Evaluate a checkpoint of a detector or segmentor (mmdet/mmseg shape).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                         [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.evaluator import DumpResults

import sn_mm  # noqa: F401  registers SN/SyncSN, hooks and safe checkpoint loading
from sn_mm.apis import build_cfg, build_runner


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value (xxx=yyy format)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must be a .pkl/.pickle file, got {args.out!r}')
    return args


def main():
    args = parse_args()
    cfg = build_cfg(args.config, args.work_dir, args.cfg_options, args.launcher,
                    load_from=args.checkpoint)
    runner = build_runner(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    metrics = runner.test()
    print(f'Metrics: {metrics}')
    print(f'Work dir (logs, metrics): {osp.abspath(cfg.work_dir)}')


if __name__ == '__main__':
    main()
