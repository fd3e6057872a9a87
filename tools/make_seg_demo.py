"""Generate the built-in semantic-segmentation demo data (real Cityscapes / ADE20K layouts).

    python tools/make_seg_demo.py [--layout {cityscapes,ade20k,both}] [--root data/seg_demo]
                                  [--num-train 100] [--num-val 20] [--seed 0] [--force]

Writes ``<root>/cityscapes`` (leftImg8bit/ + gtFine/, 19 train ids, 255 = ignore) and
``<root>/ade20k`` (images/ + annotations/, 0 = other, 1..150 = classes), the
``data_root`` of the configs in ``configs/seg_demo/``. Deterministic; skipped when the
same data is already there (``--force`` regenerates).
"""
import argparse
import os.path as osp

from sn_mm.datasets.seg_demo import LAYOUTS, ensure_seg_demo, make_seg_demo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--layout', choices=LAYOUTS + ('both',), default='both')
    parser.add_argument('--root', default='data/seg_demo',
                        help='parent folder; each layout goes to <root>/<layout>')
    parser.add_argument('--num-train', type=int, default=100)
    parser.add_argument('--num-val', type=int, default=20)
    parser.add_argument('--size', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'), default=None,
                        help='image size (ADE20K: the largest size; default 128 256 for '
                             'Cityscapes, 160 224 for ADE20K)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true', help='regenerate even if present')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    layouts = LAYOUTS if args.layout == 'both' else (args.layout,)
    size = tuple(args.size) if args.size else None
    for layout in layouts:
        root = osp.join(args.root, layout)
        kwargs = dict(num_train=args.num_train, num_val=args.num_val, size=size,
                      seed=args.seed, progress=print)
        if args.force:
            make_seg_demo(root, layout, **kwargs)
        else:
            ensure_seg_demo(root, layout, **kwargs)
        print(f'{layout} demo data: {osp.abspath(root)}')


if __name__ == '__main__':
    main()
