"""Semantic-segmentation demo in one command: generate data, train DeepLab with SN, evaluate.

    python tools/demo_seg.py [--layout {cityscapes,ade20k,both}] [--model {deeplabv3,deeplabv3plus}]
                             [--norm {sn,syncsn,syncbn,gn}] [--iters N] [--threads N]
                             [--data-root data/seg_demo] [--work-dir work_dirs/seg_demo]

For each layout (default: both):

1. ``tools/make_seg_demo.py`` writes the built-in data (Cityscapes layout: 100 train / 20
   val street scenes, 256x128; ADE20K layout: 100 / 20 indoor scenes up to 224x160),
   skipped when already there;
2. ``tools/train.py configs/seg_demo/<model>_r18-d8-<norm>_demo-<layout>.py`` trains
   (600 iterations of 4 crops of 128x128 by default) and validates at the end with
   mmseg's ``IoUMetric``;
3. ``tools/test.py`` evaluates the saved checkpoint (mIoU on the val split).

It prints the mIoU per layout and where the checkpoints, logs and per-class tables are.
``--threads`` sets ``OMP_NUM_THREADS`` for the training/testing processes (on a busy
machine 1 thread per process is often faster than 2).
"""
import argparse
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
LAYOUTS = ('cityscapes', 'ade20k')
NORMS = ('sn', 'syncsn', 'syncbn', 'gn', 'ssn')
MODELS = ('deeplabv3', 'deeplabv3plus')
NUMBER = r'(?:np\.float\d+\()?([-\d.]+|nan)\)?'  # numpy 2 prints np.float32(1.5)


def demo_config(model: str, norm: str, layout: str) -> str:
    """Path (relative to the repository root) of a demo config."""
    if model not in MODELS or norm not in NORMS or layout not in LAYOUTS:
        raise ValueError(f'unknown demo config ({model!r}, {norm!r}, {layout!r}); expected '
                         f'model in {MODELS}, norm in {NORMS}, layout in {LAYOUTS}')
    return osp.join('configs', 'seg_demo', f'{model}_r18-d8-{norm}_demo-{layout}.py')


def run_tool(args: Sequence[str], log_path: str, threads: Optional[int] = None,
             echo: bool = True) -> str:
    """Run ``python <args>`` from the repository root, tee its output to ``log_path``."""
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    if threads is not None:
        env['OMP_NUM_THREADS'] = str(threads)
    os.makedirs(osp.dirname(osp.abspath(log_path)), exist_ok=True)
    lines: List[str] = []
    with open(log_path, 'w') as log, subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            absent = line.startswith('|') and re.search(r'\|\s+nan\s+\|', line)
            if echo and not absent and ('mmengine - INFO - Iter(' in line or 'Error' in line
                                        or line.startswith(('|', '+'))):
                print(line, end='', flush=True)  # per-class table without absent classes
    if proc.returncode != 0:
        tail = ''.join(lines[-40:])
        raise RuntimeError(f'python {" ".join(args)} failed with exit code {proc.returncode} '
                           f'(full log: {log_path}):\n{tail}')
    return ''.join(lines)


def parse_val_metrics(output: str) -> Dict[str, float]:
    """aAcc / mIoU / mAcc of the last ``Iter(val)`` summary line of a training log."""
    found = re.findall(r'Iter\(val\) \[\d+/\d+\]\s+aAcc: ([\d.]+)\s+mIoU: ([\d.]+)\s+'
                       r'mAcc: ([\d.]+)', output)
    if not found:
        raise ValueError('no validation summary (Iter(val) ... mIoU) in the training output')
    return dict(zip(('aAcc', 'mIoU', 'mAcc'), map(float, found[-1])))


def parse_test_metrics(output: str) -> Dict[str, float]:
    """The ``Metrics: {...}`` line printed by tools/test.py."""
    match = re.search(rf"Metrics: {{'aAcc': {NUMBER}, 'mIoU': {NUMBER}, 'mAcc': {NUMBER}}}",
                      output)
    if not match:
        raise ValueError("no \"Metrics: {'aAcc': ..., 'mIoU': ..., 'mAcc': ...}\" line in the "
                         'tools/test.py output')
    return dict(zip(('aAcc', 'mIoU', 'mAcc'), map(float, match.groups())))


