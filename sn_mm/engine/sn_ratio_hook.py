"""Training hook that logs the learned SN ratios, so a run shows how each layer's choice evolves.

Config::

    custom_imports = dict(imports=['sn_mm'])   # sn_mm.engine once the package imports it
    custom_hooks = [dict(type='SNRatioHook', interval=50)]
    # TensorBoard as well as the local JSON backend:
    visualizer = dict(type='Visualizer', vis_backends=[
        dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])

Every ``interval`` training iterations (and before the first and after the last one) the
softmaxed shares of every :class:`sn_mm.ops.SwitchableNorm` are written as scalars with
``runner.visualizer.add_scalars`` (step = iterations done) and into
``runner.message_hub`` (``message_hub.get_scalar(key).current()``):

- ``{prefix}/{layer}/{mean|var}_{IN|LN|BN}`` per layer (``per_layer=True``), one key per
  branch of the layer's pool (``layer.pool``: ``..._GN`` too for a layer with a GN branch);
- ``{prefix}_avg/{stage}/{mean|var}_{IN|LN|BN}`` averaged over the layers of each stage
  (``stem``, ``layer1`` ... as in :func:`sn_mm.analysis.stage_of`);
- ``{prefix}_avg/all/{mean|var}_{IN|LN|BN}`` averaged over all layers.

An average has a key per branch that some layer of the model mixes (a layer without the
branch counts 0 in it, as in :func:`sn_mm.analysis.average_shares`).

With ``skip_without_sn=True`` a model without SN layers (a BN/GN config sharing the
hook through a base config) logs nothing and says so once; by default it is an error.
A ``using_bn=False`` layer has no ``BN`` keys (its share is 0 by construction), and a
model without a GN branch no ``GN`` keys. Keys have no ``train/`` prefix, so they do not
crowd the LoggerHook's text line.
"""
from typing import Dict, Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from sn_mm.analysis import average_shares, ratios_from_model, share_of, stage_averages
from sn_mm.ops import SwitchableNorm
from sn_mm.ops import pool as pool_table


def ratio_scalars(model, prefix: str = 'sn_ratio', per_layer: bool = True,
                  per_stage: bool = True) -> Dict[str, float]:
    """The scalar dict the hook logs for ``model`` (see the module docstring)."""
    layers = ratios_from_model(model)
    used = {branch for layer in layers for branch in layer.pool}
    model_pool = tuple(b for b in pool_table.NAMES if b in used)  # the table's order
    scalars: Dict[str, float] = {}

    def put(group: str, shares: dict, pool):
        for kind in ('mean', 'var'):
            for branch in pool:
                scalars[f'{group}/{kind}_{branch}'] = share_of(shares[kind], branch)

    if per_layer:
        for layer in layers:
            put(f'{prefix}/{layer.name}', {'mean': layer.mean, 'var': layer.var}, layer.pool)
    if per_stage:
        for stage, shares in stage_averages(layers).items():
            put(f'{prefix}_avg/{stage}', shares, model_pool)
    put(f'{prefix}_avg/all', average_shares(layers), model_pool)
    return scalars


class SNRatioHook(Hook):
    """Log SN importance ratios every ``interval`` training iterations.

    Args:
        interval: logging period in iterations (>= 1).
        per_layer: log every layer's shares (two per branch of its pool).
        per_stage: log the shares averaged per stage.
        log_start: also log before the first iteration (the initial 1/3 shares).
        prefix: key prefix.
        skip_without_sn: on a model without SN layers do nothing (one log line) instead
            of raising ``ValueError``.
    """

    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL) in the same iteration

    def __init__(self, interval: int = 50, per_layer: bool = True, per_stage: bool = True,
                 log_start: bool = True, prefix: str = 'sn_ratio',
                 skip_without_sn: bool = False):
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f'SNRatioHook interval must be a positive int, got {interval!r}')
        if not prefix or not isinstance(prefix, str):
            raise ValueError(f'SNRatioHook prefix must be a non-empty string, got {prefix!r}')
        self.interval = interval
        self.per_layer = per_layer
        self.per_stage = per_stage
        self.log_start = log_start
        self.prefix = prefix
        self.skip_without_sn = bool(skip_without_sn)
        self._last_step: Optional[int] = None
        self._skipping = False

    def _log(self, runner, step: int) -> None:
        if step == self._last_step or self._skipping:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if self.skip_without_sn and not any(isinstance(m, SwitchableNorm)
                                            for m in model.modules()):
            self._skipping = True
            runner.logger.info('SNRatioHook: the model has no SN layer; nothing to log')
            return
        scalars = ratio_scalars(model, self.prefix, self.per_layer, self.per_stage)
        for key, value in scalars.items():
            runner.message_hub.update_scalar(key, value)
        runner.visualizer.add_scalars(scalars, step=step)
        self._last_step = step

    def before_train(self, runner) -> None:
        if self.log_start:
            self._log(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            self._log(runner, runner.iter + 1)
