"""Helpers shared by the end-to-end tests (demo data, tiny configs, running a script).

Not a test module: the end-to-end tests import from here, never from each other.
"""
import os
import subprocess
import sys
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Tiny segmentation demo data per layout (``tools/make_seg_demo.py`` arguments).
SEG_TINY = dict(cityscapes=dict(num_train=4, num_val=2, size=(64, 128)),
                ade20k=dict(num_train=4, num_val=2, size=(80, 96)))


def tiny_demo_config(path: str, base: str, data_root: str, max_iters: int = 3,
                     extra: str = '') -> str:
    """Write a detection config file inheriting ``base`` that trains ``max_iters``
    iterations on ``data_root`` with in-process data loading and a checkpoint at the end;
    returns ``path``."""
    data_root = data_root.rstrip('/') + '/'
    text = f'''
_base_ = {base!r}
data_root = {data_root!r}
train_dataloader = dict(num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters={max_iters}, val_interval=10000)
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={max_iters}))
{extra}
'''
    with open(path, 'w') as f:
        f.write(text)
    return path


def run_python(args: Sequence[str], timeout: float = 300) -> str:
    """``python *args`` from the repository root (one OpenMP thread, this checkout first on
    the path); asserts exit status 0 and returns stdout + stderr."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable] + list(args), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args[0]} failed ({proc.returncode}):\n{out[-4000:]}'
    return out


def seg_loader_options(data_root: str) -> list:
    """``--cfg-options`` items pointing the three dataloaders of a segmentation demo
    config at ``data_root`` with in-process loading."""
    opts = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [f'{loader}.dataset.data_root={data_root}', f'{loader}.num_workers=0',
                 f'{loader}.persistent_workers=False']
    return opts
