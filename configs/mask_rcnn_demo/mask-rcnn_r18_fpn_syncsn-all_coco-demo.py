# SyncSN everywhere. In a single process SyncSN computes exactly what SN does; with
# tools/dist_train.sh the BN branch uses the union batch of all processes.
_base_ = './_base_/mask-rcnn_r18_fpn_coco-demo.py'
backbone_norm_cfg = dict(type='SyncSN', requires_grad=True)
head_norm_cfg = dict(type='SyncSN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=backbone_norm_cfg, norm_eval=False),
    neck=dict(norm_cfg=head_norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=head_norm_cfg), mask_head=dict(norm_cfg=head_norm_cfg)))
