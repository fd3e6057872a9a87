r"""Batch-average statistics for SN / SyncSN ("batch average" in the SN papers).

After training (or every few epochs / iterations, before validation), the BN-branch
running statistics of every SN layer are recomputed from ``K`` training batches
forwarded in train mode with frozen parameters (``torch.no_grad``, no optimizer
step), pooled over **all** values seen rather than averaged per batch:

.. math::
    \mu = \frac{\sum_b n_b \mu_b}{\sum_b n_b}, \qquad
    \sigma^2 = \frac{\sum_b \big(M_{2,b} + n_b(\mu_b - \mu)^2\big)}{\sum_b n_b}
    = \mathrm{E}[x^2] - \mathrm{E}[x]^2,

with ``n_b = N_b L`` values per channel in batch ``b`` and ``M_{2,b} = n_b
\sigma^2_b`` its BN-branch second central moment (the layer's own BN moments, so
``in_variance='unbiased'`` layers pool their Bessel-corrected IN variances as their
forward does; ``'biased'`` layers get Bessel's correction over the pooled count,
like ``torch.nn.BatchNorm2d``). This is :meth:`SwitchableNorm.start_batch_average`
/ :meth:`finish_batch_average`; the pool is exact (Chan et al.'s merge, float64).

Distributed: SyncSN's per-batch BN moments are already those of the union batch; a
plain SN layer sees only its rank's batches, so its pools are merged across all
ranks (one ``all_gather``) — every rank ends with the statistics of all data seen
by all ranks. Each rank forwards the same number of batches.

Layers in eval mode during the pass (``norm_eval=True``, ``frozen_stages``) see no
batch and keep their statistics; ``using_bn=False`` layers have none. Parameters
are untouched, every other buffer (BN statistics, counters, ...) and the RNG state
are restored, module train/eval flags are restored.

Detection and segmentation models are driven as mmengine's ``BaseModel`` does in
``train_step``: ``data = model.data_preprocessor(batch, True)`` then
``model(**data, mode='loss')`` (``mode`` is configurable).
"""
import logging
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from mmengine.dist import all_gather, get_world_size, is_distributed
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop
from torch import nn

from ..ops import BatchAverage, SwitchableNorm, SyncSwitchableNorm
from ..ops.distributed import sync_world_size

__all__ = ['batch_average', 'SNBatchAverageHook']


def _forward(module: nn.Module, data, mode: str) -> None:
    preprocessor = getattr(module, 'data_preprocessor', None)
    if preprocessor is not None:
        data = preprocessor(data, True)
    if isinstance(data, dict):
        module(**data, mode=mode)
    elif isinstance(data, (list, tuple)):
        module(*data, mode=mode)
    else:
        raise TypeError(f'batch-average expects batches as dict or list/tuple after the data '
                        f'preprocessor, got {type(data).__name__}')


def _group_size(layer: SwitchableNorm) -> int:
    """Ranks whose data a layer's per-batch moments already cover (1 for plain SN)."""
    if isinstance(layer, SyncSwitchableNorm):
        return sync_world_size(layer.process_group)
    return 1


def _merge_across_ranks(layers: List[Tuple[str, SwitchableNorm]],
                        pools: Dict[str, Optional[BatchAverage]]) -> Dict[str, BatchAverage]:
    """Exact merge of every layer's pool over all ranks (one all_gather).

    Rank r contributes ``(count / g, mean, M2 / g)`` where ``g`` is the number of
    ranks already covered by the layer's moments (1 for SN, the sync group size for
    SyncSN): identical pools of a sync group then count once in total.
    """
    rows = []
    for name, layer in layers:
        pool = pools[name]
        g = float(_group_size(layer))
        c = layer.num_features
        device = layer.running_mean.device
        if pool is None:
            rows.append(torch.zeros(1 + 2 * c, dtype=torch.float64, device=device))
        else:
            rows.append(torch.cat([torch.tensor([pool.count / g], dtype=torch.float64,
                                                device=device),
                                   pool.mean.to(device), pool.m2.to(device) / g]))
    gathered = all_gather(torch.cat(rows))
    merged = {}
    offset = 0
    for name, layer in layers:
        c = layer.num_features
        total = BatchAverage(c, layer.running_mean.device)
        for row in gathered:
            part = row[offset:offset + 1 + 2 * c].to(layer.running_mean.device)
            total.merge(float(part[0]), part[1:1 + c], part[1 + c:])
        merged[name] = total
        offset += 1 + 2 * c
    return merged


