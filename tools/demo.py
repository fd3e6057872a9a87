"""The main job: Mask R-CNN with Switchable Normalization, end to end, on built-in data.

    python tools/demo.py [--config CONFIG] [--work-dir DIR] [--data-root data/coco_demo]
                         [--iters N] [--seed N] [--cfg-options k=v ...]

1. Generates the synthetic COCO-format data set (``data/coco_demo``) unless an
   identical one is already there (sn_mm/datasets/coco_demo.py).
2. Trains the SN demo config (ResNet-18 FPN Mask R-CNN with SN in backbone, FPN, box
   and mask heads, from scratch) in this process with mmengine's Runner, as
   ``tools/train.py`` does (``sn_mm.apis.build_cfg``), with progress/ETA logging.
3. Evaluates the final model on the val split with mmdet's CocoMetric (bbox + segm
   mAP) at the end of training, writes ``metrics.json`` and prints where the
   checkpoint, logs and metrics are, plus the learned SN importance shares, and prints
   its mAP beside the README's mean ± std over seeds for the same config
   (``docs/demo_expected.json``, written by ``tools/compare_norms_det.py``).

300 iterations by default (1000 before 2026-12-03; docs/benchmarks.md has the measured
times).
Library: ``sn_mm.apis.det_demo``.
"""
import os

# Under CPU contention OpenMP's spinning barriers make multi-threaded torch far slower
# than it needs to be; passive waiting costs little when the machine is idle.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402

from mmengine.config import DictAction  # noqa: E402

from sn_mm.apis.det_demo import format_summary, run_det_demo  # noqa: E402
from sn_mm.apis.expected import load_expected  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, 'configs', 'mask_rcnn_demo',
                              'mask-rcnn_r18_fpn_sn-all_coco-demo.py')
EXPECTED = os.path.join(REPO, 'docs', 'demo_expected.json')


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
    p.add_argument('--iters', type=int, help="training iterations (default: the config's)")
    p.add_argument('--seed', type=int, help="randomness.seed (default: the config's, 0)")
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, key=value (as tools/train.py)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    summary = run_det_demo(args.config, args.work_dir, args.data_root, args.num_train,
                           args.num_val, args.iters, args.cfg_options, seed=args.seed,
                           log=lambda line: print(line, flush=True))
    print('\n' + format_summary(summary, load_expected(EXPECTED)))
    return summary


if __name__ == '__main__':
    main()
