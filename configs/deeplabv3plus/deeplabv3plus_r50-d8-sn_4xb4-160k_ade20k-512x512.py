# DeepLabV3+ R50-D8 with SN (Switchable Normalization) everywhere: backbone, separable ASPP head
# (including its 1x1 image-pooling branch, and both the depthwise and the pointwise norm of every
# DepthwiseSeparableConvModule: mmcv's dw_norm_cfg/pw_norm_cfg default to the head's norm_cfg) and
# auxiliary FCN head. ADE20K 512x512 crops, 4 GPUs x 4 images, 160k iterations (the mmseg schedule
# and pipeline, unchanged); the other configs of this folder are deltas of this one. mmseg's base
# substituted its own norm_cfg (SyncBN) when it was parsed: every norm path is set. With one image
# per GPU the BN branch cannot train (1x1 image pooling): use SyncSN, or norm_cfg=dict(type='SN',
# using_bn=False) (the official (8,1) setting).
_base_ = 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)
# exact --resume: checkpoints carry the RNG states (sn_mm.engine.exact_resume_hook)
default_hooks = dict(exact_resume=dict(type='ExactResumeHook'))
norm_cfg = dict(type='SN', requires_grad=True)
# mmseg's BN-trained ResNetV1c initialises the convolutions; the SN layers have no
# counterpart in it, so the load is partial, explicitly (strict Pretrained refuses it
# otherwise: docs/checkpoints.md). Same file as mmseg's model.pretrained.
model = dict(pretrained=None,
             backbone=dict(norm_cfg=norm_cfg, init_cfg=dict(
                 type='Pretrained', checkpoint='open-mmlab://resnet50_v1c', partial=True)),
             decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
# No weight decay on SN parameters (gamma, beta, importance logits), as in the official SN
# segmentation code (sn_mm.engine.optim); everything else keeps mmseg's.
optim_wrapper = dict(constructor='SNOptimWrapperConstructor', paramwise_cfg=dict(sn_decay_mult=0.0))
