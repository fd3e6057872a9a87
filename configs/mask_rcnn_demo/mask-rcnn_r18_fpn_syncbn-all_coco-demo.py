# SyncBN everywhere. In a single process mmengine's Runner reverts SyncBN to BN, so
# this equals mask-rcnn_r18_fpn_bn-all_coco-demo.py unless run with tools/dist_train.sh.
_base_ = './_base_/mask-rcnn_r18_fpn_coco-demo.py'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), neck=dict(norm_cfg=norm_cfg),
             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
