"""The main job: Mask R-CNN with Switchable Normalization, end to end, on built-in data.

    python tools/demo.py [--config CONFIG] [--work-dir DIR] [--data-root data/coco_demo]
                         [--iters N] [--cfg-options k=v ...]

1. Generates the synthetic COCO-format data set (``data/coco_demo``) unless an
   identical one is already there (sn_mm/datasets/coco_demo.py).
2. Trains the SN demo config (ResNet-18 FPN Mask R-CNN with SN in backbone, FPN, box
   and mask heads, from scratch) through the same code path as ``tools/train.py``
   (its ``build_cfg``, then mmengine's Runner), with mmengine's progress/ETA logging.
3. Evaluates the final model on the val split with mmdet's CocoMetric (bbox + segm
   mAP) at the end of training, writes ``metrics.json`` and prints where the
   checkpoint, logs and metrics are, plus the learned SN importance shares.

About 10 minutes on 2 CPU cores (see docs/detection.md for measured times).
"""
import os

# Under CPU contention OpenMP's spinning barriers make multi-threaded torch far slower
# than it needs to be; passive waiting costs little when the machine is idle.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os.path as osp  # noqa: E402
import time  # noqa: E402

from mmengine.config import DictAction  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join(ROOT, 'configs', 'mask_rcnn_demo', 'mask-rcnn_r18_fpn_sn-all_coco-demo.py')
METRIC_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75',
               'coco/segm_mAP', 'coco/segm_mAP_50', 'coco/segm_mAP_75')


