"""Evaluate a checkpoint of a detector or segmentor (mmdet/mmseg shape).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                         [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]
                         [--allow-partial]

The checkpoint must hold every tensor of the model with its shape (``num_batches_tracked``
counters excepted); otherwise the run stops with the list of what is missing or mismatched,
instead of evaluating a partly random model. ``--allow-partial`` evaluates anyway
(mmengine's behaviour: load what matches, log the rest).
"""
import argparse
import os
import os.path as osp
import pickle
import sys

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
    parser.add_argument('--allow-partial', action='store_true',
                        help='evaluate even if the checkpoint does not cover the model')
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
    if not args.allow_partial:
        from mmengine.model import is_model_wrapper

        from sn_mm.checkpoint import (CheckpointCoverageError, check_model_coverage,
                                      read_state_dict)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        try:
            check_model_coverage(model, read_state_dict(args.checkpoint), args.checkpoint,
                                 what=f'model of {args.config}', allow='pass --allow-partial')
        except (CheckpointCoverageError, OSError, ValueError, pickle.UnpicklingError) as err:
            print(f'error: {err}', file=sys.stderr)
            sys.exit(2)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    metrics = runner.test()
    print(f'Metrics: {metrics}')
    print(f'Work dir (logs, metrics): {osp.abspath(cfg.work_dir)}')


if __name__ == '__main__':
    main()
