# DeepLabV3 R50-D8 with SN, initialised from the official-layout SN ResNet-50v1 ImageNet
# checkpoint named in configs/_base_/sn_imagenet.py (7x7 stem, stride on the 3x3 conv).
# The backbone is mmseg's `ResNet` (7x7 stem), not `ResNetV1c` (3x3 deep stem): the
# dilations/strides stay those of the D8 configs. For a using_bn=False ((8,1))
# checkpoint also set norm_cfg using_bn=False everywhere.
_base_ = ['./deeplabv3_r50-d8-sn_4xb2-80k_cityscapes-512x1024.py', '../_base_/sn_imagenet.py']
model = dict(pretrained=None, backbone=dict(
    type='ResNet', init_cfg=dict(type='Pretrained', checkpoint={{_base_.sn_imagenet_checkpoint}},
                                 partial=False)))
