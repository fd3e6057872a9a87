"""Normalizer comparisons on the demo data: which config each normalizer trains, and the
README-ready Markdown tables (``tools/compare_norms_det.py``, ``tools/compare_norms_seg.py``).

To compare another normalizer, add one line to :data:`DET_NORMS` or :data:`SEG_NORMS`
(and its demo configs).
"""
import datetime
import os
import os.path as osp
import platform

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET_DEMO_DIR = osp.join(ROOT, 'configs', 'mask_rcnn_demo')

#: detection: name -> (table label "backbone / FPN + heads", demo config file name)
DET_NORMS = {
    'bn': ('BN / BN', 'mask-rcnn_r18_fpn_bn-all_coco-demo.py'),
    'syncbn': ('SyncBN / SyncBN', 'mask-rcnn_r18_fpn_syncbn-all_coco-demo.py'),
    'gn': ('GN / GN', 'mask-rcnn_r18_fpn_gn-all_coco-demo.py'),
    'sn': ('SN / SN', 'mask-rcnn_r18_fpn_sn-all_coco-demo.py'),
    'syncsn': ('SyncSN / SyncSN', 'mask-rcnn_r18_fpn_syncsn-all_coco-demo.py'),
    'bn_sn-head': ('BN / SN', 'mask-rcnn_r18_fpn_bn_sn-head_coco-demo.py'),
    'bn_gn-head': ('BN / GN', 'mask-rcnn_r18_fpn_bn_gn-head_coco-demo.py'),
    'gn_sn-head': ('GN / SN', 'mask-rcnn_r18_fpn_gn_sn-head_coco-demo.py'),
    'ssn': ('SSN / SSN', 'mask-rcnn_r18_fpn_ssn-all_coco-demo.py'),
}

#: segmentation: name (the ``-<norm>_`` of configs/seg_demo/*) -> table label
SEG_NORMS = {'syncbn': 'SyncBN (= BN on one process)', 'gn': 'GN (16 groups)', 'sn': 'SN',
             'syncsn': 'SyncSN (= SN on one process)', 'ssn': 'SSN (sparsestmax)'}
SEG_TITLES = {'cityscapes': 'Cityscapes-layout demo', 'ade20k': 'ADE20K-layout demo'}


def det_config(norm: str) -> str:
    """Absolute path of the detection demo config of ``norm`` (a :data:`DET_NORMS` key)."""
    if norm not in DET_NORMS:
        raise ValueError(f'unknown normalizer {norm!r}; expected one of {sorted(DET_NORMS)}')
    return osp.join(DET_DEMO_DIR, DET_NORMS[norm][1])


def _pct(value) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


def _loads(results: dict) -> str:
    loads = [x for r in results.values() for x in r.get('load_average_1min', []) if x >= 0]
    return f'{min(loads):.1f}-{max(loads):.1f}' if loads else 'unknown'


def det_table(results: dict) -> str:
    """Markdown table of ``{norm: tools/demo.py summary}`` plus a line on how it was run."""
    any_result = next(iter(results.values()))
    lines = ['| Normalizer (backbone / FPN + heads) | bbox mAP | bbox AP50 | segm mAP | '
             'segm AP50 | train s/iter | train CPU s/iter |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for norm, r in results.items():
        m, cpu = r['metrics'], r.get('train_cpu_seconds_per_iteration')
        lines.append(f'| {DET_NORMS[norm][0]} | {_pct(m.get("coco/bbox_mAP"))} '
                     f'| {_pct(m.get("coco/bbox_mAP_50"))} | {_pct(m.get("coco/segm_mAP"))} '
                     f'| {_pct(m.get("coco/segm_mAP_50"))} '
                     f'| {r["train_seconds_per_iteration"]:.2f} '
                     f'| {"-" if cpu is None else f"{cpu:.2f}"} |')
    lines += ['', (
        f'Mask R-CNN, half-width ResNet-18 FPN from scratch, synthetic COCO-format shapes '
        f'(256x256, 4 classes), {any_result["iterations"]} iterations x '
        f'{any_result["images_per_iteration"]} images, mAP x100 on the val split '
        f'(mmdet CocoMetric). Measured {datetime.date.today().isoformat()} on '
        f'{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), '
        f'{any_result.get("torch_threads", "?")} torch threads, 1-minute load average '
        f'{_loads(results)} during training (wall s/iter grows with other jobs on the '
        f'machine; CPU s/iter, summed over the threads, much less), '
        f'`python tools/compare_norms_det.py`.')]
    return '\n'.join(lines)


def load_average() -> str:
    try:
        return '/'.join(f'{x:.1f}' for x in os.getloadavg())
    except OSError:
        return 'n/a'


def seg_table(results: dict, layouts, norms, meta: dict) -> str:
    """Markdown table of ``{(norm, layout): seg_demo.train_and_test result}`` plus notes."""
    head = ['Normalizer'] + [f'{SEG_TITLES[l]} mIoU' for l in layouts] \
        + [f'{SEG_TITLES[l]} s/iter' for l in layouts] + ['SN shares IN/LN/BN']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for norm in norms:
        row = [SEG_NORMS[norm]]
        row += [f'{results[(norm, l)]["test"]["mIoU"]:.2f}' for l in layouts]
        row += [f'{results[(norm, l)]["sec_per_iter"]:.2f}' for l in layouts]
        shares = [results[(norm, l)].get('shares') for l in layouts]
        row.append(', '.join(f'{l}: ' + '/'.join(f'{v:.2f}' for v in s)
                             for l, s in zip(layouts, shares) if s) or '-')
        lines.append('| ' + ' | '.join(row) + ' |')
    notes = [
        '',
        f'{meta["model_title"]} R18-D8 (half width, from scratch), {meta["iters"]} iterations x '
        f'{meta["batch"]} crops of 128x128, SGD lr 0.02 poly, 1 process; mIoU on the 20 val '
        'images (mmseg IoUMetric, single scale; classes absent from the val split are skipped).',
        f'Machine: {meta["cpus"]} CPU cores ({meta["cpu"]}), torch {meta["torch"]}, '
        f'{meta["threads"]} torch threads; load average (1/5/15 min) {meta["load_before"]} '
        f'before, {meta["load_after"]} after; wall time {meta["minutes"]:.1f} min. '
        'Other processes on the machine slow every run; compare times within one table.',
    ]
    return '\n'.join(lines + notes) + '\n'
