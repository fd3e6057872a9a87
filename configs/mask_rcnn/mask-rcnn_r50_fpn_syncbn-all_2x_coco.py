# Mask R-CNN R50-FPN, SyncBN everywhere (backbone statistics trained, not frozen), for the
# comparison with SyncSN. Pretrained backbone: torchvision://resnet50.
# Outside a distributed run mmengine's Runner reverts SyncBN to BN.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        norm_cfg=norm_cfg,
        norm_eval=False,  # train the (synchronized) statistics
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

train_dataloader = dict(batch_size=2)  # per GPU; x 8 GPUs = 16 images
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    constructor='SNOptimWrapperConstructor',
    paramwise_cfg=dict(sn_decay_mult=0.0))
auto_scale_lr = dict(enable=False, base_batch_size=16)
