"""Optimizer-wrapper constructor that knows SN layers.

mmengine's ``DefaultOptimWrapperConstructor`` applies ``norm_decay_mult`` only to
``_BatchNorm``/``_InstanceNorm``/``GroupNorm``/``LayerNorm``, so SN parameters
(``weight``, ``bias`` and the importance logits ``mean_weight``/``var_weight``) would
silently keep the full weight decay. ``SNOptimWrapperConstructor`` adds one
``paramwise_cfg`` key:

- ``sn_decay_mult`` (float): weight decay of every SN/SyncSN parameter is
  ``weight_decay * sn_decay_mult``. If absent, ``norm_decay_mult`` (when given) is
  used for SN layers too; if both are absent SN parameters keep the base decay.

``custom_keys`` still take precedence, as everywhere in mmengine. The official SN
detection/segmentation code trained with no decay on SN parameters, which is
``paramwise_cfg=dict(sn_decay_mult=0.0)``::

    optim_wrapper = dict(
        optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
        constructor='SNOptimWrapperConstructor',
        paramwise_cfg=dict(sn_decay_mult=0.0))

The optimizer's param groups are plain ``dict``s. mmengine's constructor hands the groups
to the optimizer through its ``ConfigDict`` config, which turns each group into a
``ConfigDict``; dynamo (torch 2.13) cannot trace ``optimizer.step()`` over such groups
(``'UserDefinedDictVariable' object has no attribute 'items'``), and mmengine's
``compile=True`` compiles ``model.train_step``, which runs the step.
"""
from typing import List, Optional, Union

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from ..ops import SwitchableNorm


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SNOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` plus ``paramwise_cfg.sn_decay_mult``."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        mult = self.paramwise_cfg.get('sn_decay_mult',
                                      self.paramwise_cfg.get('norm_decay_mult'))
        if mult is not None:
            if not isinstance(mult, (int, float)) or mult < 0:
                raise ValueError(f'sn_decay_mult must be a non-negative number, got {mult!r}')
            if self.base_wd is None:
                raise ValueError('sn_decay_mult needs optimizer.weight_decay to be set '
                                 '(base_wd is None)')
        self.sn_decay_mult = mult

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        groups = optim_wrapper.optimizer.param_groups
        groups[:] = [dict(group) for group in groups]  # ConfigDict -> dict (see above)
        return optim_wrapper

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        start = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        if not isinstance(module, SwitchableNorm) or self.sn_decay_mult is None:
            return
        names = {id(p): n for n, p in module.named_parameters(recurse=False)}
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        for group in params[start:]:
            name = names.get(id(group['params'][0]))
            if name is None:
                continue
            full_name = f'{prefix}.{name}' if prefix else name
            if any(key in full_name for key in custom_keys):
                continue  # custom_keys override everything, as in mmengine
            group['weight_decay'] = self.base_wd * self.sn_decay_mult
            print_log(f'paramwise_options -- {full_name}:weight_decay='
                      f'{group["weight_decay"]} (sn_decay_mult)', logger='current')