def parse_iter_times(output: str, skip_first: int = 1) -> Tuple[float, int]:
    """Mean logged ``time`` (s/iter) over the training log windows, without the first
    ``skip_first`` windows (warm-up); returns (seconds per iteration, windows used)."""
    times = [float(t) for t in re.findall(r'Iter\(train\) \[\s*\d+/\d+\].*?\stime: ([\d.]+)',
                                          output)]
    used = times[skip_first:] or times
    if not used:
        raise ValueError('no Iter(train) ... time: lines in the training output')
    return sum(used) / len(used), len(used)


def train_and_test(model: str, norm: str, layout: str, data_root: str, work_root: str,
                   iters: Optional[int] = None, threads: Optional[int] = None,
                   extra_options: Sequence[str] = (), echo: bool = True) -> dict:
    """tools/train.py then tools/test.py for one demo config; returns metrics and paths."""
    config = demo_config(model, norm, layout)
    name = osp.splitext(osp.basename(config))[0]
    work_dir = osp.join(work_root, name)
    options = [f'{loader}.dataset.data_root={osp.join(data_root, layout)}/'
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    if iters is not None:  # shorter schedule: keep the warm-up + poly shape
        warmup = max(1, min(50, iters // 4))
        options += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
                    f'default_hooks.checkpoint.interval={iters}',
                    f'param_scheduler.0.end={warmup}', f'param_scheduler.1.begin={warmup}',
                    f'param_scheduler.1.end={max(iters, warmup + 1)}',
                    f'default_hooks.logger.interval={min(20, max(1, iters // 10))}']
    options += list(extra_options)
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, config))
    max_iters = iters if iters is not None else cfg.train_cfg.max_iters
    start = time.time()
    train_out = run_tool(['tools/train.py', config, '--work-dir', work_dir,
                          '--cfg-options', *options], osp.join(work_dir, 'train_stdout.log'),
                         threads, echo)
    train_seconds = time.time() - start
    checkpoint = osp.join(work_dir, f'iter_{max_iters}.pth')
    test_out = run_tool(['tools/test.py', config, checkpoint, '--work-dir',
                         osp.join(work_dir, 'test'), '--cfg-options', *options],
                        osp.join(work_dir, 'test_stdout.log'), threads, echo)
    try:
        sec_per_iter, windows = parse_iter_times(train_out)
    except ValueError:  # no logging window (very short run)
        sec_per_iter, windows = float('nan'), 0
    return dict(config=config, work_dir=osp.abspath(work_dir), checkpoint=osp.abspath(checkpoint),
                val=parse_val_metrics(train_out), test=parse_test_metrics(test_out),
                sec_per_iter=sec_per_iter, log_windows=windows, iters=max_iters,
                train_seconds=train_seconds)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--layout', choices=LAYOUTS + ('both',), default='both')
    parser.add_argument('--model', choices=MODELS, default='deeplabv3')
    parser.add_argument('--norm', choices=NORMS, default='sn')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations (default: the config, 600)')
    parser.add_argument('--threads', type=int, default=None,
                        help='OMP_NUM_THREADS of the train/test processes (default: torch default)')
    parser.add_argument('--data-root', default='data/seg_demo')
    parser.add_argument('--work-dir', default='work_dirs/seg_demo')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.iters is not None and args.iters < 1:
        raise SystemExit(f'--iters must be >= 1, got {args.iters}')
    sys.path.insert(0, ROOT)
    from sn_mm.datasets.seg_demo import ensure_seg_demo
    layouts = LAYOUTS if args.layout == 'both' else (args.layout,)
    results = {}
    for layout in layouts:
        ensure_seg_demo(osp.join(args.data_root, layout), layout, progress=print)
        print(f'\n=== {args.model} {args.norm} on the {layout}-layout demo ===', flush=True)
        results[layout] = train_and_test(args.model, args.norm, layout, args.data_root,
                                         args.work_dir, args.iters, args.threads)
    print('\nResults (val split, single scale, mmseg IoUMetric):')
    for layout, r in results.items():
        print(f'- {layout}: mIoU {r["test"]["mIoU"]:.2f}  aAcc {r["test"]["aAcc"]:.2f}  '
              f'({r["iters"]} iterations, {r["sec_per_iter"]:.2f} s/iter, '
              f'{r["train_seconds"] / 60:.1f} min training)')
        print(f'    config:     {r["config"]}')
        print(f'    checkpoint: {r["checkpoint"]}')
        print(f'    logs:       {r["work_dir"]}/train_stdout.log (per-class IoU table at the end), '
              f'{r["work_dir"]}/test_stdout.log')


if __name__ == '__main__':
    main()
