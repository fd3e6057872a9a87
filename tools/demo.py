"""The main job: Mask R-CNN with Switchable Normalization, end to end, on built-in data.

    python tools/demo.py [--config CONFIG] [--work-dir DIR] [--data-root data/coco_demo]
                         [--iters N] [--cfg-options k=v ...]

1. Generates the synthetic COCO-format data set (``data/coco_demo``) unless an
   identical one is already there (sn_mm/datasets/coco_demo.py).
2. Trains the SN demo config (ResNet-18 FPN Mask R-CNN with SN in backbone, FPN, box
   and mask heads, from scratch) in this process with mmengine's Runner, as
   ``tools/train.py`` does (``sn_mm.apis.build_cfg``), with progress/ETA logging.
3. Evaluates the final model on the val split with mmdet's CocoMetric (bbox + segm
   mAP) at the end of training, writes ``metrics.json`` and prints where the
   checkpoint, logs and metrics are, plus the learned SN importance shares.

About 8 minutes on 2 idle CPU cores (docs/benchmarks.md has the measured times).
Library: ``sn_mm.apis.det_demo``.
"""
import os

# Under CPU contention OpenMP's spinning barriers make multi-threaded torch far slower
# than it needs to be; passive waiting costs little when the machine is idle.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402

from mmengine.config import DictAction  # noqa: E402

from sn_mm.apis.det_demo import DEFAULT_CONFIG, format_summary, run_det_demo  # noqa: E402


def parse_args(argv=None):
    from sn_mm.datasets import coco_demo
    defaults = coco_demo.default_params()
    p = argparse.ArgumentParser(description='Train and evaluate Mask R-CNN with SN on the '
                                'built-in synthetic COCO-format data (CPU friendly).')
    p.add_argument('--config', default=DEFAULT_CONFIG, help='demo config (any normalizer)')
    p.add_argument('--work-dir', help='default: work_dirs/demo_<config name>')
    p.add_argument('--data-root', default='data/coco_demo')
    p.add_argument('--num-train', type=int, default=defaults['num_train'])
    p.add_argument('--num-val', type=int, default=defaults['num_val'])
    p.add_argument('--iters', type=int, help='training iterations (config default: 1000)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, key=value (as tools/train.py)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    summary = run_det_demo(args.config, args.work_dir, args.data_root, args.num_train,
                           args.num_val, args.iters, args.cfg_options,
                           log=lambda line: print(line, flush=True))
    print('\n' + format_summary(summary))
    return summary


if __name__ == '__main__':
    main()
