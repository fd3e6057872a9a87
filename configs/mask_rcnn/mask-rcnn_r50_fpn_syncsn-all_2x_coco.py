# Mask R-CNN R50-FPN, SyncSN everywhere: as mask-rcnn_r50_fpn_sn-all_2x_coco.py, but the
# BN branch of every SN layer uses the moments of the union batch over all GPUs
# (16 images with 8 GPUs x 2). Outside a distributed run SyncSN behaves exactly as SN.
# Pretrained backbone: see mask-rcnn_r50_fpn_sn-all_2x_coco.py (same checkpoint: SyncSN
# loads SN checkpoints).
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'

norm_cfg = dict(type='SyncSN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
