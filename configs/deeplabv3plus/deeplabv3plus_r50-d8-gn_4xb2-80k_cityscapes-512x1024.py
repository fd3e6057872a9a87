# DeepLabV3+ R50-D8 with GN everywhere: backbone, separable ASPP head
# (including its 1x1 image-pooling branch, and both the depthwise and the pointwise
# norm of every DepthwiseSeparableConvModule: mmcv's dw_norm_cfg/pw_norm_cfg default
# to the head's norm_cfg) and auxiliary FCN head.
# Cityscapes 512x1024 crops, 4 GPUs x 2 images, 80k iterations (the mmseg schedule and
# pipeline, unchanged).
# GN uses 16 groups: the c1 decoder has 48 channels and the first separable conv 560.
_base_ = 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)
norm_cfg = dict(type='GN', num_groups=16, requires_grad=True)
# mmseg's base substituted its own norm_cfg (SyncBN) when it was parsed: set every path.
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
