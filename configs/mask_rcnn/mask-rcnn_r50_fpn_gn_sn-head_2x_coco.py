# Mask R-CNN R50-FPN, GN (32 groups) backbone, SN in FPN, box head and mask head: the
# paper's "GN/SN" row, 40.4 box AP / 36.0 mask AP. mask-rcnn_r50_fpn_sn-all_2x_coco.py with
# a GN backbone from open-mmlab://contrib/resnet50_gn (downloaded by mmengine).
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'
model = dict(backbone=dict(norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
                           init_cfg=dict(checkpoint='open-mmlab://contrib/resnet50_gn')))
