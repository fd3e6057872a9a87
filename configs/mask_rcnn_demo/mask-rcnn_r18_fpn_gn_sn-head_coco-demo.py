# GN (32 groups) backbone, SN in FPN, box head and mask head (the paper's GN/SN row).
_base_ = './mask-rcnn_r18_fpn_sn-all_coco-demo.py'
model = dict(backbone=dict(norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)))
