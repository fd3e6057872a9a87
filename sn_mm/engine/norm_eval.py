"""``norm_eval=True`` for SN layers inside OpenMMLab backbones.

mmdet/mmseg ``ResNet.train()`` (and HRNet, ResNeXt, ...) implement ``norm_eval=True``
by switching modules that are ``torch.nn.modules.batchnorm._BatchNorm`` to eval mode.
SN is deliberately not a ``_BatchNorm`` (mmengine would replace it by BN/SyncBN), so
without help it would keep training under ``norm_eval=True`` — silently.

Definition (sn_mm): inside a module whose ``norm_eval`` attribute is ``True``, every
SN / SyncSN layer

- runs in **eval mode** whenever that module runs in training mode: the BN term
  uses ``running_mean``/``running_var``, which are not updated (IN and LN moments
  still come from the sample, as in any SN eval); SyncSN does not communicate;
- has its **importance logits frozen** (``mean_weight``/``var_weight``
  ``requires_grad=False``), so the mixture it was pretrained with is kept;
- keeps ``weight``/``bias`` trainable or not as ``norm_cfg['requires_grad']`` says,
  exactly like BN's affine parameters under ``norm_eval=True``.

``frozen_stages`` needs nothing extra: ``_freeze_stages`` calls ``.eval()`` on the
stem / stages and sets ``requires_grad=False`` on all their parameters, SN included.

Mechanism (no subclassing, no patching of library code): torch's global
module-registration hook (``register_module_module_registration_hook``). When a
module whose ``norm_eval`` is ``True`` registers a child (mmdet/mmseg ResNet set
``self.norm_eval`` before building the stem and stages), the SN layers in that
child get their logits frozen — at construction time, so optimizers and DDP see
the final ``requires_grad`` — and the module gets a forward pre-hook that puts its
SN layers into eval mode on every training forward. If ``norm_eval`` is switched
on after construction, the forward pre-hook (present on any module that has a
``norm_eval`` attribute and SN children) freezes the logits on the first training
forward and warns: under DDP that is too late (build with ``norm_eval=True`` or use
``find_unused_parameters=True``). :func:`disable` removes the registration hook.
"""
import logging
import warnings
from typing import List, Optional

from mmengine.logging import print_log
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from ..ops import SwitchableNorm

__all__ = ['sn_layers', 'apply_norm_eval', 'enable', 'disable', 'is_enabled']

_HOOKED = '_sn_norm_eval_hooked'
_handle = None


def sn_layers(module: nn.Module) -> List[SwitchableNorm]:
    """Every SN / SyncSN layer in ``module`` (itself included)."""
    return [m for m in module.modules() if isinstance(m, SwitchableNorm)]


def _freeze_logits(layers: List[SwitchableNorm]) -> int:
    frozen = 0
    for layer in layers:
        for param in (layer.mean_weight, layer.var_weight):
            if param.requires_grad:
                param.requires_grad_(False)
                frozen += 1
    return frozen


def apply_norm_eval(module: nn.Module) -> None:
    """Put the SN layers of ``module`` into eval mode and freeze their logits."""
    layers = sn_layers(module)
    for layer in layers:
        if layer.training:
            layer.eval()
    if _freeze_logits(layers):
        warnings.warn(
            f'sn_mm: {type(module).__name__}.norm_eval=True froze the importance logits of '
            'its SN layers at the first training forward (norm_eval was enabled after the '
            'model was built). Under DistributedDataParallel build the model with '
            'norm_eval=True, or set find_unused_parameters=True.', stacklevel=3)


def _norm_eval_pre_hook(module: nn.Module, args) -> None:
    if module.training and getattr(module, 'norm_eval', False) is True:
        apply_norm_eval(module)


def _attach(parent: nn.Module) -> None:
    if not parent.__dict__.get(_HOOKED, False):
        parent.register_forward_pre_hook(_norm_eval_pre_hook)
        parent.__dict__[_HOOKED] = True


def _on_module_registration(parent: nn.Module, name: str,
                            child: Optional[nn.Module]) -> None:
    if child is None or not hasattr(parent, 'norm_eval'):
        return None
    layers = sn_layers(child)
    if not layers:
        return None
    _attach(parent)
    if parent.norm_eval is True:
        _freeze_logits(layers)
        if not parent.__dict__.get('_sn_norm_eval_logged', False):
            parent.__dict__['_sn_norm_eval_logged'] = True
            print_log(f'sn_mm: {type(parent).__name__} has norm_eval=True: its SN layers '
                      'run in eval mode (BN term from running statistics) with frozen '
                      'importance logits; set norm_eval=False to train them.',
                      logger='current', level=logging.INFO)
    return None


def enable() -> None:
    """Install the global module-registration hook (done on ``import sn_mm``)."""
    global _handle
    if _handle is None:
        _handle = register_module_module_registration_hook(_on_module_registration)


def disable() -> None:
    """Remove the hook: models built afterwards get mmdet/mmseg's plain behaviour."""
    global _handle
    if _handle is not None:
        _handle.remove()
        _handle = None


def is_enabled() -> bool:
    return _handle is not None


enable()
