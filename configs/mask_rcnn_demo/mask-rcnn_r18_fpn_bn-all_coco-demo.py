# BN everywhere, statistics of the per-GPU batch (2 images; RoI heads: the sampled RoIs).
# Trained from scratch, so BN is trained, not frozen (norm_eval=False).
_base_ = './_base_/mask-rcnn_r18_fpn_coco-demo.py'
backbone_norm_cfg = dict(type='BN', requires_grad=True)
head_norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=backbone_norm_cfg, norm_eval=False),
    neck=dict(norm_cfg=head_norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=head_norm_cfg), mask_head=dict(norm_cfg=head_norm_cfg)))
