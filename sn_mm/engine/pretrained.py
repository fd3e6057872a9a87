"""``init_cfg=dict(type='Pretrained', ...)`` that stops on an SN ``using_bn`` mismatch.

mmengine's ``PretrainedInit`` loads with ``strict=False`` and only *logs* the error
messages of ``_load_from_state_dict``; an official ``(8, 1)`` SN checkpoint (2
importance logits [IN, LN], no running statistics) loaded into SN layers built
with ``using_bn=True`` (or the reverse) would leave every SN layer at its initial
values behind a warning. :class:`SNPretrainedInit` is mmengine's ``PretrainedInit``
plus one check before anything is copied: every SN layer of the module whose
``mean_weight``/``var_weight`` are in the checkpoint must have the same number of
logits, otherwise :class:`SNCheckpointMismatchError` names the layers and the
``norm_cfg`` setting to use. :mod:`sn_mm.compat` puts it in place of ``'Pretrained'``
in mmengine's root ``WEIGHT_INITIALIZERS``; everything else, including the
loading itself, the ``module.`` prefix stripping and the missing/unexpected key
report, is mmengine's. The checkpoint file is read once.
"""
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from mmengine.runner.checkpoint import (_load_checkpoint, _load_checkpoint_to_model,
                                        load_state_dict)
from torch import nn

from ..analysis.ratios import strip_prefix
from ..ops import SwitchableNorm

__all__ = ['SNCheckpointMismatchError', 'check_sn_state_dict', 'SNPretrainedInit']


class SNCheckpointMismatchError(ValueError):
    """SN layers of a checkpoint and of the model disagree on ``using_bn``."""


def _describe(num_logits: int) -> str:
    if num_logits == 3:
        return 'using_bn=True (3 importance logits [IN, LN, BN] and BN running statistics)'
    if num_logits == 2:
        return ('using_bn=False (2 importance logits [IN, LN], no running statistics: '
                'the official (8,1) models)')
    return f'{num_logits} importance logits (not an SN layout: expected 3 or 2)'


def check_sn_state_dict(module: nn.Module, state_dict: Mapping, source: str = 'checkpoint',
                        prefix: str = '') -> None:
    """Raise if an SN layer's logits in ``state_dict`` don't match the layer's ``using_bn``.

    ``state_dict`` keys are relative to ``module`` (``prefix`` + module names); layers
    absent from ``state_dict`` are not checked (they are reported as missing keys).
    """
    mismatched: Dict[Tuple[int, bool], List[str]] = OrderedDict()
    for name, layer in module.named_modules():
        if not isinstance(layer, SwitchableNorm):
            continue
        for param in ('mean_weight', 'var_weight'):
            value = state_dict.get(f'{prefix}{name}.{param}' if name else f'{prefix}{param}')
            if value is None or not hasattr(value, 'numel'):
                continue
            if value.numel() != getattr(layer, param).numel():
                mismatched.setdefault((value.numel(), layer.using_bn), []).append(
                    name or '<root>')
                break
    if not mismatched:
        return
    lines = []
    for (num_logits, built_using_bn), names in mismatched.items():
        shown = ', '.join(names[:6]) + (f', ... ({len(names)} layers)' if len(names) > 6 else '')
        if num_logits in (2, 3):
            fix = (f'build them with using_bn={num_logits == 3}, e.g. '
                   f"norm_cfg=dict(type='SN', using_bn={num_logits == 3}) in the model "
                   '(model.backbone.norm_cfg for a detector/segmentor backbone)')
        else:
            fix = 'this file does not hold SN importance logits for these layers'
        lines.append(f'{source} has SN layers trained with {_describe(num_logits)}, but the '
                     f'model builds them with using_bn={built_using_bn}: {shown}; {fix}.')
    raise SNCheckpointMismatchError('\n'.join(lines))


class SNPretrainedInit(PretrainedInit):
    """mmengine's ``PretrainedInit`` + :func:`check_sn_state_dict` (see module docstring).

    Args: as ``PretrainedInit``: ``checkpoint``, ``prefix=None``, ``map_location='cpu'``.
    """

    def __call__(self, module):
        checkpoint = _load_checkpoint(self.checkpoint, map_location=self.map_location,
                                      logger='current')
        if not isinstance(checkpoint, dict):
            raise RuntimeError(f'No state_dict found in checkpoint file {self.checkpoint}')
        state_dict = checkpoint.get('state_dict', checkpoint)
        if self.prefix is None:
            print_log(f'load model from: {self.checkpoint}', logger='current')
            check_sn_state_dict(module, strip_prefix(state_dict), self.checkpoint)
            _load_checkpoint_to_model(module, checkpoint, strict=False, logger='current')
        else:
            print_log(f'load {self.prefix} in model from: {self.checkpoint}',
                      logger='current')
            prefix = self.prefix if self.prefix.endswith('.') else self.prefix + '.'
            selected = {k[len(prefix):]: v for k, v in state_dict.items()
                        if k.startswith(prefix)}
            if not selected:
                raise ValueError(f'{prefix} is not in the pretrained model {self.checkpoint}')
            check_sn_state_dict(module, selected, self.checkpoint)
            load_state_dict(module, selected, strict=False, logger='current')
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())
