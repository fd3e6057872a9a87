"""SSNRadiusHook on a real mmengine Runner: radius schedule, freezing, logged counts, 2 ranks."""
import glob
import itertools
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import DataLoader

import sn_mm  # noqa: F401  (registers the hook)
from sn_mm.engine.ssn_radius_hook import SSNRadiusHook, radius_at
from sn_mm.ops import SparseSwitchableNorm, SyncSparseSwitchableNorm
from tests.toy_runner import StageData

_names = itertools.count()


class TinySSNNet(BaseModel):
    def __init__(self, sync=False):
        super().__init__()
        norm = SyncSparseSwitchableNorm if sync else SparseSwitchableNorm
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.sn1 = norm(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.sn2 = norm(4, using_bn=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        x = F.relu(self.sn1(self.conv1(inputs)))
        logits = self.fc(F.relu(self.sn2(self.conv2(x))).mean((2, 3)))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


class _RadiusProbe:
    """Records the radius the forward of each iteration sees (a LOW-priority hook)."""

    def __init__(self):
        self.seen = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.seen.append(float(runner.model.sn1.radius))


def _runner(work_dir, hook, max_iters=10, probe=None, model=None, data_seed=0, **kwargs):
    torch.manual_seed(0)
    hooks = [hook]
    if probe is not None:
        from mmengine.hooks import Hook

        class Probe(Hook):
            priority = 'LOW'

            def before_train_iter(self, runner, batch_idx, data_batch=None):
                probe.before_train_iter(runner, batch_idx, data_batch)
        hooks.append(Probe())
    return Runner(
        model=model or TinySSNNet(), work_dir=str(work_dir),
        experiment_name=f'ssnhook_{next(_names)}',
        train_dataloader=DataLoader(StageData(seed=data_seed), batch_size=4, shuffle=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.5, momentum=0.9,
                                          weight_decay=1e-3)),
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=100)),
        custom_hooks=hooks, **kwargs,
        visualizer=dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]),
        default_scope='mmengine')


def _scalars(work_dir):
    files = glob.glob(os.path.join(str(work_dir), '*', 'vis_data', 'scalars.json'))
    assert len(files) == 1, files
    lines = [json.loads(line) for line in open(files[0]) if line.strip()]
    return [line for line in lines if 'ssn/radius' in line]


def test_registered_and_schedule_function():
    assert HOOKS.get('SSNRadiusHook') is SSNRadiusHook
    assert radius_at(0, 0, 10, 0.0, 1.0) == 0.0
    assert radius_at(5, 0, 10, 0.0, 1.0) == 0.5
    assert radius_at(20, 0, 10, 0.0, 1.0) == 1.0
    assert radius_at(3, 4, 8, 0.2, 0.6) == 0.2
    assert radius_at(6, 4, 8, 0.2, 0.6) == pytest.approx(0.4)


def test_radius_grows_layers_become_one_hot_and_freeze(tmp_path):
    probe = _RadiusProbe()
    runner = _runner(tmp_path, dict(type='SSNRadiusHook', log_interval=3), probe=probe)
    runner.train()
    assert probe.seen == pytest.approx([i / 10 for i in range(10)])  # r = iter / max_iters
    logged = _scalars(tmp_path)
    assert [line['step'] for line in logged] == [3, 6, 9, 10]
    assert [line['ssn/radius'] for line in logged] == pytest.approx([0.2, 0.5, 0.8, 0.9])
    assert all(line['ssn/layers'] == 2 for line in logged)
    assert logged[0]['ssn/one_hot_layers'] < 2
    last = logged[-1]  # r = 0.9 >= sqrt(2/3): every layer one-hot, and frozen
    assert last['ssn/one_hot_layers'] == 2 and last['ssn/frozen_layers'] == 2
    model = runner.model
    for layer in (model.sn1, model.sn2):
        assert layer.frozen
        for logits in (layer.mean_weight, layer.var_weight):  # pinned despite momentum/wd
            assert sorted(logits.tolist())[-1] == 1.0 and logits.abs().sum() == 1.0
    assert runner.message_hub.get_scalar('ssn/frozen_layers').current() == 2


def test_custom_schedule_and_no_freezing(tmp_path):
    probe = _RadiusProbe()
    runner = _runner(tmp_path, dict(type='SSNRadiusHook', begin=2, end=6, start_radius=0.1,
                                    end_radius=0.3, freeze=False), max_iters=8, probe=probe)
    runner.train()
    assert probe.seen == pytest.approx([0.1, 0.1, 0.1, 0.15, 0.2, 0.25, 0.3, 0.3])
    assert not runner.model.sn1.frozen


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='end_radius must be a finite number >= 0, got -1'):
        SSNRadiusHook(end_radius=-1)
    with pytest.raises(ValueError, match=r'end must be an int > begin \(5\), got 3'):
        SSNRadiusHook(begin=5, end=3)
    with pytest.raises(ValueError, match='log_interval must be a positive int, got 0'):
        SSNRadiusHook(log_interval=0)


def _worker(rank, world_size, init_file, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world_size)
    torch.set_num_threads(1)
    try:
        model = TinySSNNet(sync=True)
        hook = SSNRadiusHook(log_interval=100)
        # DDP on CPU (as sn_mm.engine.launch sets it up), buffers not broadcast: the hook
        # alone keeps radius and flags equal; ranks see different data (SyncSSN syncs BN)
        runner = _runner(os.path.join(out_dir, f'rank{rank}'), hook, max_iters=9, model=model,
                         data_seed=rank, launcher='pytorch',
                         cfg=dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel',
                                                         device_ids=None,
                                                         broadcast_buffers=False)))
        runner.train()
        m = runner.model.module if hasattr(runner.model, 'module') else runner.model
        state = {k: v for k, v in m.state_dict().items() if 'sn' in k}
        torch.save(state, os.path.join(out_dir, f'state{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_hold_the_same_radius_and_freeze_the_same_layers(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f'state{r}.pt') for r in (0, 1))
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert float(a['sn1.radius']) == pytest.approx(8 / 9)  # before the last of 9 iterations
    assert bool(a['sn1.mean_fixed']) and bool(a['sn2.var_fixed'])  # r > sqrt(2/3): frozen
