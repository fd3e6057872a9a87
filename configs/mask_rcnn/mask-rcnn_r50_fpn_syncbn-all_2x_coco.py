# Mask R-CNN R50-FPN, SyncBN everywhere (backbone statistics trained, not frozen), for the
# comparison with SyncSN: mask-rcnn_r50_fpn_sn-all_2x_coco.py with SyncBN. Pretrained
# backbone: torchvision://resnet50. Outside a distributed run mmengine reverts SyncBN to BN.
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg, init_cfg=dict(checkpoint='torchvision://resnet50')),
             neck=dict(norm_cfg=norm_cfg),
             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
