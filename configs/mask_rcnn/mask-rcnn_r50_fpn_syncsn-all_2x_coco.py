# Mask R-CNN R50-FPN, SyncSN everywhere: mask-rcnn_r50_fpn_sn-all_2x_coco.py with the BN
# branch of every SN layer using the moments of the union batch over all GPUs (16 images
# with 8 GPUs x 2). Same SN checkpoint; outside a distributed run SyncSN is exactly SN.
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'
norm_cfg = dict(type='SyncSN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), neck=dict(norm_cfg=norm_cfg),
             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
