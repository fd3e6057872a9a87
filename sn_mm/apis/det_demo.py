"""The detection demo: Mask R-CNN with SN on the built-in synthetic COCO-format data.

:func:`run_det_demo` generates the data (:mod:`sn_mm.datasets.coco_demo`) unless an
identical set is there, trains a demo config in this process (:func:`train_in_process`:
mmengine's Runner, validation with mmdet's CocoMetric at the end), and returns a
summary (also written to ``<work_dir>/metrics.json``): metrics, timings and the learned
SN shares [IN, LN, BN] averaged over the backbone and over FPN + heads.
"""
import json
import os.path as osp
import time
from typing import Optional

from .runner import build_cfg, train_in_process

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIG = osp.join(ROOT, 'configs', 'mask_rcnn_demo',
                          'mask-rcnn_r18_fpn_sn-all_coco-demo.py')
METRIC_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75',
               'coco/segm_mAP', 'coco/segm_mAP_50', 'coco/segm_mAP_75')


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


def shares_by_part(model) -> dict:
    """Average softmaxed [IN, LN, BN] shares ``{part: (mean, var)}``, parts ``backbone``
    and ``FPN + heads`` (:mod:`sn_mm.analysis.ratios`); ``{}`` for a model without SN."""
    from sn_mm.analysis import average_shares, ratios_from_model
    from sn_mm.ops import SwitchableNorm
    if not any(isinstance(m, SwitchableNorm) for m in model.modules()):
        return {}
    parts = {}
    for layer in ratios_from_model(model):
        part = 'backbone' if layer.name.startswith('backbone') else 'FPN + heads'
        parts.setdefault(part, []).append(layer)
    return {part: (average_shares(layers)['mean'], average_shares(layers)['var'])
            for part, layers in parts.items()}


def sn_figures(model, runner, name: str) -> list:
    """The learned shares per layer (``tools/analyze_sn.py``'s figure) and their trajectories
    (``SNRatioHook``'s scalars, when the config logs them) in the run's folders."""
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
    return [osp.abspath(f) for f in figures]


def run_det_demo(config: str = DEFAULT_CONFIG, work_dir: Optional[str] = None,
                 data_root: str = 'data/coco_demo', num_train: Optional[int] = None,
                 num_val: Optional[int] = None, iters: Optional[int] = None,
                 cfg_options: Optional[dict] = None, log=print) -> dict:
    """Generate the data, train and evaluate ``config``; returns the summary dict."""
    import torch

    from sn_mm.datasets import coco_demo
    t0 = time.time()
    params = {k: v for k, v in dict(num_train=num_train, num_val=num_val).items()
              if v is not None}
    _, generated = coco_demo.ensure_coco_demo(data_root, **params)
    t_data = time.time() - t0
    log(f'[demo] data: {osp.abspath(data_root)} '
        f'({"generated" if generated else "already there"}, {t_data:.0f}s)')

    name = osp.splitext(osp.basename(config))[0]
    work_dir = work_dir or osp.join('work_dirs', f'demo_{name}')
    cfg = build_cfg(config, work_dir=work_dir, cfg_options=cfg_options)
    set_data_root(cfg, data_root)
    if iters is not None:
        set_schedule(cfg, iters)
    run = train_in_process(cfg)
    runner, iters = run['runner'], cfg.train_cfg.max_iters
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    train_s = run['train_seconds']
    summary = dict(
        config=config, iterations=iters, images_per_iteration=cfg.train_dataloader.batch_size,
        train_seconds=round(train_s, 1), train_seconds_per_iteration=round(train_s / iters, 3),
        # CPU seconds of the training process (all its threads) per iteration: less
        # sensitive than wall time to other jobs on the machine
        train_cpu_seconds_per_iteration=round(run['train_cpu_seconds'] / iters, 3),
        load_average_1min=[round(x, 2) for x in run['load_average_1min']],
        torch_threads=torch.get_num_threads(), eval_seconds=round(run['val_seconds'], 1),
        data_seconds=round(t_data, 1), total_seconds=round(time.time() - t0, 1),
        metrics={k: run['metrics'][k] for k in METRIC_KEYS if k in run['metrics']},
        sn_shares_in_ln_bn={part: dict(mean=[round(x, 3) for x in m],
                                       var=[round(x, 3) for x in v])
                            for part, (m, v) in shares_by_part(model).items()},
        checkpoint=osp.abspath(osp.join(work_dir, f'iter_{iters}.pth')),
        log_file=osp.abspath(osp.join(runner.log_dir, f'{runner.timestamp}.log')),
        metrics_file=osp.abspath(osp.join(work_dir, 'metrics.json')),
        figures=sn_figures(model, runner, name))
    with open(summary['metrics_file'], 'w') as f:
        json.dump(summary, f, indent=1)
    return summary


def format_summary(summary: dict) -> str:
    """The demo's closing report: time, mAP, learned shares, where the files are."""
    s, m = summary, summary['metrics']
    name = osp.splitext(osp.basename(s['config']))[0]
    nan = float('nan')
    lines = ['=' * 72,
             f'[demo] Mask R-CNN ({name}) on the synthetic COCO data: done in '
             f'{s["total_seconds"] / 60:.1f} min (training {s["train_seconds"] / 60:.1f} min, '
             f'{s["train_seconds_per_iteration"]:.2f} s/iteration, '
             f'{s["train_cpu_seconds_per_iteration"]:.2f} CPU s/iteration on '
             f'{s["torch_threads"]} threads, load average {s["load_average_1min"][0]}-'
             f'{s["load_average_1min"][1]}; evaluation {s["eval_seconds"]:.0f} s)']
    if m:
        lines.append(f'[demo] val: bbox mAP {m.get("coco/bbox_mAP", nan):.3f} '
                     f'(AP50 {m.get("coco/bbox_mAP_50", nan):.3f}), segm mAP '
                     f'{m.get("coco/segm_mAP", nan):.3f} '
                     f'(AP50 {m.get("coco/segm_mAP_50", nan):.3f})')
    for part, shares in s['sn_shares_in_ln_bn'].items():
        lines.append(f'[demo] learned SN shares [IN, LN, BN], {part}: mean {shares["mean"]}, '
                     f'var {shares["var"]}')
    lines += [f'[demo] figure:     {figure}' for figure in s.get('figures', [])]
    lines += [f'[demo] checkpoint: {s["checkpoint"]}', f'[demo] logs:       {s["log_file"]}',
              f'[demo] metrics:    {s["metrics_file"]}',
              f'[demo] evaluate again: python tools/test.py {osp.relpath(s["config"])} '
              f'{osp.relpath(s["checkpoint"])}', '=' * 72]
    return '\n'.join(lines)
