"""The segmentation demo: DeepLab with SN on the built-in Cityscapes-/ADE20K-layout data.

:func:`run_seg_demo` generates the data of each layout (unless there) and trains and
evaluates the demo config with :func:`sn_mm.apis.demo_run.run_demo`, the one demo runner
(validation with mmseg's ``IoUMetric`` at the end; metrics ``aAcc``, ``mIoU``, ``mAcc``
in %, as the evaluator returns them). Config paths are arguments (``config_dir``): the
package does not know where a source checkout is (``tools/demo_seg.py`` passes the
repository's ``configs/seg_demo``).
"""
import os.path as osp
from typing import Dict, Optional

from .demo_run import run_demo
from .expected import expected_line
from .norm_tables import SEG_NORMS

LAYOUTS = ('cityscapes', 'ade20k')
NORMS = tuple(SEG_NORMS)  # the ``-<norm>_`` of configs/seg_demo/*; one list for demo and table
MODELS = ('deeplabv3', 'deeplabv3plus')
METRICS = ('aAcc', 'mIoU', 'mAcc')
HEADLINE = ('mIoU',)


def demo_config(model: str, norm: str, layout: str, config_dir: str) -> str:
    """Path of a demo config: ``<config_dir>/<model>_r18-d8-<norm>_demo-<layout>.py``."""
    if model not in MODELS or norm not in NORMS or layout not in LAYOUTS:
        raise ValueError(f'unknown demo config ({model!r}, {norm!r}, {layout!r}); expected '
                         f'model in {MODELS}, norm in {NORMS}, layout in {LAYOUTS}')
    return osp.join(config_dir, f'{model}_r18-d8-{norm}_demo-{layout}.py')


def data_options(data_root: str) -> Dict[str, object]:
    """``cfg_options`` pointing the data loaders at ``data_root``."""
    root = data_root.rstrip('/') + '/'
    return {f'{loader}.dataset.data_root': root
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}


def run_seg_demo(config_dir: str, model: str = 'deeplabv3', norm: str = 'sn',
                 layouts=LAYOUTS, data_root: str = 'data/seg_demo',
                 work_root: str = 'work_dirs/seg_demo', iters: Optional[int] = None,
                 seed: Optional[int] = None, cfg_options: Optional[dict] = None,
                 log=print, **data_params) -> Dict[str, dict]:
    """Generate the data of each layout (unless there; ``data_params``: ``num_train``,
    ``num_val``, ``size`` of :func:`sn_mm.datasets.seg_demo.ensure_seg_demo`) and
    :func:`run_demo` its config with ``cfg_options`` on top of the data root; returns
    ``{layout: summary}``."""
    from sn_mm.datasets.seg_demo import ensure_seg_demo
    results = {}
    for layout in layouts:
        root = osp.join(data_root, layout)
        ensure_seg_demo(root, layout, progress=log, **data_params)
        log(f'\n=== {model} {norm} on the {layout}-layout demo ===')
        config = demo_config(model, norm, layout, config_dir)
        work_dir = osp.join(work_root, osp.splitext(osp.basename(config))[0])
        options = data_options(root)
        options.update(cfg_options or {})
        results[layout] = run_demo(config, work_dir, options, iters=iters, seed=seed)
    return results


def format_results(results: Dict[str, dict], expected: Optional[dict] = None) -> str:
    """The demo's closing report per layout, with the recorded mean +- std beside it."""
    lines = ['Results (val split, single scale, mmseg IoUMetric):']
    for layout, r in results.items():
        m = r['metrics']
        lines += [f'- {layout}: mIoU {m.get("mIoU", float("nan")):.2f}  '
                  f'aAcc {m.get("aAcc", float("nan")):.2f}  '
                  f'({r["iterations"]} iterations, {r["sec_per_iter"]:.2f} s/iter, '
                  f'{r["train_seconds"] / 60:.1f} min training)',
                  expected_line(r, expected, HEADLINE, tag='   '),
                  f'    config:     {r["config"]}', f'    checkpoint: {r["checkpoint"]}',
                  f'    logs:       {r["work_dir"]}/<timestamp>/ (per-class IoU table at the '
                  'end of the log)']
    return '\n'.join(lines)
