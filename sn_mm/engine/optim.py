"""Optimizer-wrapper constructor that knows SN layers.

mmengine's ``DefaultOptimWrapperConstructor`` applies ``norm_decay_mult`` only to
``_BatchNorm``/``_InstanceNorm``/``GroupNorm``/``LayerNorm``, so SN parameters
(``weight``, ``bias`` and the importance logits ``mean_weight``/``var_weight``) would
silently keep the full weight decay. ``SNOptimWrapperConstructor`` adds two
``paramwise_cfg`` keys:

- ``sn_decay_mult`` (float >= 0): weight decay of every SN/SyncSN parameter is
  ``weight_decay * sn_decay_mult``. If absent, ``norm_decay_mult`` (when given) is
  used for SN layers too; if both are absent SN parameters keep the base decay.
  Switchable Whitening (SW/SyncSW) and Exemplar Normalization (EN/SyncEN) layers get it
  on every parameter too.
- ``sn_lr_mult`` (float >= 0): learning rate of the parameters that learn the mixture is
  ``lr * sn_lr_mult``: SN/SyncSN's importance logits ``mean_weight``/``var_weight``, SW's
  ``sw_mean_weight``/``sw_var_weight``, and EN's ratio network (``reduce_weight``,
  ``ratio_weight``, ``ratio_bias``: EN has no logits, its mixture is that network's output);
  not ``weight``/``bias``, nothing else. Absent or 1.0: the logits train at the base
  rate, the paper's setting. mmengine's parameter schedulers scale every group from its
  own initial rate, so the ratio holds through warm-up and decay (up to an absolute
  floor such as ``PolyLR``'s ``eta_min``). 0 freezes the shares at their initial value.

Any other ``sn_*`` key is an error naming it and the valid keys (a misspelt key would
otherwise be ignored). ``custom_keys`` still take precedence, as everywhere in mmengine:
a parameter matched by a custom key gets neither multiplier. The official SN
detection/segmentation code trained with no decay on SN parameters, which is
``paramwise_cfg=dict(sn_decay_mult=0.0)``; the CPU demos add ``sn_lr_mult`` so that the
logits move within their short schedules (docs/learning_the_choice.md)::

    optim_wrapper = dict(
        optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
        constructor='SNOptimWrapperConstructor',
        paramwise_cfg=dict(sn_decay_mult=0.0, sn_lr_mult=1.0))

The optimizer's param groups are plain ``dict``s. mmengine's constructor hands the groups
to the optimizer through its ``ConfigDict`` config, which turns each group into a
``ConfigDict``; dynamo (torch 2.13) cannot trace ``optimizer.step()`` over such groups
(``'UserDefinedDictVariable' object has no attribute 'items'``), and mmengine's
``compile=True`` compiles ``model.train_step``, which runs the step.
"""
import math
from typing import List, Optional, Union

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from ..ops import SwitchableNorm, SwitchableWhitening
from ..ops.exemplar_norm import ExemplarNorm

SN_KEYS = ('sn_decay_mult', 'sn_lr_mult')
#: the parameters that learn the mixture (SN, SW, EN's ratio network), what sn_lr_mult scales
LOGIT_NAMES = ('mean_weight', 'var_weight', 'sw_mean_weight', 'sw_var_weight',
               'reduce_weight', 'ratio_weight', 'ratio_bias')
# Switchable Whitening (SW/SyncSW) layers take the same multipliers as SN layers
SN_LAYER_TYPES = (SwitchableNorm, SwitchableWhitening, ExemplarNorm)


def _check_mult(key: str, value) -> None:
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0
            or not math.isfinite(value)):
        raise ValueError(f'{key} must be a non-negative number, got {value!r}')


class SNOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` plus ``paramwise_cfg.sn_decay_mult`` and
    ``paramwise_cfg.sn_lr_mult`` (see the module docstring)."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        unknown = sorted(k for k in self.paramwise_cfg
                         if isinstance(k, str) and k.startswith('sn_') and k not in SN_KEYS)
        if unknown:
            raise ValueError(f'unknown SN key(s) {unknown} in paramwise_cfg; '
                             f'SNOptimWrapperConstructor accepts {list(SN_KEYS)}')
        mult = self.paramwise_cfg.get('sn_decay_mult',
                                      self.paramwise_cfg.get('norm_decay_mult'))
        if mult is not None:
            _check_mult('sn_decay_mult', mult)
            if self.base_wd is None:
                raise ValueError('sn_decay_mult needs optimizer.weight_decay to be set '
                                 '(base_wd is None)')
        self.sn_decay_mult = mult
        lr_mult = self.paramwise_cfg.get('sn_lr_mult')
        if lr_mult is not None:
            _check_mult('sn_lr_mult', lr_mult)
            if self.base_lr is None:
                raise ValueError('sn_lr_mult needs optimizer.lr to be set (base_lr is None)')
        self.sn_lr_mult = lr_mult

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        groups = optim_wrapper.optimizer.param_groups
        groups[:] = [dict(group) for group in groups]  # ConfigDict -> dict (see above)
        return optim_wrapper

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        start = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        if not isinstance(module, SN_LAYER_TYPES) or (
                self.sn_decay_mult is None and self.sn_lr_mult is None):
            return
        names = {id(p): n for n, p in module.named_parameters(recurse=False)}
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        for group in params[start:]:
            name = names.get(id(group['params'][0]))
            if name is None:
                continue
            full_name = f'{prefix}.{name}' if prefix else name
            if any(key in f'{prefix}.{name}' for key in custom_keys):
                continue  # custom_keys override everything, as in mmengine
            if self.sn_decay_mult is not None:
                group['weight_decay'] = self.base_wd * self.sn_decay_mult
                print_log(f'paramwise_options -- {full_name}:weight_decay='
                          f'{group["weight_decay"]} (sn_decay_mult)', logger='current')
            if self.sn_lr_mult is not None and name in LOGIT_NAMES:
                group['lr'] = self.base_lr * self.sn_lr_mult
                print_log(f'paramwise_options -- {full_name}:lr={group["lr"]} (sn_lr_mult)',
                          logger='current')
