"""The SW authors' ImageNet checkpoints (github XingangPan/Switchable-Whitening) for mmdet.

Their layout (facts from their ``imagenet.py`` and ``models/backbones/resnet.py``): a dict
with ``state_dict`` (and ``epoch``, ``arch``, ``prec1``, ``prec5``, ``optimizer``), keys under
``module.``; BN layers ``bn1``/``layerK.J.bnI``/``layerK.0.downsample.1`` with ``weight``,
``bias``, ``running_mean``, ``running_var``; SW layers ``sw1`` (stem) and ``layerK.J.sw2``
with ``weight``, ``bias`` (C,), ``sw_mean_weight`` (and ``sw_var_weight`` unless tied)
(sw_type,), ``running_mean`` (G, c, 1), ``running_cov`` (G, c, c); the classifier ``fc``.

:func:`official_sw_to_mmengine` removes ``module.``, drops ``fc.*`` and checks every SW layer;
:func:`load_official_sw` loads the result into an ``SWResNet`` (:mod:`sn_mm.sw_resnet`)
strictly, with an error naming the layers and options that differ.
"""
from collections import OrderedDict
from typing import Dict, Mapping

import torch
from torch import nn

from .ops.switchable_whitening import SW_TYPES, SwitchableWhitening

SW_KEYS = ('weight', 'bias', 'sw_mean_weight', 'running_mean', 'running_cov')


def _state_dict_of(ckpt: Mapping) -> Mapping:
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise ValueError('expected a checkpoint dict with a "state_dict" of tensors (the SW '
                         'authors\' layout) or a state dict itself')
    return state


def sw_layout(state_dict: Mapping) -> Dict[str, dict]:
    """Every SW layer of a state dict: name -> ``dict(sw_type, num_pergroup, tie_weight)``.

    Raises ``ValueError`` naming the layer when its tensors are not an SW layer's.
    """
    layers = {}
    for key in state_dict:
        if key.endswith('.sw_mean_weight') or key == 'sw_mean_weight':
            layers[key[:-len('sw_mean_weight')].rstrip('.')] = None
    for name in layers:
        pre = f'{name}.' if name else ''
        missing = [k for k in SW_KEYS if pre + k not in state_dict]
        if missing:
            raise ValueError(f'SW layer {name!r} lacks {missing} (an SW layer has {list(SW_KEYS)}'
                             ' and sw_var_weight unless tie_weight)')
        logits, cov = state_dict[pre + 'sw_mean_weight'], state_dict[pre + 'running_cov']
        mean, weight = state_dict[pre + 'running_mean'], state_dict[pre + 'weight']
        ok = (logits.dim() == 1 and logits.numel() in SW_TYPES and cov.dim() == 3
              and cov.shape[1] == cov.shape[2] and tuple(mean.shape) == (*cov.shape[:2], 1)
              and weight.numel() == cov.shape[0] * cov.shape[1])
        if not ok:
            raise ValueError(
                f'SW layer {name!r} has inconsistent shapes: sw_mean_weight '
                f'{tuple(logits.shape)} (expected one of {sorted(SW_TYPES)} logits), '
                f'running_mean {tuple(mean.shape)}, running_cov {tuple(cov.shape)} (expected '
                f'(G, c, 1) and (G, c, c)), weight {tuple(weight.shape)} (expected G*c)')
        layers[name] = dict(sw_type=logits.numel(), num_pergroup=cov.shape[1],
                            tie_weight=(pre + 'sw_var_weight') not in state_dict)
    return layers


def official_sw_to_mmengine(ckpt: Mapping, prefix: str = '', keep_fc: bool = False
                            ) -> 'OrderedDict[str, torch.Tensor]':
    """The authors' checkpoint as an mmengine state dict for ``SWResNet`` (``prefix`` +
    key, ``module.`` removed, ``fc.*`` dropped unless ``keep_fc``); SW layers checked."""
    state = _state_dict_of(ckpt)
    out = OrderedDict()
    for key, value in state.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        if key.startswith('fc.') and not keep_fc:
            continue
        out[prefix + key] = value
    if not sw_layout(out):
        raise ValueError('no SW layer (a "*.sw_mean_weight" key) in this checkpoint: not a '
                         'Switchable Whitening model')
    return out


def load_official_sw(backbone: nn.Module, ckpt: Mapping) -> None:
    """Load the authors' checkpoint into ``backbone`` (an ``SWResNet``) strictly.

    On a mismatch the error names the SW layers present on one side only (a different
    ``stage_with_sw``) and the layers built with other SW options than the file's.
    """
    state = official_sw_to_mmengine(ckpt)
    file_layout = sw_layout(state)
    model_layout = {name: dict(sw_type=m.sw_type, num_pergroup=m.num_pergroup,
                               tie_weight=m.tie_weight)
                    for name, m in backbone.named_modules() if isinstance(m, SwitchableWhitening)}
    problems = []
    only_file = sorted(set(file_layout) - set(model_layout))
    only_model = sorted(set(model_layout) - set(file_layout))
    if only_file or only_model:
        problems.append(f'SW layers only in the checkpoint: {only_file}; only in the model: '
                        f'{only_model} (build SWResNet with the stage_with_sw of the file)')
    for name in sorted(set(file_layout) & set(model_layout)):
        if file_layout[name] != model_layout[name]:
            problems.append(f'{name}: checkpoint {file_layout[name]}, model {model_layout[name]}'
                            ' (set sw_cfg accordingly)')
    if problems:
        raise ValueError('the SW checkpoint does not fit this backbone: ' + '; '.join(problems))
    result = backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith('num_batches_tracked')]
    if missing or result.unexpected_keys:
        raise ValueError(f'the SW checkpoint does not fit this backbone: missing keys '
                         f'{missing[:8]}, unexpected keys {result.unexpected_keys[:8]}')