def load_train_module():
    """tools/train.py as a module, so the demo builds its config exactly as it does."""
    path = osp.join(ROOT, 'tools', 'train.py')
    spec = importlib.util.spec_from_file_location('sn_mm_tools_train', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_schedule(cfg, iters: int) -> None:
    """Train ``iters`` iterations: warm-up, lr steps at 75% / 90%, validate and save at
    the end (the demo base config's schedule, rescaled)."""
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f'iters must be a positive int, got {iters!r}')
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint.interval = iters
    warmup, steps = cfg.param_scheduler
    warmup.end = max(1, min(100, iters // 5))
    steps.end = iters
    steps.milestones = [max(1, int(iters * 0.75)), max(1, int(iters * 0.9))]


def set_data_root(cfg, data_root: str) -> None:
    root = data_root.rstrip('/') + '/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = root
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = root + 'annotations/instances_val.json'


class Timer(Hook):
    """Records the wall time of training and of the final validation."""

    priority = 'VERY_LOW'

    def __init__(self):
        self.times = {}

    def before_train(self, runner):
        self.times['train_start'] = time.time()
        self.times['train_cpu_start'] = time.process_time()  # all threads of this process
        self.times['load_start'] = os.getloadavg()[0]

    def before_val(self, runner):
        if 'val_start' not in self.times:
            self.times['val_start'] = time.time()
            self.times['train_cpu'] = time.process_time() - self.times['train_cpu_start']
            self.times['load_end'] = os.getloadavg()[0]

    def after_val(self, runner):
        self.times['val_end'] = time.time()


def sn_shares(model):
    """Average softmaxed [IN, LN, BN] shares (mean, variance) per model part."""
    import torch

    from sn_mm.ops import SwitchableNorm
    parts = {}
    for name, module in model.named_modules():
        if isinstance(module, SwitchableNorm):
            part = 'backbone' if name.startswith('backbone') else 'FPN + heads'
            mean, var = module.importance()
            if mean.numel() == 2:
                mean, var = torch.cat([mean, mean.new_zeros(1)]), torch.cat([var, var.new_zeros(1)])
            parts.setdefault(part, []).append((mean, var))
    return {part: tuple(torch.stack([v[i] for v in vals]).mean(0).tolist() for i in (0, 1))
            for part, vals in parts.items()}


def sn_figures(model, runner, name):
    """The learned shares per layer (tools/analyze_sn.py's figure) and their trajectories
    (SNRatioHook's scalars, when the config logs them) in the run's folders."""
    from sn_mm.analysis import plot_ratios, ratios_from_model
    from sn_mm.ops import SwitchableNorm
    if not any(isinstance(m, SwitchableNorm) for m in model.modules()):
        return []
    figures = [plot_ratios([(name, ratios_from_model(model))],
                           osp.join(runner.work_dir, 'sn_ratios.png'),
                           title='learned SN shares [IN, LN, BN] per layer')]
    scalars = osp.join(runner.log_dir, 'vis_data', 'scalars.json')
    if osp.isfile(scalars):
        from sn_mm.analysis.trajectories import plot_trajectories, read_trajectories
        figures.append(plot_trajectories(read_trajectories(scalars),
                                         osp.join(runner.work_dir, 'sn_trajectories.png'),
                                         title=f'{name}: SN shares during training'))
    return figures


def parse_args(argv=None):
    from sn_mm.datasets import coco_demo
    p = argparse.ArgumentParser(description='Train and evaluate Mask R-CNN with SN on the '
                                'built-in synthetic COCO-format data (CPU friendly).')
    p.add_argument('--config', default=DEFAULT_CONFIG, help='demo config (any normalizer)')
    p.add_argument('--work-dir', help='default: work_dirs/demo_<config name>')
    p.add_argument('--data-root', default='data/coco_demo')
    p.add_argument('--num-train', type=int, default=coco_demo.default_params()['num_train'])
    p.add_argument('--num-val', type=int, default=coco_demo.default_params()['num_val'])
    p.add_argument('--iters', type=int, help='training iterations (config default: 1000)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, key=value (as tools/train.py)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    from sn_mm.datasets import coco_demo
    params = dict(num_train=args.num_train, num_val=args.num_val)
    _, generated = coco_demo.ensure_coco_demo(args.data_root, **params)
    t_data = time.time() - t0
    print(f'[demo] data: {osp.abspath(args.data_root)} '
          f'({"generated" if generated else "already there"}, {t_data:.0f}s)', flush=True)

    train = load_train_module()
    name = osp.splitext(osp.basename(args.config))[0]
    work_dir = args.work_dir or osp.join('work_dirs', f'demo_{name}')
    train_args = argparse.Namespace(
        config=args.config, work_dir=work_dir, amp=False, auto_scale_lr=False, resume=None,
        cfg_options=args.cfg_options, launcher='none', local_rank=0)
    cfg = train.build_cfg(train_args)
    set_data_root(cfg, args.data_root)
    if args.iters is not None:
        set_schedule(cfg, args.iters)
    iters = cfg.train_cfg.max_iters

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    timer = Timer()
    runner.register_hook(timer)
    runner.train()
    t_end = time.time()

    import torch
    hub = runner.message_hub
    metrics = {}
    for key in METRIC_KEYS:
        if f'val/{key}' in hub.log_scalars:
            metrics[key] = float(hub.get_scalar(f'val/{key}').current())
    times = timer.times
    train_s = times.get('val_start', t_end) - times['train_start']
    val_s = times.get('val_end', t_end) - times.get('val_start', t_end)
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    summary = dict(config=args.config, iterations=iters,
                   images_per_iteration=cfg.train_dataloader.batch_size,
                   train_seconds=round(train_s, 1),
                   train_seconds_per_iteration=round(train_s / iters, 3),
                   # CPU seconds of the training process (all its threads) per iteration:
                   # less sensitive than wall time to other jobs on the machine
                   train_cpu_seconds_per_iteration=round(times.get('train_cpu', 0.0) / iters, 3),
                   load_average_1min=[round(times.get('load_start', -1), 2),
                                      round(times.get('load_end', -1), 2)],
                   torch_threads=torch.get_num_threads(),
                   eval_seconds=round(val_s, 1), data_seconds=round(t_data, 1),
                   total_seconds=round(t_end - t0, 1), metrics=metrics,
                   sn_shares_in_ln_bn={k: dict(mean=[round(x, 3) for x in m],
                                               var=[round(x, 3) for x in v])
                                       for k, (m, v) in sn_shares(model).items()})
    metrics_path = osp.join(work_dir, 'metrics.json')
    with open(metrics_path, 'w') as f:
        json.dump(summary, f, indent=1)

    ckpt = osp.join(work_dir, f'iter_{iters}.pth')
    log_file = osp.join(runner.log_dir, f'{runner.timestamp}.log')
    print('\n' + '=' * 72)
    print(f'[demo] Mask R-CNN ({name}) on the synthetic COCO data: done in '
          f'{(t_end - t0) / 60:.1f} min (training {train_s / 60:.1f} min, '
          f'{train_s / iters:.2f} s/iteration, {summary["train_cpu_seconds_per_iteration"]:.2f} '
          f'CPU s/iteration on {summary["torch_threads"]} threads, load average '
          f'{summary["load_average_1min"][0]}-{summary["load_average_1min"][1]}; '
          f'evaluation {val_s:.0f} s)')
    if metrics:
        print(f'[demo] val: bbox mAP {metrics.get("coco/bbox_mAP", float("nan")):.3f} '
              f'(AP50 {metrics.get("coco/bbox_mAP_50", float("nan")):.3f}), segm mAP '
              f'{metrics.get("coco/segm_mAP", float("nan")):.3f} '
              f'(AP50 {metrics.get("coco/segm_mAP_50", float("nan")):.3f})')
    for part, shares in summary['sn_shares_in_ln_bn'].items():
        print(f'[demo] learned SN shares [IN, LN, BN], {part}: mean {shares["mean"]}, '
              f'var {shares["var"]}')
    print(f'[demo] checkpoint: {osp.abspath(ckpt)}')
    print(f'[demo] logs:       {osp.abspath(log_file)}')
    print(f'[demo] metrics:    {osp.abspath(metrics_path)}')
    for figure in sn_figures(model, runner, name):
        print(f'[demo] figure:     {osp.abspath(figure)}')
    print(f'[demo] evaluate again: python tools/test.py {osp.relpath(args.config)} '
          f'{osp.relpath(ckpt)}')
    print('=' * 72)
    return summary


if __name__ == '__main__':
    main()