def batch_average(model: nn.Module, batches: Iterable, num_batches: int,
                  mode: str = 'loss') -> Dict[str, BatchAverage]:
    """Recompute the BN-branch running statistics of ``model``'s SN layers in place.

    Forwards up to ``num_batches`` items of ``batches`` (raw dataloader batches) in
    train mode without gradients; returns ``{layer name: pool}`` for the layers that
    were updated (pooled over all ranks under DDP). See the module docstring.
    """
    if not isinstance(num_batches, int) or isinstance(num_batches, bool) or num_batches < 1:
        raise ValueError(f'num_batches must be a positive int, got {num_batches!r}')
    module = model.module if is_model_wrapper(model) else model
    layers = [(n, m) for n, m in module.named_modules()
              if isinstance(m, SwitchableNorm) and m.using_bn]
    if not layers:
        return {}
    flags = [(m, m.training) for m in module.modules()]
    saved = {n: b.detach().clone() for n, b in module.named_buffers()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    updated: Dict[str, BatchAverage] = {}
    try:
        module.train()
        for _, layer in layers:
            layer.start_batch_average()
        seen = 0
        with torch.no_grad():
            for data in batches:
                if seen == num_batches:
                    break
                _forward(module, data, mode)
                seen += 1
        if seen == 0:
            raise ValueError('batch-average got no batch to forward (empty dataloader?)')
        pools = {name: layer.finish_batch_average() for name, layer in layers}
        if is_distributed() and get_world_size() > 1:
            merged = _merge_across_ranks(layers, pools)
        else:
            merged = pools
        for name, layer in layers:
            pool = merged[name]
            if pool is None or pool.count == 0:
                continue
            layer.start_batch_average()
            layer.batch_average.merge(pool.count, pool.mean, pool.m2)
            updated[name] = layer.finish_batch_average()
    finally:
        for _, layer in layers:  # an interrupted pass leaves no pool behind
            if layer.batch_average is not None:
                layer.finish_batch_average()
        keep = {f'{name}.{b}' if name else b for name in updated
                for b in ('running_mean', 'running_var')}
        with torch.no_grad():
            for name, buf in module.named_buffers():
                if name not in keep and name in saved:
                    buf.copy_(saved[name])
        for m, training in flags:
            m.training = training
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return updated


class SNBatchAverageHook(Hook):
    """Recompute SN running statistics from ``num_batches`` training batches.

    One ``custom_hooks`` line::

        custom_hooks = [dict(type='SNBatchAverageHook', num_batches=200)]

    Runs after every ``interval`` training epochs (epoch-based loops) or iterations
    (iteration-based loops; default: the loop's ``val_interval``) and after the last
    one — before validation and before ``CheckpointHook`` (priority ``ABOVE_NORMAL``),
    so evaluated and saved models carry the new statistics. Batches come from a
    fresh iterator over ``runner.train_dataloader``.

    Args:
        num_batches: ``K``, training batches per pass (the SN papers use ~200).
        interval: epochs or iterations between passes; ``None``: 1 epoch, or the
            iteration loop's ``val_interval``.
        by_epoch: ``None`` infers it from the train loop.
        mode: forward mode passed to the model (``'loss'``: as in training, e.g.
            RoI sampling in two-stage detectors).
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, num_batches: int = 200, interval: Optional[int] = None,
                 by_epoch: Optional[bool] = None, mode: str = 'loss'):
        if not isinstance(num_batches, int) or isinstance(num_batches, bool) \
                or num_batches < 1:
            raise ValueError(f'num_batches must be a positive int, got {num_batches!r}')
        if interval is not None and (not isinstance(interval, int) or interval < 1):
            raise ValueError(f'interval must be a positive int or None, got {interval!r}')
        if by_epoch not in (None, True, False):
            raise ValueError(f'by_epoch must be None, True or False, got {by_epoch!r}')
        self.num_batches = num_batches
        self.interval = interval
        self.by_epoch = by_epoch
        self.mode = mode

    def before_train(self, runner) -> None:
        if self.by_epoch is None:
            self.by_epoch = isinstance(runner.train_loop, EpochBasedTrainLoop)
        if self.interval is None:
            self.interval = 1 if self.by_epoch else getattr(runner.train_loop, 'val_interval', 1)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and (self.every_n_epochs(runner, self.interval)
                              or self.is_last_train_epoch(runner)):
            self.run(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.by_epoch and (self.every_n_train_iters(runner, self.interval)
                                  or self.is_last_train_iter(runner)):
            self.run(runner)

    def run(self, runner) -> Dict[str, BatchAverage]:
        """One batch-average pass over the runner's model and train dataloader."""
        updated = batch_average(runner.model, iter(runner.train_dataloader),
                                self.num_batches, self.mode)
        where = f'epoch {runner.epoch + 1}' if self.by_epoch else f'iter {runner.iter + 1}'
        print_log(f'SNBatchAverageHook: recomputed the running statistics of '
                  f'{len(updated)} SN layer(s) from {self.num_batches} batch(es) at {where}',
                  logger='current', level=logging.INFO)
        return updated
