# GN (32 groups) backbone, SN in FPN, box head and mask head (the paper's GN/SN row).
_base_ = './_base_/mask-rcnn_r18_fpn_coco-demo.py'
backbone_norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
head_norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=backbone_norm_cfg, norm_eval=False),
    neck=dict(norm_cfg=head_norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=head_norm_cfg), mask_head=dict(norm_cfg=head_norm_cfg)))
