"""SyncSN DeepLabV3 trained by mmengine's Runner in 2 gloo processes (torchrun, CPU).

Each process gets ONE image per iteration. The ASPP image-pooling branch normalizes 1x1
maps, so the BN branch of a per-process SN would see a single value per channel and
fail ("Expected more than 1 value per channel", see test_aspp_one_by_one.py); SyncSN
takes the BN moments over the union batch of both processes (2 values), so training
runs. The run ends with a distributed validation (IoUMetric gathered over both ranks).

Checked afterwards: the image-pool SyncSN saw batch 1 on each rank; parameters are
identical on both ranks (DDP) and so are the SyncSN running statistics although DDP does
not broadcast buffers here (``broadcast_buffers=False``, mmengine's default): each rank
computed the same union-batch moments.

The process group is created with ``torch.distributed.init_process_group('gloo')`` from
torchrun's environment; mmengine's Runner then skips its own ``init_dist`` (which calls
``torch.cuda.set_device`` and cannot run on a CPU-only torch), and DDP gets
``device_ids=None`` (CPU module).
"""
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import torch
from torch.testing import assert_close

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'seg_demo', 'deeplabv3_r18-d8-syncsn_demo-cityscapes.py')
ITERS = 2
TIMEOUT = 300


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _options(data_root, work_dir):
    options = dict(
        work_dir=work_dir, launcher='pytorch',
        model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None,
                               broadcast_buffers=False, find_unused_parameters=False))
    options.update({
        'train_dataloader.batch_size': 1, 'train_cfg.max_iters': ITERS,
        'train_cfg.val_interval': ITERS, 'default_hooks.checkpoint.interval': ITERS,
        'default_hooks.logger.interval': 1,
        'train_dataloader.dataset.pipeline.3.crop_size': (64, 64),
        'model.data_preprocessor.size': (64, 64)})
    for loader in ('train_dataloader', 'val_dataloader'):
        options.update({f'{loader}.dataset.data_root': data_root, f'{loader}.num_workers': 0,
                        f'{loader}.persistent_workers': False})
    return options


def test_syncsn_deeplabv3_two_gloo_processes_batch_one_each(tmp_path):
    from sn_mm.datasets.seg_demo import make_seg_demo
    data_root = str(tmp_path / 'cityscapes')
    make_seg_demo(data_root, 'cityscapes', num_train=4, num_val=2, size=(64, 128), seed=3)
    with open(tmp_path / 'options.json', 'w') as f:
        json.dump(_options(data_root, str(tmp_path / 'work')), f)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
           '--master_addr=127.0.0.1', f'--master_port={_free_port()}',
           osp.abspath(__file__), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert f'Iter(train) [{ITERS}/{ITERS}]' in out and 'mIoU' in out

    states = [torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in range(2)]
    for r in range(2):
        seen = json.load(open(tmp_path / f'rank{r}_pool_batches.json'))
        assert seen['train'] == [1] * ITERS, seen  # one image per process and iteration
    pool = 'decode_head.image_pool.1.sn'
    assert states[0][f'{pool}.mean_weight'].shape == (3,)
    assert not torch.equal(states[0][f'{pool}.running_mean'],
                           torch.zeros_like(states[0][f'{pool}.running_mean']))
    for key, value in states[0].items():
        assert torch.isfinite(value).all() if value.is_floating_point() else True, key
        assert_close(states[1][key], value, rtol=1e-5, atol=1e-6, msg=key)


def _worker(out_dir):
    """One training process (started by torchrun with RANK/WORLD_SIZE/MASTER_*)."""
    from datetime import timedelta

    import torch.distributed as dist
    dist.init_process_group('gloo', timeout=timedelta(seconds=TIMEOUT))
    from mmengine.config import Config
    from mmengine.runner import Runner

    import sn_mm  # noqa: F401
    from sn_mm.ops import SyncSwitchableNorm

    rank = dist.get_rank()
    cfg = Config.fromfile(CONFIG)
    with open(osp.join(out_dir, 'options.json')) as f:
        options = json.load(f)
    for key in ('work_dir', 'launcher', 'model_wrapper_cfg'):
        cfg[key] = options.pop(key)
    options['train_dataloader.dataset.pipeline.3.crop_size'] = tuple(
        options['train_dataloader.dataset.pipeline.3.crop_size'])
    options['model.data_preprocessor.size'] = tuple(options['model.data_preprocessor.size'])
    cfg.merge_from_dict(options)
    runner = Runner.from_cfg(cfg)
    model = runner.model.module
    norm = model.decode_head.image_pool[1].norm
    assert type(norm) is SyncSwitchableNorm
    seen = {'train': [], 'eval': []}
    norm.register_forward_pre_hook(
        lambda mod, args: seen['train' if mod.training else 'eval'].append(int(args[0].shape[0])))
    runner.train()
    torch.save(model.state_dict(), osp.join(out_dir, f'rank{rank}.pth'))
    with open(osp.join(out_dir, f'rank{rank}_pool_batches.json'), 'w') as f:
        json.dump(seen, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    _worker(sys.argv[1])
