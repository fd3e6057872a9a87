# BN backbone, GN (32 groups) in FPN, box head and mask head (the demo's stand-in for
# the paper's frozen-BN/GN row: without an ImageNet backbone there is nothing to freeze).
_base_ = './mask-rcnn_r18_fpn_gn-all_coco-demo.py'
model = dict(backbone=dict(norm_cfg=dict(_delete_=True, type='BN', requires_grad=True)))
