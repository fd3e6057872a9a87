"""tools/dist_train.sh (torchrun) with 2 processes on a CPU-only torch: gloo, DDP on CPU.

This is the case :mod:`sn_mm.engine.launch` handles (no CUDA device); on a machine with
CUDA the test is skipped, since torchrun there runs the usual NCCL path instead.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from tests.e2e_util import ROOT, SEG_TINY, run_python, seg_loader_options


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason='CUDA is available: not the CPU-only case sn_mm.engine.launch handles')
def test_dist_train_sh_two_cpu_processes(tmp_path):
    data = tmp_path / 'data'
    tiny = SEG_TINY['cityscapes']
    run_python(['tools/make_seg_demo.py', '--layout', 'cityscapes', '--root', str(data),
                '--num-train', str(tiny['num_train']), '--num-val', str(tiny['num_val']),
                '--size', *map(str, tiny['size'])])
    options = seg_loader_options(str(data / 'cityscapes')) + [
        'train_dataloader.batch_size=1', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
        'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
        'model.data_preprocessor.size=(64,64)']
    env = dict(os.environ, PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
               PORT='29731', OMP_NUM_THREADS='1')
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', 'configs/seg_demo/deeplabv3_r18-d8-syncsn_demo-cityscapes.py',
         '2', '--work-dir', str(tmp_path / 'work'), '--cfg-options', *options],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'Iter(train) [2/2]' in out and 'mIoU' in out
    assert osp.isfile(tmp_path / 'work' / 'iter_2.pth')
