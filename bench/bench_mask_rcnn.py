"""Mask R-CNN R50-FPN training-step time with SN / GN / BN everywhere, interleaved.

The model is mmdet's ``gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py`` (norm in backbone, FPN,
Shared4Conv1FC box head and mask head) with ``norm_cfg`` swapped; inputs are mmdet's
``demo_mm_inputs`` (random images with boxes and masks). Prints the median step time
of each variant and the ratios to GN — one run, steps interleaved.

    python bench/bench_mask_rcnn.py [--size 384] [--steps 4] [--batch 2]
"""
import argparse
import copy
import os
import platform
import statistics
import time

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import sn_mm  # noqa: F401

NORMS = {
    'SN': dict(type='SN'),
    'GN': dict(type='GN', num_groups=32, requires_grad=True),
    'BN': dict(type='BN', requires_grad=True),
}


def build(norm_cfg):
    import mmdet
    from mmdet.registry import MODELS
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', 'gn',
                                       'mask-rcnn_r50_fpn_gn-all_2x_coco.py'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.norm_cfg = norm_cfg
    model_cfg.backbone.norm_eval = False
    model_cfg.backbone.init_cfg = None
    model_cfg.neck.norm_cfg = norm_cfg
    model_cfg.roi_head.bbox_head.norm_cfg = norm_cfg
    model_cfg.roi_head.mask_head.norm_cfg = norm_cfg
    model = MODELS.build(model_cfg)
    model.train()
    return model


def make_step(model, size, batch):
    from mmdet.testing import demo_mm_inputs
    packed = demo_mm_inputs(batch_size=batch, image_shapes=[(3, size, size)] * batch,
                            num_items=[5] * batch, num_classes=80, with_mask=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        data = model.data_preprocessor(copy.deepcopy(packed), True)
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=384)
    parser.add_argument('--steps', type=int, default=4)
    parser.add_argument('--batch', type=int, default=2)
    args = parser.parse_args()
    init_default_scope('mmdet')
    torch.manual_seed(0)
    steps = {name: make_step(build(cfg), args.size, args.batch) for name, cfg in NORMS.items()}
    for step in steps.values():  # warm-up
        step()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f'# Mask R-CNN R50-FPN training step, {args.batch}x{args.size}x{args.size}, '
          f'torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, '
          f'median of {args.steps} interleaved steps')
    print('| norm everywhere | s/step | ratio to GN |')
    print('|---|---|---|')
    for name, t in med.items():
        print(f'| {name} | {t:.2f} | {t / med["GN"]:.2f} |')


if __name__ == '__main__':
    main()
