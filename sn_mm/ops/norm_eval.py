"""``norm_eval=True`` for SN layers built inside OpenMMLab backbones (pure torch).

mmdet/mmseg ``ResNet.train()`` (and HRNet, ResNeXt, ...) implement ``norm_eval=True`` by
switching modules that are ``torch.nn.modules.batchnorm._BatchNorm`` to eval mode. SN is
deliberately not a ``_BatchNorm`` (mmengine would replace it by BN/SyncBN), so without
help it would keep training under ``norm_eval=True`` — silently.

Definition (sn_mm): an SN / SyncSN layer built inside the constructor of a module whose
``norm_eval`` attribute is ``True`` (its *owner*: the nearest such module being
constructed, e.g. the backbone; mmdet/mmseg backbones set ``self.norm_eval`` before
building their stem and stages)

- runs in **eval mode** whenever the owner's ``norm_eval`` is ``True``: its
  ``train(True)`` leaves it in eval mode, so the BN term uses ``running_mean`` /
  ``running_var``, which are not updated (IN and LN moments still come from the sample,
  as in any SN eval); SyncSN does not communicate;
- has its **importance logits frozen** (``mean_weight`` / ``var_weight``
  ``requires_grad=False``) before DDP wraps the model, so DDP and optimizers see the final
  state and the mixture it was pretrained with is kept. mmcv's ``build_norm_layer``
  resets ``requires_grad`` of every parameter right after constructing a norm layer, so
  the freeze is applied at the layer's next ``train()`` or ``_apply`` (``.to(device)``,
  ``.cuda()``, ``.float()``, ...): mmengine's Runner moves the model to its device before
  wrapping it, as does every DDP recipe (:func:`freeze_logits` does it explicitly);
- keeps ``weight`` / ``bias`` trainable or not as ``norm_cfg['requires_grad']`` says,
  exactly like BN's affine parameters under ``norm_eval=True``.

``frozen_stages`` needs nothing extra: ``_freeze_stages`` calls ``.eval()`` on the stem /
stages and sets ``requires_grad=False`` on all their parameters, SN included.

Mechanism: at construction the layer looks up the call stack for the module whose
``__init__`` is building it (no hook on other modules, no patch of library code; only SN
construction does this) and keeps a reference to it; :meth:`SwitchableNorm.train`
consults the owner's ``norm_eval``. If ``norm_eval`` is switched on after construction,
the next ``train()`` puts the SN layers in eval mode, freezes their logits and warns:
under DDP that is too late (build with ``norm_eval=True`` or use
``find_unused_parameters=True``). :func:`disable` turns the lookup off for layers built
afterwards (plain mmdet/mmseg behaviour).
"""
import inspect
import logging
import warnings
from typing import Optional

from torch import nn

__all__ = ['bind_owner', 'owner_of', 'freeze_logits', 'resolve_pending_freeze', 'train_mode',
           'enable', 'disable', 'is_enabled']

_OWNER = '_sn_norm_eval_owner'
_PENDING = '_sn_norm_eval_freeze_pending'
_MAX_FRAMES = 64
_enabled = True
logger = logging.getLogger('sn_mm')


def _find_owner(layer: nn.Module) -> Optional[nn.Module]:
    """The nearest module under construction on the call stack that has ``norm_eval``."""
    frame = inspect.currentframe()
    try:
        for _ in range(_MAX_FRAMES):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            owner = frame.f_locals.get('self')
            if (owner is not layer and isinstance(owner, nn.Module)
                    and 'norm_eval' in vars(owner)):
                return owner
        return None
    finally:
        del frame


def bind_owner(layer: nn.Module) -> None:
    """Called by the SN constructor: remember the owner and freeze the logits if needed."""
    if not _enabled:
        return
    owner = _find_owner(layer)
    if owner is None:
        return
    vars(layer)[_OWNER] = owner  # a plain attribute: not a submodule, not in state_dict
    if owner.norm_eval is True:
        _freeze_logits(layer)
        vars(layer)[_PENDING] = True  # again after build_norm_layer's requires_grad loop
        if not vars(owner).get('_sn_norm_eval_logged', False):
            vars(owner)['_sn_norm_eval_logged'] = True
            logger.info('sn_mm: %s has norm_eval=True: its SN layers run in eval mode (BN '
                        'term from running statistics) with frozen importance logits; set '
                        'norm_eval=False to train them.', type(owner).__name__)


def owner_of(layer: nn.Module) -> Optional[nn.Module]:
    """The ``norm_eval`` owner the layer was built in, or ``None``."""
    return vars(layer).get(_OWNER)


def _freeze_logits(layer: nn.Module) -> bool:
    frozen = False
    # SN: the two logit vectors; EN: its ratio network (``logit_parameters()``)
    params = (layer.logit_parameters() if hasattr(layer, 'logit_parameters')
              else (layer.mean_weight, layer.var_weight))
    for param in params:
        if param.requires_grad:
            param.requires_grad_(False)
            frozen = True
    return frozen


def resolve_pending_freeze(layer: nn.Module) -> None:
    """Freeze the logits of a layer built inside a ``norm_eval=True`` owner (idempotent)."""
    if vars(layer).pop(_PENDING, False):
        owner = vars(layer).get(_OWNER)
        if owner is not None and getattr(owner, 'norm_eval', False) is True:
            _freeze_logits(layer)


def freeze_logits(model: nn.Module) -> None:
    """Apply the pending ``norm_eval`` freezes of every SN layer in ``model`` now."""
    for module in model.modules():
        if _PENDING in vars(module):
            resolve_pending_freeze(module)


def train_mode(layer: nn.Module, mode: bool) -> bool:
    """The mode ``layer.train(mode)`` really sets: eval inside a ``norm_eval=True`` owner."""
    owner = vars(layer).get(_OWNER)
    if owner is None:
        return mode
    built_frozen = vars(layer).get(_PENDING, False)
    resolve_pending_freeze(layer)
    if not mode or getattr(owner, 'norm_eval', False) is not True:
        return mode
    if _freeze_logits(layer) and not built_frozen:
        warnings.warn(
            f'sn_mm: {type(owner).__name__}.norm_eval=True froze the importance logits of '
            'its SN layers at train() (norm_eval was enabled after the model was built). '
            'Under DistributedDataParallel build the model with norm_eval=True, or set '
            'find_unused_parameters=True.', stacklevel=4)
    return False


def enable() -> None:
    """Bind SN layers built from now on to their ``norm_eval`` owner (the default)."""
    global _enabled
    _enabled = True


def disable() -> None:
    """SN layers built from now on ignore ``norm_eval`` (plain mmdet/mmseg behaviour)."""
    global _enabled
    _enabled = False


def is_enabled() -> bool:
    return _enabled
