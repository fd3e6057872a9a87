"""Eval-mode Switchable Whitening layers of a model as grouped 1x1 convs (pure torch).

:func:`sw_to_convs` replaces every SW/SyncSW layer that is a fixed affine map in eval mode
(:meth:`~sn_mm.ops.SwitchableWhitening.is_fixed_affine`: instance-branch weights exactly 0,
always for ``sw_type=1``) by ``nn.Conv2d(C, C, 1, groups=C / num_pergroup)``
(:func:`~sn_mm.ops.sw_fold.to_grouped_conv`), or, where the model feeds a plain ``groups=1``
conv's output straight into it (:func:`~sn_mm.deploy.convert.conv_norm_pairs`: ResNet
``conv{i}``/``norm{i}_name``, mmcv ``ConvModule``, ``nn.Sequential``), folds it into that
conv (:func:`~sn_mm.ops.sw_fold.fold_into_conv`) and leaves an ``nn.Identity``. Layers
whose map depends on the sample stay as they are and are reported. Not (yet) part of
:func:`~sn_mm.deploy.convert.to_fixed_norms` / ``tools/deploy_sn.py``, whose plans
rebuild converted SN models from configs.
"""
import copy
from typing import List, Tuple

from torch import nn

from sn_mm.ops.sw_fold import fold_into_conv, to_grouped_conv
from sn_mm.ops.switchable_whitening import SwitchableWhitening

from .convert import conv_norm_pairs


def sw_to_convs(model: nn.Module, fold: bool = True, inplace: bool = False
                ) -> Tuple[nn.Module, List[Tuple[str, str]]]:
    """``(converted model in eval mode, [(layer name, what it became)])`` (module doc)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if isinstance(m, SwitchableWhitening)]
    if not names:
        raise ValueError(f'no SwitchableWhitening layer found in {type(model).__name__}')
    pairs = {norm: conv for conv, norm in conv_norm_pairs(model)} if fold else {}
    report = []
    for name in names:
        layer = modules[name]
        if not layer.is_fixed_affine():
            report.append((name, f'kept: depends on the sample (sw_type={layer.sw_type})'))
            continue
        conv_name = pairs.get(name)
        conv = modules.get(conv_name)
        if conv is not None and conv.groups == 1 and conv.out_channels == layer.num_features:
            model.set_submodule(conv_name, fold_into_conv(conv, layer))
            model.set_submodule(name, nn.Identity())
            report.append((name, f'folded into {conv_name}'))
        else:
            model.set_submodule(name, to_grouped_conv(layer))
            report.append((name, f'grouped 1x1 conv, groups={layer.num_groups}'))
    return model, report
