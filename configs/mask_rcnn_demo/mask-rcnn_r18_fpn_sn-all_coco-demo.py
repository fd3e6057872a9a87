# SN everywhere (backbone, FPN, Shared4Conv1FC box head, mask head): the paper's SN/SN row.
# This is the config `python tools/demo.py` trains.
_base_ = './_base_/mask-rcnn_r18_fpn_coco-demo.py'
norm_cfg = dict(type='SN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), neck=dict(norm_cfg=norm_cfg),
             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
