# Mask R-CNN R50-FPN, GN (32 groups) everywhere: mask-rcnn_r50_fpn_sn-all_2x_coco.py with
# GN (the paper's "GN/GN" row: 40.2 box AP / 35.7 mask AP; mmdet's
# gn/mask-rcnn_r50-contrib_fpn_gn-all_2x_coco.py in this family's layout). Pretrained
# backbone: open-mmlab://contrib/resnet50_gn (downloaded by mmengine). Same optimizer as
# SN (sn_decay_mult touches SN layers only), so norm_cfg is the only difference.
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg,
                           init_cfg=dict(checkpoint='open-mmlab://contrib/resnet50_gn')),
             neck=dict(norm_cfg=norm_cfg),
             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
