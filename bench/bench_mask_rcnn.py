"""Mask R-CNN R50-FPN training-step time with SN / GN / BN everywhere, interleaved.

The model is mmdet's ``gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py`` (norm in backbone, FPN,
Shared4Conv1FC box head and mask head) with ``norm_cfg`` swapped; inputs are mmdet's
``demo_mm_inputs`` (random images with boxes and masks). Prints the median step time
of each variant and the ratios to GN — one run, steps interleaved with the order
rotated — and, from one profiled step each, the time spent in the norm layers themselves
(the step time is dominated by convolutions and RoIAlign, whose run-to-run noise on a
shared CPU is larger than the whole difference between the norms).

    python bench/bench_mask_rcnn.py [--size 384] [--steps 6] [--batch 2] [--device cuda]

On CUDA the steps are synchronized, and each norm's peak memory of one step
(``torch.cuda.max_memory_allocated``) is printed too.
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

# The outermost profiler events of each norm's forward and backward (inclusive times).
NORM_OPS = {
    'SN': ('sn_mm::switchable_norm',
           'torch::autograd::CppNode<(anonymous namespace)::SwitchableNormFunction>'),
    'GN': ('aten::group_norm', 'NativeGroupNormBackward0'),
    'BN': ('aten::batch_norm', 'NativeBatchNormBackward0'),
}

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


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def peak_mib(step, device):
    """Peak CUDA memory of one training step, MiB (None on CPU)."""
    if device.type != 'cuda':
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    step()
    sync(device)
    return torch.cuda.max_memory_allocated() / 2**20


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
    parser.add_argument('--steps', type=int, default=6)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    args = parser.parse_args()
    device = torch.device(args.device)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    steps = {name: make_step(build(cfg).to(device), args.size, args.batch)
             for name, cfg in NORMS.items()}
    for step in steps.values():  # warm-up
        step()
    names = list(steps)
    times = {name: [] for name in names}
    for i in range(args.steps):  # interleaved, order rotated every round
        for name in names[i % len(names):] + names[:i % len(names)]:
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    own = {name: norm_time_in_step(steps[name], name) for name in names}
    peaks = {name: peak_mib(steps[name], device) for name in names}
    where = (torch.cuda.get_device_name() if device.type == 'cuda'
             else f'{platform.machine()}, {torch.get_num_threads()} threads')
    print(f'# Mask R-CNN R50-FPN training step, {args.batch}x{args.size}x{args.size}, '
          f'torch {torch.__version__}, {where}, '
          f'median of {args.steps} interleaved steps (order rotated)')
    cuda = device.type == 'cuda'
    print('| norm everywhere | s/step | ratio to GN | norm layers\' own s/step (profiled) |'
          + (' peak MiB |' if cuda else ''))
    print('|---|---|---|---|' + ('---|' if cuda else ''))
    for name, t in med.items():
        print(f'| {name} | {t:.2f} | {t / med["GN"]:.2f} | {own[name]:.2f} |'
              + (f' {peaks[name]:.0f} |' if cuda else ''))
    print()
    print("Norm layers' own time: forward+backward of the norm ops alone in one profiled step "
          '(torch.profiler, inclusive CPU time of ' + '; '.join(
              f'{n}: {", ".join(ops)}' for n, ops in NORM_OPS.items()) + ').')


def norm_time_in_step(step, name):
    """Seconds one training step spends inside the norm layers' own ops (profiled)."""
    from torch.profiler import profile
    with profile() as prof:
        step()
    return sum(e.cpu_time_total for e in prof.key_averages()
               if e.key in NORM_OPS[name]) / 1e6

if __name__ == '__main__':
    main()
