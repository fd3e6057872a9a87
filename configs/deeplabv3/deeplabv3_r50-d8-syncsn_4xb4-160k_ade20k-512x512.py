# DeepLabV3 R50-D8 with SyncSN (SN whose BN-branch moments are taken over all GPUs)
# everywhere: backbone, ASPP head (including its 1x1 image-pooling branch) and
# auxiliary FCN head.
# ADE20K 512x512 crops, 4 GPUs x 4 images, 160k iterations (the mmseg schedule and pipeline,
# unchanged).
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)
norm_cfg = dict(type='SyncSN', requires_grad=True)
# mmseg's base substituted its own norm_cfg (SyncBN) when it was parsed: set every path.
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
# No weight decay on SN parameters (gamma, beta, importance logits), as in the
# official SN segmentation code. norm_eval=False: SN keeps training its statistics
# (mmseg's norm_eval only affects _BatchNorm layers anyway).
optim_wrapper = dict(
    constructor='SNOptimWrapperConstructor', paramwise_cfg=dict(sn_decay_mult=0.0))
