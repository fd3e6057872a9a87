# Mask R-CNN R50-FPN, frozen-BN backbone, SN in FPN, Shared4Conv1FC box head and mask head:
# the paper's "BN(frozen)/SN" row, 40.0 box AP / 34.8 mask AP.
# Pretrained backbone: torchvision://resnet50 (BN statistics and affine parameters frozen).
_base_ = './mask-rcnn_r50_fpn_frozenbn_2x_coco.py'

backbone_norm_cfg = dict(type='BN', requires_grad=False)
head_norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=backbone_norm_cfg, norm_eval=True),
    neck=dict(norm_cfg=head_norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256,
                       norm_cfg=head_norm_cfg),
        mask_head=dict(norm_cfg=head_norm_cfg)))
# SN parameters of the heads get no weight decay (inherited optim_wrapper:
# constructor='SNOptimWrapperConstructor', paramwise_cfg=dict(sn_decay_mult=0.0)).
