"""Exact resume (issue 20, item 4): 2k iterations == k iterations + ``--resume`` + k more,
bit for bit, with ``default_hooks = dict(exact_resume=dict(type='ExactResumeHook'))``.

The run draws random numbers everywhere a real one does: a shuffled sampler, numpy,
Python and torch augmentations in the dataset, dropout in the model, an SSN layer whose
radius grows (``SSNRadiusHook``), and a validation between the checkpoint and the next
batch. Without the hook the two runs differ (what the old main did).
"""
import itertools
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

import sn_mm  # noqa: F401  registers ExactResumeHook, SSNRadiusHook
from sn_mm.checkpoint import safe_load
from sn_mm.ops import SparseSwitchableNorm, SwitchableNorm

K = 3
EXACT = dict(exact_resume=dict(type='ExactResumeHook'))  # the one config line
_names = itertools.count()


class AugmentedData(Dataset):
    """Fixed images; every access flips (numpy), scales (Python) and adds noise (torch)."""

    def __init__(self, length=16):
        gen = torch.Generator().manual_seed(5)
        self.images = torch.randn(length, 3, 6, 6, generator=gen)
        self.labels = torch.randint(0, 2, (length,), generator=gen)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        if np.random.rand() < 0.5:
            x = x.flip(-1)
        x = x * random.uniform(0.8, 1.2) + 0.1 * torch.randn_like(x)
        return dict(inputs=x, labels=self.labels[i])


class RandomSNModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.sn = SwitchableNorm(6)
        self.ssn = SparseSwitchableNorm(6)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(6, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        x = self.drop(F.relu(self.ssn(self.sn(self.conv(inputs)))))
        logits = self.fc(x.mean((2, 3)))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return [dict(pred=p, label=t) for p, t in zip(logits.argmax(1), labels)]


class Accuracy(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results.extend(int(s['pred'] == s['label']) for s in data_samples)

    def compute_metrics(self, results):
        return dict(acc=float(np.mean(results)))


class RecordBatches(Hook):
    """Records every training batch (inputs after augmentation) by iteration."""

    def __init__(self):
        self.seen = {}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.seen[runner.iter] = torch.stack(list(data_batch['inputs'])).clone()


def loader(shuffle):
    return dict(dataset=AugmentedData(), batch_size=4, num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=shuffle),
                collate_fn=dict(type='default_collate'))


def make_runner(work_dir, max_iters, exact, resume_from=None):
    record = RecordBatches()
    runner = Runner(
        model=RandomSNModel(), work_dir=str(work_dir), experiment_name=f'resume_{next(_names)}',
        train_dataloader=loader(True), val_dataloader=loader(False), val_evaluator=[Accuracy()],
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=K),
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        param_scheduler=[dict(type='MultiStepLR', milestones=[4], gamma=0.5, by_epoch=False)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=K, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1),
                           **(EXACT if exact else {})),
        custom_hooks=[dict(type='SSNRadiusHook', begin=0, end=2 * K, end_radius=0.5,
                           freeze=False),
                      record],
        load_from=resume_from, resume=resume_from is not None,
        randomness=dict(seed=0, deterministic=True), default_scope='mmengine')
    return runner, record


def _state(runner):
    optim = runner.optim_wrapper.optimizer.state_dict()
    return runner.model.state_dict(), optim['state']


def _run_pair(tmp_path, exact):
    full, full_batches = make_runner(tmp_path / 'full', 2 * K, exact)
    full.train()
    resumed, resumed_batches = make_runner(tmp_path / 'resumed', 2 * K, exact,
                                           resume_from=str(tmp_path / 'full' / f'iter_{K}.pth'))
    resumed.train()
    return full, full_batches, resumed, resumed_batches


def test_resumed_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    full, full_batches, resumed, resumed_batches = _run_pair(tmp_path, exact=True)
    assert resumed.iter == full.iter == 2 * K
    for it in range(K, 2 * K):  # the next batches
        assert torch.equal(full_batches.seen[it], resumed_batches.seen[it]), it
    (model_a, optim_a), (model_b, optim_b) = _state(full), _state(resumed)
    assert list(model_a) == list(model_b)
    for key in model_a:  # parameters, SN logits, running statistics, SSN radius
        assert torch.equal(model_a[key], model_b[key]), key
    assert float(model_a['ssn.radius']) > 0
    for index in optim_a:  # momentum buffers
        for name, value in optim_a[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(optim_b[index][name]))
    saved = safe_load(str(tmp_path / 'full' / f'iter_{K}.pth'))['rng_state']
    assert set(saved) >= {'torch', 'numpy', 'python', 'samplers'}
    assert saved['samplers']['sampler']['seed'] == full.train_dataloader.sampler.seed


def test_without_the_hook_the_runs_differ(tmp_path):
    """What the old main did (mmengine alone): the resumed run draws other numbers."""
    full, full_batches, resumed, resumed_batches = _run_pair(tmp_path, exact=False)
    assert 'rng_state' not in safe_load(str(tmp_path / 'full' / f'iter_{K}.pth'))
    assert not torch.equal(full_batches.seen[K], resumed_batches.seen[K])
    assert not torch.equal(full.model.state_dict()['fc.weight'],
                           resumed.model.state_dict()['fc.weight'])


def test_resuming_a_checkpoint_without_rng_state_warns(tmp_path):
    plain, _ = make_runner(tmp_path / 'plain', K, exact=False)
    plain.train()
    resumed, _ = make_runner(tmp_path / 'again', K + 1, exact=True,
                             resume_from=str(tmp_path / 'plain' / f'iter_{K}.pth'))
    with pytest.warns(UserWarning, match='carries no RNG state'):
        resumed.train()


def test_project_configs_ask_for_the_hook():
    """Every training config of the project has the line (through its base)."""
    import glob
    import os.path as osp

    from mmengine.config import Config
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    configs = [p for p in glob.glob(osp.join(root, 'configs', '*', '*.py'))
               if f'{osp.sep}_base_{osp.sep}' not in p]
    assert len(configs) > 40
    for path in configs:
        cfg = Config.fromfile(path)
        assert cfg.default_hooks.get('exact_resume') == dict(type='ExactResumeHook'), path
