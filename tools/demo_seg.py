"""Semantic-segmentation demo in one command: generate data, train DeepLab with SN, evaluate.

    python tools/demo_seg.py [--layout {cityscapes,ade20k,both}] [--model {deeplabv3,deeplabv3plus}]
                             [--norm {sn,syncsn,syncbn,gn,ssn,sw,en}] [--iters N] [--seed N] [--threads N]
                             [--data-root data/seg_demo] [--work-dir work_dirs/seg_demo]

For each layout (default: both), in this process, with the demo runner that
``tools/demo.py`` and the comparison tools use (``sn_mm.apis.demo_run.run_demo``):

1. writes the built-in data (Cityscapes layout: 100 train / 20 val street scenes,
   256x128; ADE20K layout: 100 / 20 indoor scenes up to 224x160), skipped when there;
2. trains ``configs/seg_demo/<model>_r18-d8-<norm>_demo-<layout>.py`` (200 iterations
   of 4 crops of 128x128 by default) and evaluates it at the end (mmseg ``IoUMetric``).

It prints the mIoU per layout beside the README's mean ± std over seeds for the same
config (``docs/demo_expected.json``, written by ``tools/compare_norms_seg.py``) and where
the checkpoints and logs are. ``--threads`` sets torch's intra-op threads (on a busy
machine 1 thread is often faster than 2); ``--seed`` the seed.
Library: ``sn_mm.apis.seg_demo``.
"""
import argparse
import os.path as osp

from sn_mm.apis.expected import load_expected
from sn_mm.apis.seg_demo import LAYOUTS, MODELS, NORMS, format_results, run_seg_demo

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(REPO, 'configs', 'seg_demo')
EXPECTED = osp.join(REPO, 'docs', 'demo_expected.json')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--layout', choices=LAYOUTS + ('both',), default='both')
    parser.add_argument('--model', choices=MODELS, default='deeplabv3')
    parser.add_argument('--norm', choices=NORMS, default='sn')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations (default: the config, 600)')
    parser.add_argument('--seed', type=int, default=None,
                        help="randomness.seed (default: the config's, 0)")
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch default)')
    parser.add_argument('--data-root', default='data/seg_demo')
    parser.add_argument('--work-dir', default='work_dirs/seg_demo')
    args = parser.parse_args(argv)
    for name in ('iters', 'threads'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f'--{name} must be >= 1, got {getattr(args, name)}')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    layouts = LAYOUTS if args.layout == 'both' else (args.layout,)
    results = run_seg_demo(CONFIG_DIR, args.model, args.norm, layouts, args.data_root,
                           args.work_dir, args.iters, args.seed,
                           log=lambda line: print(line, flush=True))
    print('\n' + format_results(results, load_expected(EXPECTED)))
    return results


if __name__ == '__main__':
    main()
