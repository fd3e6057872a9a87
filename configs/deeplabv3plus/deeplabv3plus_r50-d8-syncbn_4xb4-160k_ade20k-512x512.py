# DeepLabV3+ R50-D8 with SyncBN (mmseg's default) everywhere: backbone, separable ASPP head
# (including its 1x1 image-pooling branch, and both the depthwise and the pointwise
# norm of every DepthwiseSeparableConvModule: mmcv's dw_norm_cfg/pw_norm_cfg default
# to the head's norm_cfg) and auxiliary FCN head.
# ADE20K 512x512 crops, 4 GPUs x 4 images, 160k iterations (the mmseg schedule and pipeline,
# unchanged).
_base_ = 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
# mmseg's base substituted its own norm_cfg (SyncBN) when it was parsed: set every path.
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
