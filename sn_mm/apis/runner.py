"""Config -> mmengine Runner -> training, with the results read from the runner.

- :func:`build_cfg`: what ``tools/train.py`` / ``tools/test.py`` do to a config file
  before building the Runner (``--cfg-options``, work dir, AMP, LR scaling, resume,
  launcher, checkpoint to evaluate).
- :func:`build_runner`: the Runner, with the CPU distributed set-up
  (:func:`sn_mm.engine.launch.setup_cpu_distributed`) and names unique to this run, so
  several runners can follow each other in one process (demos, comparisons).
- :func:`train_in_process`: ``runner.train()``, then the validation metrics (as the
  ValLoop passes them to its hooks), seconds per iteration (``train/time``, written by
  mmengine's ``IterTimerHook`` every iteration), wall and CPU time and load average.
- :func:`schedule_options`: ``cfg_options`` that compress a config's schedule to fewer
  (or more) iterations, the one rule every demo and comparison uses.
"""
import itertools
import os
import os.path as osp
import time
from typing import Dict, Optional

from mmengine.config import Config
from mmengine.hooks import Hook

_RUN_IDS = itertools.count()


def build_cfg(config: str, work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
              launcher: str = 'none', amp: bool = False, auto_scale_lr: bool = False,
              resume: Optional[str] = None, load_from: Optional[str] = None) -> Config:
    """The config of ``config`` (a file path) as the tools run it.

    ``work_dir`` defaults to the config's, else ``./work_dirs/<config name>``;
    ``resume='auto'`` resumes from the latest checkpoint of the work dir, another
    string from that checkpoint; ``load_from`` sets the weights to evaluate or start from.
    """
    if launcher not in ('none', 'pytorch', 'slurm', 'mpi'):
        raise ValueError(f"launcher must be one of 'none', 'pytorch', 'slurm', 'mpi', "
                         f'got {launcher!r}')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('--auto-scale-lr needs `auto_scale_lr.base_batch_size` in the '
                               'config')
        cfg.auto_scale_lr.enable = True
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume
    if load_from is not None:
        cfg.load_from = load_from
    return cfg


