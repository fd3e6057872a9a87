"""``SWResNet``: mmdet's ResNet with the Switchable Whitening layout of the SW authors' ImageNet
models (github XingangPan/Switchable-Whitening, ``models/backbones/resnet.py``; facts only).

Layout: the stem's norm and the *second* norm of every other bottleneck (block indices 1, 3,
5, ... of a stage) of the stages with ``stage_with_sw`` (default: stages 1-3, not 4) are SW
layers built from ``sw_cfg``; every other norm (the first block of each stage, ``norm1`` /
``norm3``, the downsample norms) is built from ``norm_cfg`` as in mmdet's ResNet. The SW
layers take the authors' module names, ``sw1`` (stem) and ``layerK.J.sw2``, so their
checkpoint keys match after the ``module.`` prefix is removed and ``fc.*`` dropped
(:mod:`sn_mm.sw_checkpoint` converts and checks such a file). Only the 7x7 stem
(``deep_stem=False``, mmdet's ``ResNet``) has this layout.
"""
from mmcv.cnn import build_norm_layer
from mmdet.models.backbones import ResNet

DEFAULT_SW_CFG = dict(type='SW', sw_type=2, num_pergroup=16, T=5)


class SWResNet(ResNet):
    """mmdet ``ResNet`` with SW layers where the SW authors' ResNet has them (module doc).

    Args:
        sw_cfg: norm config of the SW layers (default ``dict(type='SW', sw_type=2,
            num_pergroup=16, T=5)``; ``'SyncSW'`` for the union batch).
        stage_with_sw: per stage, whether its odd blocks get an SW ``norm2``.
        everything else: mmdet's ``ResNet`` (``deep_stem`` must stay False).
    """

    def __init__(self, *args, sw_cfg=None, stage_with_sw=(True, True, True, False), **kwargs):
        if kwargs.get('deep_stem', False):
            raise ValueError('SWResNet follows the SW authors\' 7x7 stem: deep_stem must be '
                             f'False, got {kwargs["deep_stem"]!r}')
        super().__init__(*args, **kwargs)
        sw_cfg = dict(DEFAULT_SW_CFG if sw_cfg is None else sw_cfg)
        stage_with_sw = tuple(stage_with_sw)
        if len(stage_with_sw) != self.num_stages or not all(
                isinstance(s, bool) for s in stage_with_sw):
            raise ValueError(f'stage_with_sw must be {self.num_stages} bools (one per stage), '
                             f'got {stage_with_sw!r}')
        self.sw_cfg = sw_cfg
        self.stage_with_sw = stage_with_sw
        self._swap_norm(self, 'norm1_name', 'sw1', self.stem_channels)
        for i, layer_name in enumerate(self.res_layers):
            if not stage_with_sw[i]:
                continue
            for j, block in enumerate(getattr(self, layer_name)):
                if j % 2 == 1:
                    self._swap_norm(block, 'norm2_name', 'sw2', block.planes)
        self._freeze_stages()  # again: the new stem layer too

    def _swap_norm(self, module, attr: str, new_name: str, channels: int) -> None:
        name, layer = build_norm_layer(self.sw_cfg, channels, postfix=new_name[-1])
        if name != new_name:
            raise ValueError(f'sw_cfg must build a layer named {new_name!r} (the SW authors\' '
                             f'names: a type with _abbr_ "sw"), got {name!r} from {self.sw_cfg!r}')
        delattr(module, getattr(module, attr))
        setattr(module, attr, name)
        module.add_module(name, layer)
