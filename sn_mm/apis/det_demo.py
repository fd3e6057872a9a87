"""The detection demo: Mask R-CNN with SN on the built-in synthetic COCO-format data.

:func:`run_det_demo` generates the data (:mod:`sn_mm.datasets.coco_demo`) unless an
identical set is there, then trains and evaluates a demo config with
:func:`sn_mm.apis.demo_run.run_demo` (the one demo runner; validation with mmdet's
CocoMetric at the end) and returns its summary (also in ``<work_dir>/metrics.json``):
metrics, timings and the learned SN shares [IN, LN, BN] averaged over the backbone and
over FPN + heads. Config paths are arguments: the package does not know where a source
checkout is (``tools/demo.py`` passes the repository's ``configs/``).
"""
import os.path as osp
import time
from typing import Optional

from .demo_run import run_demo
from .expected import expected_line

METRIC_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75',
               'coco/segm_mAP', 'coco/segm_mAP_50', 'coco/segm_mAP_75')
#: the metrics the comparison tables and the expected values report (x100)
HEADLINE = ('coco/bbox_mAP', 'coco/segm_mAP')


def data_options(data_root: str) -> dict:
    """``cfg_options`` that point the loaders and the evaluators at ``data_root``."""
    root = data_root.rstrip('/') + '/'
    options = {f'{loader}.dataset.data_root': root
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    options.update({f'{evaluator}.ann_file': root + 'annotations/instances_val.json'
                    for evaluator in ('val_evaluator', 'test_evaluator')})
    return options


def config_data_root(config: str) -> str:
    """The data root a demo config trains on (``train_dataloader.dataset.data_root``)."""
    from mmengine.config import Config
    return Config.fromfile(config).train_dataloader.dataset.data_root


def run_det_demo(config: str, work_dir: Optional[str] = None,
                 data_root: Optional[str] = None, num_train: Optional[int] = None,
                 num_val: Optional[int] = None, iters: Optional[int] = None,
                 cfg_options: Optional[dict] = None, seed: Optional[int] = None,
                 log=print) -> dict:
    """Generate the data (unless there), then :func:`~sn_mm.apis.demo_run.run_demo`.

    ``data_root`` defaults to the config's; returns the summary dict, with
    ``data_seconds`` and ``total_seconds`` including the data generation.
    """
    from sn_mm.datasets import coco_demo
    t0 = time.time()
    data_root = data_root or config_data_root(config)
    params = {k: v for k, v in dict(num_train=num_train, num_val=num_val).items()
              if v is not None}
    _, generated = coco_demo.ensure_coco_demo(data_root, **params)
    t_data = time.time() - t0
    log(f'[demo] data: {osp.abspath(data_root)} '
        f'({"generated" if generated else "already there"}, {t_data:.0f}s)')
    name = osp.splitext(osp.basename(config))[0]
    options = data_options(data_root)
    options.update(cfg_options or {})
    summary = run_demo(config, work_dir or osp.join('work_dirs', f'demo_{name}'), options,
                       iters=iters, seed=seed)
    summary.update(data_seconds=round(t_data, 1), total_seconds=round(time.time() - t0, 1))
    return summary


def format_summary(summary: dict, expected: Optional[dict] = None) -> str:
    """The demo's closing report: time, mAP (beside the README's mean +- std for this
    config, from ``expected``: :func:`sn_mm.apis.expected.load_expected`), learned
    shares, where the files are."""
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
        lines.append(expected_line(summary, expected, HEADLINE, scale=100, tag='[demo]'))
    for part, shares in s['sn_shares_in_ln_bn'].items():
        lines.append(f'[demo] learned SN shares [IN, LN, BN], {part}: mean {shares["mean"]}, '
                     f'var {shares["var"]}')
    lines += [f'[demo] figure:     {figure}' for figure in s.get('figures', [])]
    lines += [f'[demo] checkpoint: {s["checkpoint"]}', f'[demo] logs:       {s["log_file"]}',
              f'[demo] metrics:    {s["metrics_file"]}',
              f'[demo] evaluate again: python tools/test.py {osp.relpath(s["config"])} '
              f'{osp.relpath(s["checkpoint"])}', '=' * 72]
    return '\n'.join(lines)
