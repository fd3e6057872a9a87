# Mask R-CNN R50-FPN, GN (32 groups) backbone, SN in FPN, Shared4Conv1FC box head and mask
# head: the paper's "GN/SN" row, 40.4 box AP / 36.0 mask AP.
# Pretrained backbone: open-mmlab://contrib/resnet50_gn (downloaded by mmengine).
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'

backbone_norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
head_norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(
        norm_cfg=backbone_norm_cfg,
        norm_eval=False,  # no BN in the backbone; stated for clarity
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://contrib/resnet50_gn')),
    neck=dict(norm_cfg=head_norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=head_norm_cfg), mask_head=dict(norm_cfg=head_norm_cfg)))
# SN parameters of the heads get no weight decay (inherited optim_wrapper:
# constructor='SNOptimWrapperConstructor', paramwise_cfg=dict(sn_decay_mult=0.0)).
