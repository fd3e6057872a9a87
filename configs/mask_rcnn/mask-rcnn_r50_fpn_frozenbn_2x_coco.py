# Mask R-CNN R50-FPN baseline: frozen BN backbone (statistics and affine parameters fixed
# at their ImageNet values), no normalization in FPN and heads (mmdet's Shared2FC box
# head): the paper's "BN(frozen)/-" row, 38.6 box AP / 34.2 mask AP.
# Pretrained backbone: torchvision://resnet50.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,  # frozen BN: running statistics, eval mode throughout training
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')))

train_dataloader = dict(batch_size=2)  # per GPU; x 8 GPUs = 16 images
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    constructor='SNOptimWrapperConstructor',
    paramwise_cfg=dict(sn_decay_mult=0.0))
auto_scale_lr = dict(enable=False, base_batch_size=16)