def build_runner(cfg: Config, unique_names: bool = False):
    """mmengine's Runner (or the config's ``runner_type``) for ``cfg``.

    ``unique_names``: give the run its own experiment and visualizer names, so that a
    later runner in the same process does not reuse this one's logger, message hub or
    visualizer (mmengine keys those instances by name).
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from sn_mm.engine.launch import setup_cpu_distributed
    if unique_names:
        name = f'{osp.basename(cfg.filename or "run")}_{time.strftime("%Y%m%d_%H%M%S")}' \
               f'_{next(_RUN_IDS)}'
        cfg.experiment_name = name
        if cfg.get('visualizer') is not None:
            cfg.visualizer.name = f'{name}_visualizer'
    setup_cpu_distributed(cfg)  # torchrun on CPU-only torch: gloo, DDP without device_ids
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


class RunRecorder(Hook):
    """Records the metrics of the last validation (as the ValLoop hands them to its
    hooks), the wall and CPU time of training and of the validation that follows it,
    and the 1-minute load average at both ends (other jobs slow every run)."""

    priority = 'VERY_LOW'

    def __init__(self):
        self.times: Dict[str, float] = {}
        self.metrics: Dict[str, float] = {}

    def before_train(self, runner):
        self.times.update(train_start=time.time(), cpu_start=time.process_time(),
                          load_start=os.getloadavg()[0])

    def before_val(self, runner):
        if 'val_start' not in self.times:
            self.times.update(val_start=time.time(), load_end=os.getloadavg()[0],
                              train_cpu=time.process_time() - self.times['cpu_start'])

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = {}
        for key, value in (metrics or {}).items():
            try:
                self.metrics[key] = float(value)
            except (TypeError, ValueError):  # non-scalar results (tables, strings)
                continue

    def after_val(self, runner):
        self.times['val_end'] = time.time()


def schedule_options(cfg: Config, iters: int) -> Dict[str, object]:
    """``cfg_options`` that train ``cfg`` for ``iters`` iterations on the same schedule shape.

    Every ``begin``/``end``/``milestones`` of ``cfg.param_scheduler`` is scaled by
    ``iters / cfg.train_cfg.max_iters`` (rounded, at least 1 and at most ``iters``; a
    scheduler's ``end`` stays after its ``begin``), validation and the checkpoint come at
    the end, and the logger writes about 10 times per run (every 20 iterations at most).
    One rule for detection and segmentation: a warm-up of 100 of 1000 iterations becomes
    30 of 300, a milestone at 75% stays at 75%.
    """
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f'iters must be an int >= 1, got {iters!r}')
    base = cfg.train_cfg.get('max_iters')
    if not isinstance(base, int) or base < 1:
        raise ValueError(f'schedule_options needs an iteration-based config '
                         f'(train_cfg.max_iters an int >= 1), got {base!r}')

    def scale(x: int) -> int:
        return min(iters, max(1, round(x * iters / base)))

    options: Dict[str, object] = {
        'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
        'default_hooks.checkpoint.interval': iters,
        'default_hooks.logger.interval': min(20, max(1, iters // 10))}
    schedulers = cfg.get('param_scheduler') or []
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    for i, sched in enumerate(schedulers):
        if sched.get('by_epoch', True):
            raise ValueError(f'param_scheduler[{i}] ({sched.get("type")}) is epoch-based; '
                             'schedule_options rescales iteration-based schedules only')
        begin = scale(sched.get('begin', 0)) if sched.get('begin', 0) else 0
        end = max(begin + 1, scale(min(sched.get('end', base), base)))
        options[f'param_scheduler.{i}.begin'] = begin
        options[f'param_scheduler.{i}.end'] = end
        if 'milestones' in sched:
            options[f'param_scheduler.{i}.milestones'] = [scale(m) for m in sched.milestones]
    return options


def iteration_times(message_hub, skip: int = 0):
    """Seconds of every training iteration (``train/time``), the first ``skip`` dropped
    (warm-up) unless that would leave none."""
    if 'train/time' not in message_hub.log_scalars:
        return []
    values = [float(v) for v in message_hub.get_scalar('train/time').data[0]]
    return values[skip:] or values


def train_in_process(cfg: Config, warmup_iters: int = 1) -> dict:
    """Train ``cfg`` in this process; returns the runner and what it measured.

    Keys: ``runner``, ``metrics`` (``{name: value}`` of the last validation, as the
    evaluator returned them), ``iterations``, ``train_seconds``,
    ``sec_per_iter`` (mean of ``train/time`` without the first ``warmup_iters``),
    ``train_cpu_seconds``, ``val_seconds``, ``load_average_1min`` (start, end),
    ``losses`` (``train/loss`` of every iteration, as mmengine recorded it).
    """
    runner = build_runner(cfg, unique_names=True)
    recorder = RunRecorder()
    runner.register_hook(recorder)
    runner.train()
    end = time.time()
    t = recorder.times
    times = iteration_times(runner.message_hub, warmup_iters)
    hub = runner.message_hub
    losses = ([float(v) for v in hub.get_scalar('train/loss').data[0]]
              if 'train/loss' in hub.log_scalars else [])
    return dict(runner=runner, metrics=recorder.metrics, iterations=runner.iter,
                train_seconds=t.get('val_start', end) - t['train_start'],
                sec_per_iter=sum(times) / len(times) if times else float('nan'),
                train_cpu_seconds=t.get('train_cpu', time.process_time() - t['cpu_start']),
                val_seconds=t.get('val_end', end) - t.get('val_start', end),
                load_average_1min=(t['load_start'], t.get('load_end', os.getloadavg()[0])),
                losses=losses)
