# Mask R-CNN R50-FPN, SN everywhere: backbone, FPN, Shared4Conv1FC box head and mask head
# (the SN paper's "SN/SN" row: 41.0 box AP / 36.5 mask AP on COCO val2017). The other
# configs of this folder are deltas of this one or of the frozen-BN baseline.
#
# mmdet's 2x schedule, unchanged: 16 images per iteration = 8 GPUs x 2 images
# (tools/dist_train.sh CONFIG 8), lr 0.02, steps at epochs 16 and 22, 500-iteration
# warm-up. The per-GPU batch (2) is what SN's BN branch averages over; with SyncSN
# (mask-rcnn_r50_fpn_syncsn-all_2x_coco.py) it is the union batch of 16.
# Pretrained backbone: configs/_base_/sn_imagenet.py. frozen_stages=1 (from mmdet's base)
# puts the stem and stage 1 in eval mode: their SN layers use running statistics.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py', '../_base_/sn_imagenet.py']
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)
# exact --resume: checkpoints carry the RNG states (sn_mm.engine.exact_resume_hook)
default_hooks = dict(exact_resume=dict(type='ExactResumeHook'))

norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(
        norm_cfg=norm_cfg,
        norm_eval=False,  # True would freeze SN's statistics and logits (sn_mm.ops.norm_eval)
        init_cfg=dict(type='Pretrained', checkpoint={{_base_.sn_imagenet_checkpoint}})),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))
# SN parameters (gamma, beta, importance logits) get no weight decay, as in the official
# SN detection code; every other parameter keeps mmdet's 1e-4 (sn_mm.engine.optim).
optim_wrapper = dict(constructor='SNOptimWrapperConstructor', paramwise_cfg=dict(sn_decay_mult=0.0))
