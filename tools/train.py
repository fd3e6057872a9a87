"""Train a detector or segmentor with sn_mm's layers available (mmdet/mmseg shape).

The config's ``default_scope`` (``mmdet`` or ``mmseg``) decides which library builds
the model, datasets and metrics; ``import sn_mm`` registers ``SN``/``SyncSN``.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction

import sn_mm  # noqa: F401  registers SN/SyncSN, hooks and safe checkpoint loading
from sn_mm.apis import build_cfg, build_runner


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model (MMDetection/MMSegmentation)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual total batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or from the latest '
                             'checkpoint in the work dir if no path is given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value (xxx=yyy format)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    cfg = build_cfg(args.config, args.work_dir, args.cfg_options, args.launcher, args.amp,
                    args.auto_scale_lr, args.resume)
    build_runner(cfg).train()
    print(f'Work dir (checkpoints, logs, metrics): {osp.abspath(cfg.work_dir)}')


if __name__ == '__main__':
    main()
