# BN backbone, SN in FPN, box head and mask head (the demo's stand-in for the paper's
# frozen-BN/SN row: without an ImageNet backbone there are no statistics to freeze).
_base_ = './_base_/mask-rcnn_r18_fpn_coco-demo.py'
backbone_norm_cfg = dict(type='BN', requires_grad=True)
head_norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=backbone_norm_cfg, norm_eval=False),
    neck=dict(norm_cfg=head_norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=head_norm_cfg), mask_head=dict(norm_cfg=head_norm_cfg)))
