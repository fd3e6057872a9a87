"""Tiny SN classifiers trained by a real mmengine Runner (shared by checkpoint/hook tests).

:func:`make_runner` (``ToySNModel``):

Two conv + SN blocks (one ``'unbiased'``, one ``'biased'`` IN variance), a plain
BatchNorm (its buffers must survive the batch-average pass) and a linear head, on
8x8 random images. Validation reports an ``np.float64`` accuracy so that
``save_best`` puts a numpy scalar into the message hub, as real metrics do.

:func:`make_ratio_runner` (``TinySNNet``, for the SN-ratio hook and its trajectories): a
stem ``sn1`` and two stages ``layer1.0.sn1``, ``layer2.0.sn1`` (the last with 2 logits),
trained with a large learning rate so that the importance shares move.
"""
import itertools

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sn_mm.ops import SwitchableNorm

_names = itertools.count()


class ToyDataset(Dataset):
    """``length`` seeded samples ``dict(inputs=(3, size, size), labels=int)``."""

    def __init__(self, length=24, size=8, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(length, 3, size, size, generator=gen) * 2 + 0.5
        self.labels = torch.randint(0, 2, (length,), generator=gen)

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], labels=self.labels[index])


class ToySNModel(BaseModel):
    def __init__(self, using_moving_average=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.sn1 = SwitchableNorm(6, using_moving_average=using_moving_average)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.sn2 = SwitchableNorm(5, in_variance='biased',
                                  using_moving_average=using_moving_average)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        x = F.relu(self.sn1(self.conv1(inputs)))
        x = F.relu(self.bn(self.sn2(self.conv2(x))))
        logits = self.fc(x.mean((2, 3)))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        if mode == 'predict':
            return [dict(pred=p, label=t) for p, t in zip(logits.argmax(1), labels)]
        return logits


class ToyAccuracy(BaseMetric):
    """Accuracy as an ``np.float64`` (as mmdet/mmseg metrics often return numpy values)."""

    def process(self, data_batch, data_samples):
        self.results.extend(int(s['pred'] == s['label']) for s in data_samples)

    def compute_metrics(self, results):
        return dict(acc=np.float64(np.mean(results)))


def make_loader(dataset=None, batch_size=4):
    return DataLoader(dataset if dataset is not None else ToyDataset(), batch_size=batch_size,
                      shuffle=False, num_workers=0)


def make_runner(work_dir, max_iters=6, load_from=None, resume=False, custom_hooks=None,
                model=None, checkpoint_interval=3, val_interval=3, seed=0):
    """An iteration-based Runner: SGD + momentum, MultiStepLR, save_best on ``acc``."""
    return Runner(
        model=model if model is not None else ToySNModel(),
        work_dir=str(work_dir),
        experiment_name=f'toy_{next(_names)}',
        train_dataloader=make_loader(),
        val_dataloader=make_loader(ToyDataset(length=8, seed=1)),
        val_evaluator=[ToyAccuracy()],
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=val_interval),
        val_cfg=dict(),
        test_dataloader=make_loader(ToyDataset(length=8, seed=1)),
        test_evaluator=[ToyAccuracy()],
        test_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9,
                                          weight_decay=1e-4)),
        param_scheduler=[dict(type='MultiStepLR', milestones=[2, 4], gamma=0.5,
                              by_epoch=False)],
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=checkpoint_interval,
                            by_epoch=False, save_best='acc', rule='greater'),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=custom_hooks,
        load_from=load_from,
        resume=resume,
        randomness=dict(seed=seed),
        default_scope='mmengine',
    )


class StageData(Dataset):
    """``length`` (16) samples ``dict(inputs=(3, 6, 6), labels=int)`` drawn from ``seed``."""

    def __init__(self, length=16, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(length, 3, 6, 6, generator=gen) * 2 + 1
        self.y = torch.randint(0, 2, (length,), generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


class _Block(nn.Module):
    def __init__(self, c, using_bn=True):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.sn1 = SwitchableNorm(c, using_bn=using_bn)

    def forward(self, x):
        return F.relu(self.sn1(self.conv1(x))) + x


class TinySNNet(BaseModel):
    """Stem ``sn1``, ``layer1.0.sn1``, ``layer2.0.sn1`` (the last with 2 logits)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.sn1 = SwitchableNorm(4)
        self.layer1 = nn.Sequential(_Block(4))
        self.layer2 = nn.Sequential(_Block(4, using_bn=False))
        self.fc = nn.Linear(4, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        x = F.relu(self.sn1(self.conv1(inputs)))
        logits = self.fc(self.layer2(self.layer1(x)).mean((2, 3)))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


def make_ratio_runner(work_dir, hook, max_iters=5, checkpoint=None, model=None, lr=2.0):
    """An iteration-based Runner training ``model`` (default :class:`TinySNNet`) on
    :class:`StageData` with plain SGD, ``hook`` as its one custom hook, and a local
    visualizer backend (``vis_data/scalars.json``)."""
    torch.manual_seed(0)
    return Runner(
        model=model if model is not None else TinySNNet(), work_dir=str(work_dir),
        experiment_name=f'snhook_{next(_names)}',
        train_dataloader=DataLoader(StageData(), batch_size=4, shuffle=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr)),
        default_hooks=dict(checkpoint=checkpoint, logger=dict(type='LoggerHook', interval=100)),
        custom_hooks=[hook],
        visualizer=dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]),
        default_scope='mmengine')
