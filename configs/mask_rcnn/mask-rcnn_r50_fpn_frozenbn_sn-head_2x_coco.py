# Mask R-CNN R50-FPN, frozen-BN backbone, SN in FPN, Shared4Conv1FC box head and mask head:
# the paper's "BN(frozen)/SN" row, 40.0 box AP / 34.8 mask AP. The heads' SN parameters get
# no weight decay (the optimizer of mask-rcnn_r50_fpn_frozenbn_2x_coco.py).
_base_ = './mask-rcnn_r50_fpn_frozenbn_2x_coco.py'
head_norm_cfg = dict(type='SN', requires_grad=True)
model = dict(neck=dict(norm_cfg=head_norm_cfg), roi_head=dict(
    bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=head_norm_cfg),
    mask_head=dict(norm_cfg=head_norm_cfg)))
