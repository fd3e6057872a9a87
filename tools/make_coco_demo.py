"""Write sn_mm's synthetic instance-segmentation data set in COCO format.

    python tools/make_coco_demo.py [--out data/coco_demo] [--num-train 400] [--num-val 80]
                                   [--image-size 256] [--max-objects 5] [--seed 0] [--force]

Coloured, shaded circles / squares / triangles / stars with occlusion on textured
backgrounds; ``annotations/instances_{train,val}.json`` hold polygons (unoccluded
shapes) or RLE (occluded ones), areas, boxes, ``iscrowd`` and the 4 categories.
Deterministic from ``--seed``; an existing identical data set is left untouched
unless ``--force``. See sn_mm/datasets/coco_demo.py for the conventions.
"""
import argparse
import json
import os.path as osp
import time

from sn_mm.datasets import coco_demo


def parse_args(argv=None):
    d = coco_demo.default_params()
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='data/coco_demo', help='output directory')
    p.add_argument('--num-train', type=int, default=d['num_train'])
    p.add_argument('--num-val', type=int, default=d['num_val'])
    p.add_argument('--image-size', type=int, default=d['image_size'], help='square, pixels')
    p.add_argument('--max-objects', type=int, default=d['max_objects'])
    p.add_argument('--min-size', type=float, default=d['min_size'], help='shape extent, px')
    p.add_argument('--max-size', type=float, default=d['max_size'], help='shape extent, px')
    p.add_argument('--min-visible', type=float, default=d['min_visible'],
                   help='minimum visible fraction of an occluded shape')
    p.add_argument('--seed', type=int, default=d['seed'])
    p.add_argument('--force', action='store_true', help='regenerate even if up to date')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    params = dict(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                  max_objects=args.max_objects, min_size=args.min_size,
                  max_size=args.max_size, min_visible=args.min_visible, seed=args.seed)
    start = time.time()
    if not args.force and coco_demo.is_generated(args.out, **params):
        print(f'{osp.abspath(args.out)} is up to date (same parameters); use --force to rewrite')
        return
    paths = coco_demo.make_coco_demo(args.out, **params)
    for split, path in paths.items():
        data = json.load(open(path))
        print(f'{split}: {len(data["images"])} images, {len(data["annotations"])} instances '
              f'-> {path}')
    print(f'done in {time.time() - start:.1f}s')


if __name__ == '__main__':
    main()
