# BN backbone, SN in FPN, box head and mask head (the demo's stand-in for the paper's
# frozen-BN/SN row: without an ImageNet backbone there are no statistics to freeze).
_base_ = './mask-rcnn_r18_fpn_sn-all_coco-demo.py'
model = dict(backbone=dict(norm_cfg=dict(type='BN', requires_grad=True)))
