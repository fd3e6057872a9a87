"""The segmentation demo: DeepLab with SN on the built-in Cityscapes-/ADE20K-layout data.

:func:`train_and_test` trains one demo config in this process
(:func:`sn_mm.apis.runner.train_in_process`: mmengine's Runner, validation with mmseg's
``IoUMetric`` at the end), then evaluates the saved checkpoint with a second Runner
(``load_from`` = the checkpoint, ``runner.test()``). Metrics are those the runners return
(``aAcc``, ``mIoU``, ``mAcc``, in %); nothing is parsed from log text.
"""
import os.path as osp
from typing import Dict, Optional

from .norm_tables import SEG_NORMS
from .runner import build_cfg, build_runner, train_in_process

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LAYOUTS = ('cityscapes', 'ade20k')
NORMS = tuple(SEG_NORMS)  # the ``-<norm>_`` of configs/seg_demo/*; one list for demo and table
MODELS = ('deeplabv3', 'deeplabv3plus')
METRICS = ('aAcc', 'mIoU', 'mAcc')


def demo_config(model: str, norm: str, layout: str) -> str:
    """Path (relative to the repository root) of a demo config."""
    if model not in MODELS or norm not in NORMS or layout not in LAYOUTS:
        raise ValueError(f'unknown demo config ({model!r}, {norm!r}, {layout!r}); expected '
                         f'model in {MODELS}, norm in {NORMS}, layout in {LAYOUTS}')
    return osp.join('configs', 'seg_demo', f'{model}_r18-d8-{norm}_demo-{layout}.py')


def demo_options(data_root: str, iters: Optional[int] = None) -> Dict[str, object]:
    """``cfg_options`` pointing the data loaders at ``data_root`` and, for ``iters``,
    a shorter schedule with the same warm-up + poly shape."""
    root = data_root.rstrip('/') + '/'
    options: Dict[str, object] = {f'{loader}.dataset.data_root': root for loader in
                                  ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    if iters is not None:
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f'iters must be an int >= 1, got {iters!r}')
        warmup = max(1, min(50, iters // 4))
        options.update({'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
                        'default_hooks.checkpoint.interval': iters,
                        'param_scheduler.0.end': warmup, 'param_scheduler.1.begin': warmup,
                        'param_scheduler.1.end': max(iters, warmup + 1),
                        'default_hooks.logger.interval': min(20, max(1, iters // 10))})
    return options


def train_and_test(config: str, work_dir: str, cfg_options: Optional[dict] = None) -> dict:
    """Train ``config``, then evaluate its last checkpoint; returns metrics and paths.

    Keys: ``config``, ``work_dir``, ``checkpoint``, ``val`` / ``test`` (``{aAcc, mIoU,
    mAcc}`` of the validation at the end of training and of the checkpoint evaluation),
    ``sec_per_iter`` (mean ``train/time``, first logging window dropped as warm-up),
    ``iters``, ``train_seconds``.
    """
    path = config if osp.isabs(config) else osp.join(ROOT, config)
    cfg = build_cfg(path, work_dir=work_dir, cfg_options=cfg_options)
    run = train_in_process(cfg, warmup_iters=cfg.default_hooks.logger.interval)
    iters = cfg.train_cfg.max_iters
    checkpoint = osp.abspath(osp.join(work_dir, f'iter_{iters}.pth'))
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'training {config} did not save {checkpoint}; expected '
                                'default_hooks.checkpoint.interval to divide max_iters')
    test_cfg = build_cfg(path, work_dir=osp.join(work_dir, 'test'), cfg_options=cfg_options,
                         load_from=checkpoint)
    test = build_runner(test_cfg, unique_names=True).test()
    return dict(config=config, work_dir=osp.abspath(work_dir), checkpoint=checkpoint,
                val={k: run['metrics'][k] for k in METRICS if k in run['metrics']},
                test={k: float(test[k]) for k in METRICS if k in test},
                sec_per_iter=run['sec_per_iter'], iters=iters,
                train_seconds=run['train_seconds'])


def run_seg_demo(model: str = 'deeplabv3', norm: str = 'sn', layouts=LAYOUTS,
                 data_root: str = 'data/seg_demo', work_root: str = 'work_dirs/seg_demo',
                 iters: Optional[int] = None, log=print) -> Dict[str, dict]:
    """Generate the data of each layout (unless there) and :func:`train_and_test` it."""
    from sn_mm.datasets.seg_demo import ensure_seg_demo
    results = {}
    for layout in layouts:
        root = osp.join(data_root, layout)
        ensure_seg_demo(root, layout, progress=log)
        log(f'\n=== {model} {norm} on the {layout}-layout demo ===')
        config = demo_config(model, norm, layout)
        work_dir = osp.join(work_root, osp.splitext(osp.basename(config))[0])
        results[layout] = train_and_test(config, work_dir, demo_options(root, iters))
    return results


def format_results(results: Dict[str, dict]) -> str:
    lines = ['Results (val split, single scale, mmseg IoUMetric):']
    for layout, r in results.items():
        lines += [f'- {layout}: mIoU {r["test"]["mIoU"]:.2f}  aAcc {r["test"]["aAcc"]:.2f}  '
                  f'({r["iters"]} iterations, {r["sec_per_iter"]:.2f} s/iter, '
                  f'{r["train_seconds"] / 60:.1f} min training)',
                  f'    config:     {r["config"]}', f'    checkpoint: {r["checkpoint"]}',
                  f'    logs:       {r["work_dir"]}/<timestamp>/ (per-class IoU table at the '
                  'end of the log)']
    return '\n'.join(lines)
