"""SyncSN inside Mask R-CNN, trained by mmengine's Runner in 2 gloo processes.

Two processes (``RANK``/``WORLD_SIZE``/``MASTER_*`` environment, as torchrun sets it)
run the SyncSN demo config for 2 iterations with mmengine's ``MMDistributedDataParallel``
and distributed ``InfiniteSampler``. Rank 0 only sees images without objects, so its
mask head gets **0 RoIs** in every iteration while rank 1's gets some: SyncSN must
still join every collective (no hang; the test kills the processes after a timeout).

Checked afterwards: parameters identical on both ranks (DDP), SyncSN running
statistics identical on both ranks (moments of the union batch), and rank 0's mask-head
SyncSN statistics moved away from their initial values although rank 0 had no RoIs.

The process group is created with ``torch.distributed.init_process_group('gloo')``
from the environment; mmengine's Runner then skips its own ``init_dist`` (which calls
``torch.cuda.set_device`` and cannot run on a CPU-only torch).
"""
import json
import os
import os.path as osp
import socket
import subprocess
import sys
import time

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNCSN_DEMO = osp.join(ROOT, 'configs', 'mask_rcnn_demo',
                       'mask-rcnn_r18_fpn_syncsn-all_coco-demo.py')
TIMEOUT = 360
DIST_EXTRA = '''
train_dataloader['batch_size'] = 1
train_dataloader['sampler'] = dict(type='InfiniteSampler', shuffle=False)
train_dataloader['dataset']['filter_cfg'] = dict(filter_empty_gt=False, min_size=4)
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
default_hooks = dict(checkpoint=None)
# CPU processes: DDP must not get device_ids (mmengine passes [LOCAL_RANK] otherwise)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                         broadcast_buffers=False, find_unused_parameters=False)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _empty_even_images(root: str) -> None:
    """Drop the annotations of images 0, 2, ... (the ones rank 0 gets, unshuffled)."""
    path = osp.join(root, 'annotations', 'instances_train.json')
    data = json.load(open(path))
    empty = {img['id'] for i, img in enumerate(data['images']) if i % 2 == 0}
    data['annotations'] = [a for a in data['annotations'] if a['image_id'] not in empty]
    assert {a['image_id'] for a in data['annotations']}, 'rank 1 needs objects'
    json.dump(data, open(path, 'w'))


def test_syncsn_mask_rcnn_two_gloo_processes(tmp_path):
    import torch
    from sn_mm.datasets import coco_demo
    from tests.e2e_util import tiny_demo_config

    data = str(tmp_path / 'data')
    coco_demo.make_coco_demo(data, num_train=4, num_val=1, seed=5, max_objects=3)
    _empty_even_images(data)
    cfg = tiny_demo_config(str(tmp_path / 'dist.py'), SYNCSN_DEMO, data, max_iters=2,
                           extra=DIST_EXTRA)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2',
                   LOCAL_WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
                   OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
        log = open(tmp_path / f'rank{rank}.log', 'w')
        procs.append((subprocess.Popen(
            [sys.executable, '-m', 'tests.test_det_syncsn_dist', cfg, str(tmp_path)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.time() + TIMEOUT
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pytest.fail(f'SyncSN Mask R-CNN hung (> {TIMEOUT}s); logs:\n' + _logs(tmp_path))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    for rank, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, f'rank {rank} failed:\n' + _logs(tmp_path)

    states = [torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in range(2)]
    calls = [json.load(open(tmp_path / f'rank{r}_mask_rois.json')) for r in range(2)]
    assert len(calls[0]) == len(calls[1]) == 2  # one mask-head forward per iteration
    assert calls[0] == [0, 0], 'rank 0 should have had no RoIs in the mask head'
    assert all(n > 0 for n in calls[1])

    s0, s1 = states
    assert s0.keys() == s1.keys()
    sync_keys = [k for k in s0 if k.endswith(('running_mean', 'running_var'))]
    assert len(sync_keys) == 2 * 36  # SyncSN: 20 in ResNet-18, 8 in FPN, 4 + 4 in heads
    for key in s0:
        torch.testing.assert_close(s0[key], s1[key], rtol=1e-5, atol=1e-6, msg=key)
    mask_mean = s0['roi_head.mask_head.convs.0.sn.running_mean']
    assert mask_mean.abs().max() > 0, 'rank 0 mask-head statistics never updated'


def _logs(tmp_path) -> str:
    out = []
    for r in range(2):
        p = tmp_path / f'rank{r}.log'
        if p.exists():
            out.append(f'--- rank {r} ---\n' + p.read_text()[-4000:])
    return '\n'.join(out)


def _worker(cfg_path: str, out_dir: str) -> None:
    """One training process (run as ``python -m tests.test_det_syncsn_dist CFG OUT``)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    dist.init_process_group('gloo', timeout=timedelta(seconds=TIMEOUT))
    from mmengine.config import Config
    from mmengine.runner import Runner

    import sn_mm  # noqa: F401
    from sn_mm.ops import SyncSwitchableNorm

    rank = dist.get_rank()
    cfg = Config.fromfile(cfg_path)
    cfg.launcher = 'pytorch'
    cfg.work_dir = osp.join(out_dir, 'work')
    runner = Runner.from_cfg(cfg)
    model = runner.model.module
    assert isinstance(model.roi_head.mask_head.convs[0].sn, SyncSwitchableNorm)
    rois = []
    model.roi_head.mask_head.convs[0].sn.register_forward_pre_hook(
        lambda mod, args: rois.append(int(args[0].shape[0])))
    runner.train()
    torch.save(model.state_dict(), osp.join(out_dir, f'rank{rank}.pth'))
    with open(osp.join(out_dir, f'rank{rank}_mask_rois.json'), 'w') as f:
        json.dump(rois, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    _worker(sys.argv[1], sys.argv[2])
