# DeepLabV3 R50-D8 with SN, initialised from an official-layout SN ResNet-50v1 ImageNet
# checkpoint (Switchable-Normalization release: 7x7 stem, stride on the 3x3 conv,
# `module.` prefix, SN tensors shaped (1,C,1,1)/(1,C,1) -- sn_mm loads that layout).
# The backbone is mmseg's `ResNet` (7x7 stem), not `ResNetV1c` (3x3 deep stem): the
# dilations/strides stay those of the D8 configs. Put the checkpoint at
# `sn_imagenet_checkpoint` or pass
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/checkpoint.pth
# For a using_bn=False ((8,1)) checkpoint also set norm_cfg using_bn=False everywhere.
_base_ = './deeplabv3_r50-d8-sn_4xb4-160k_ade20k-512x512.py'
sn_imagenet_checkpoint = 'checkpoints/resnet50v1_sn_imagenet.pth'
model = dict(
    pretrained=None,
    backbone=dict(
        type='ResNet',
        init_cfg=dict(type='Pretrained', checkpoint=sn_imagenet_checkpoint)))
