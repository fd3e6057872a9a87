"""Training hook for Sparse SN: the sparsestmax radius schedule and the freezing of one-hot layers.

Config::

    custom_hooks = [dict(type='SSNRadiusHook')]            # r: 0 -> 1 over the run
    custom_hooks = [dict(type='SSNRadiusHook', begin=0, end=5000,
                         start_radius=0.0, end_radius=1.0, log_interval=50)]

Before every training iteration ``i`` (iterations done so far) every SSN / SyncSSN layer
gets the radius

.. math:: r(i) = r_0 + (r_1 - r_0)\\,\\mathrm{clip}\\big((i - \\mathrm{begin}) /
          (\\mathrm{end} - \\mathrm{begin}), 0, 1\\big),

``end`` defaulting to the run's ``max_iters`` (the authors' schedule: ``r = i / total``).
After every ``freeze_interval`` iterations (after the optimizer step) the layers whose
mean and variance importances are both one-hot are frozen
(:meth:`~sn_mm.ops.SparseSwitchableNorm.freeze_one_hot`): their logits are fixed to the
one-hot vector and get no gradient from then on; frozen logits are re-pinned at the
same time (undoing momentum / weight-decay drift).

Distributed runs: the radius is a function of the iteration, so every rank sets the same
value. The freezing decisions depend on the logits, which DDP keeps identical; to be
safe they are taken on rank 0 and broadcast (one collective of one byte per SSN layer),
so every rank freezes the same layers.

Every ``log_interval`` iterations it writes, with ``runner.visualizer.add_scalars``
(TensorBoard with ``TensorboardVisBackend``) and into ``runner.message_hub``:
``ssn/radius``, ``ssn/one_hot_layers`` (both importances one-hot), ``ssn/frozen_layers``
and ``ssn/layers``.
"""
from typing import List, Optional

import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from sn_mm.ops import SparseSwitchableNorm, SyncSparseSwitchableNorm

SPARSE_TYPES = (SparseSwitchableNorm, SyncSparseSwitchableNorm)


def sparse_layers(model) -> List:
    """Every SSN / SyncSSN layer of ``model`` (wrappers looked through)."""
    model = model.module if is_model_wrapper(model) else model
    return [m for m in model.modules() if isinstance(m, SPARSE_TYPES)]


def radius_at(iteration: int, begin: int, end: int, start_radius: float,
              end_radius: float) -> float:
    """The linear schedule of the module docstring."""
    progress = min(max((iteration - begin) / (end - begin), 0.0), 1.0)
    return start_radius + (end_radius - start_radius) * progress


class SSNRadiusHook(Hook):
    """Set the SSN radius from the training progress and freeze one-hot layers.

    Args:
        begin: iteration at which the radius starts growing (default 0).
        end: iteration at which it reaches ``end_radius`` (default: ``max_iters``).
        start_radius, end_radius: radius before ``begin`` / after ``end`` (0 and 1).
        freeze: freeze layers once both importances are one-hot (the authors' rule).
        freeze_interval: check for one-hot layers every this many iterations.
        log_interval: log the counts every this many iterations (and at the end).
    """

    priority = 'NORMAL'

    def __init__(self, begin: int = 0, end: Optional[int] = None, start_radius: float = 0.0,
                 end_radius: float = 1.0, freeze: bool = True, freeze_interval: int = 1,
                 log_interval: int = 50):
        for name, value in (('start_radius', start_radius), ('end_radius', end_radius)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value < float('inf'):
                raise ValueError(f'SSNRadiusHook {name} must be a finite number >= 0, '
                                 f'got {value!r}')
        for name, value in (('freeze_interval', freeze_interval),
                            ('log_interval', log_interval)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'SSNRadiusHook {name} must be a positive int, got {value!r}')
        if not isinstance(begin, int) or begin < 0:
            raise ValueError(f'SSNRadiusHook begin must be an int >= 0, got {begin!r}')
        if end is not None and (not isinstance(end, int) or end <= begin):
            raise ValueError(f'SSNRadiusHook end must be an int > begin ({begin}), got {end!r}')
        self.begin, self.end = begin, end
        self.start_radius, self.end_radius = float(start_radius), float(end_radius)
        self.freeze = freeze
        self.freeze_interval, self.log_interval = freeze_interval, log_interval
        self._layers: List = []

    # ----------------------------------------------------------------- schedule
    def radius(self, runner, iteration: Optional[int] = None) -> float:
        end = self.end if self.end is not None else runner.max_iters
        if end <= self.begin:
            raise ValueError(f'SSNRadiusHook: the schedule ends at iteration {end}, not after '
                             f'its begin {self.begin}; set end > begin')
        it = runner.iter if iteration is None else iteration
        return radius_at(it, self.begin, end, self.start_radius, self.end_radius)

    def _set(self, runner, iteration: int) -> None:
        r = self.radius(runner, iteration)
        for layer in self._layers:
            layer.set_radius(r)

    def before_train(self, runner) -> None:
        self._layers = sparse_layers(runner.model)
        if not self._layers:
            runner.logger.warning('SSNRadiusHook: the model has no SSN / SyncSSN layer; '
                                  'use norm_cfg=dict(type="SSN")')
        self._set(runner, runner.iter)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._set(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self._layers:
            return
        if self.freeze and self.every_n_train_iters(runner, self.freeze_interval):
            self.freeze_one_hot_layers()
        if self.every_n_train_iters(runner, self.log_interval) or self.is_last_train_iter(runner):
            self._log(runner, runner.iter + 1)

    # ---------------------------------------------------------------- freezing
    @torch.no_grad()
    def freeze_one_hot_layers(self) -> None:
        """Freeze every layer whose importances are both one-hot (rank 0 decides)."""
        decisions = torch.stack([layer.one_hot() for layer in self._layers])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flags = decisions.to(torch.uint8)
            if dist.get_backend() == 'nccl':
                flags = flags.cuda()
            dist.broadcast(flags, src=0)
            decisions = flags.to(decisions.device).bool()
        for layer, decision in zip(self._layers, decisions):
            layer.freeze_one_hot(decision)

    def counts(self) -> dict:
        """Scalars of the module docstring (one host read of all flags together)."""
        one_hot = torch.stack([layer.one_hot() for layer in self._layers]).sum()
        frozen = torch.stack([layer.frozen for layer in self._layers]).sum()
        radius = self._layers[0].radius
        values = torch.stack([one_hot.double(), frozen.double(), radius.double()]).tolist()
        return {'ssn/one_hot_layers': int(values[0]), 'ssn/frozen_layers': int(values[1]),
                'ssn/radius': float(values[2]), 'ssn/layers': len(self._layers)}

    def _log(self, runner, step: int) -> None:
        scalars = self.counts()
        for key, value in scalars.items():
            runner.message_hub.update_scalar(key, value)
        runner.visualizer.add_scalars(scalars, step=step)
