"""One demo run, the same way for detection and segmentation: :func:`run_demo`.

``tools/demo.py``, ``tools/demo_seg.py`` and both comparison tools call it; it is the
only place where a demo config becomes a trained, evaluated model:

1. the config file is read with ``cfg_options`` (data root, other settings) merged
   (:func:`sn_mm.apis.runner.build_cfg`), then, for ``iters``, the schedule compressed by
   the one rule of :func:`sn_mm.apis.runner.schedule_options`, and, for ``seed``,
   ``randomness.seed`` set;
2. it trains in this process (:func:`sn_mm.apis.runner.train_in_process`) and evaluates
   once, by the validation at the end of training (the metric of the config's
   ``val_evaluator``: mmdet's CocoMetric, mmseg's IoUMetric). That is the checkpoint's
   result: evaluating the saved checkpoint again gives the same numbers (a test checks it);
3. it returns a summary (also written to ``<work_dir>/metrics.json``): metrics, the loss
   of every iteration, timings, load, threads, and, for models with SN/SSN layers, the
   learned shares [IN, LN, BN] per layer and averaged over the backbone and the rest.

Timing convention: ``train_seconds_per_iteration`` is wall time of the whole training
divided by the iterations; ``sec_per_iter`` is mmengine's ``train/time`` averaged without
the first logging window (warm-up); ``train_cpu_seconds_per_iteration`` is the CPU time of
this process (all threads), less sensitive to other jobs on the machine.
"""
import json
import os
import os.path as osp
import time
from typing import Dict, Optional

from .runner import build_cfg, schedule_options, train_in_process


def _scalar_metrics(metrics: dict) -> Dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def sn_layer_shares(model) -> list:
    """``[{name, mean, var}]``: softmaxed (SN) or sparsestmaxed (SSN) shares [IN, LN, BN]
    of every SN layer of ``model`` (:func:`sn_mm.analysis.ratios_from_model`); ``[]`` for a
    model without SN."""
    from sn_mm.analysis import ratios_from_model
    from sn_mm.ops import SwitchableNorm
    if not any(isinstance(m, SwitchableNorm) for m in model.modules()):
        return []
    return [dict(name=layer.name, mean=[float(x) for x in layer.mean],
                 var=[float(x) for x in layer.var]) for layer in ratios_from_model(model)]


def shares_by_part(layers: list) -> dict:
    """Average shares ``{part: {'mean': [...], 'var': [...]}}`` of :func:`sn_layer_shares`
    layers, parts ``backbone`` and ``neck + heads`` (everything outside the backbone)."""
    parts: Dict[str, list] = {}
    for layer in layers:
        part = 'backbone' if layer['name'].startswith('backbone') else 'neck + heads'
        parts.setdefault(part, []).append(layer)
    out = {}
    for part, group in parts.items():
        out[part] = {key: [round(sum(l[key][b] for l in group) / len(group), 4)
                           for b in range(len(group[0][key]))] for key in ('mean', 'var')}
    return out


def sn_figures(model, runner, name: str) -> list:
    """The learned shares per layer (``tools/analyze_sn.py``'s figure) and their trajectories
    (``SNRatioHook``'s scalars, when the config logs them; the SSN demos do not) in the
    run's folders."""
    from sn_mm.analysis import plot_ratios, ratios_from_model
    figures = [plot_ratios([(name, ratios_from_model(model))],
                           osp.join(runner.work_dir, 'sn_ratios.png'),
                           title='learned SN shares [IN, LN, BN] per layer')]
    scalars = osp.join(runner.log_dir, 'vis_data', 'scalars.json')
    if osp.isfile(scalars):
        from sn_mm.analysis.trajectories import plot_trajectories, read_trajectories
        try:
            trajectories = read_trajectories(scalars)
        except ValueError:  # no SNRatioHook in the config (the SSN demos log the radius)
            trajectories = None
        if trajectories is not None:
            figures.append(plot_trajectories(trajectories,
                                             osp.join(runner.work_dir, 'sn_trajectories.png'),
                                             title=f'{name}: SN shares during training'))
    return [osp.abspath(f) for f in figures]


def run_demo(config: str, work_dir: str, cfg_options: Optional[dict] = None,
             iters: Optional[int] = None, seed: Optional[int] = None,
             figures: bool = True) -> dict:
    """Train ``config`` (a file path) in this process, evaluate it, return the summary.

    ``cfg_options``: settings merged into the config first (data root, ...);
    ``iters``: the config's schedule compressed to ``iters`` iterations
    (:func:`~sn_mm.apis.runner.schedule_options`); ``seed``: ``randomness.seed``
    (default: the config's). ``figures``: also draw the SN share figures.
    """
    import torch

    if not osp.isfile(config):
        raise FileNotFoundError(f'config {config!r} does not exist')
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f'seed must be an int >= 0, got {seed!r}')
    t0 = time.time()
    options = dict(cfg_options or {})
    cfg = build_cfg(config, work_dir=work_dir, cfg_options=options)
    if iters is not None:
        options.update(schedule_options(cfg, iters))
    if seed is not None:
        options['randomness.seed'] = seed
    cfg = build_cfg(config, work_dir=work_dir, cfg_options=options)
    run = train_in_process(cfg, warmup_iters=cfg.default_hooks.logger.interval)
    runner, n = run['runner'], cfg.train_cfg.max_iters
    checkpoint = osp.abspath(osp.join(work_dir, f'iter_{n}.pth'))
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'training {config} did not save {checkpoint}; expected '
                                'default_hooks.checkpoint.interval to divide max_iters')
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    layers = sn_layer_shares(model)
    name = osp.splitext(osp.basename(config))[0]
    summary = dict(
        config=osp.abspath(config), cfg_options=options,
        seed=cfg.get('randomness', {}).get('seed'), iterations=n,
        images_per_iteration=cfg.train_dataloader.batch_size,
        metrics=_scalar_metrics(run['metrics']), losses=run['losses'],
        train_seconds=round(run['train_seconds'], 1),
        train_seconds_per_iteration=round(run['train_seconds'] / n, 3),
        sec_per_iter=run['sec_per_iter'],
        train_cpu_seconds_per_iteration=round(run['train_cpu_seconds'] / n, 3),
        load_average_1min=[round(x, 2) for x in run['load_average_1min']],
        torch_threads=torch.get_num_threads(), eval_seconds=round(run['val_seconds'], 1),
        total_seconds=round(time.time() - t0, 1),
        sn_shares_in_ln_bn=shares_by_part(layers), sn_layers=layers,
        checkpoint=checkpoint, work_dir=osp.abspath(work_dir),
        log_file=osp.abspath(osp.join(runner.log_dir, f'{runner.timestamp}.log')),
        metrics_file=osp.abspath(osp.join(work_dir, 'metrics.json')),
        figures=sn_figures(model, runner, name) if (figures and layers) else [])
    os.makedirs(work_dir, exist_ok=True)
    with open(summary['metrics_file'], 'w') as f:
        json.dump(summary, f, indent=1)
    del run, runner, model
    return summary
