# SyncSN everywhere: mask-rcnn_r18_fpn_sn-all_coco-demo.py with SyncSN. In a single process
# SyncSN computes exactly what SN does; with tools/dist_train.sh the BN branch uses the
# union batch of all processes.
_base_ = './mask-rcnn_r18_fpn_sn-all_coco-demo.py'
norm_cfg = dict(type='SyncSN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), neck=dict(norm_cfg=norm_cfg),
             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
