# Mask R-CNN R50-FPN, SN everywhere: backbone, FPN, Shared4Conv1FC box head and mask head
# (the SN paper's "SN/SN" row: 41.0 box AP / 36.5 mask AP on COCO val2017).
#
# Batch: 16 images per iteration = 8 GPUs x 2 images (tools/dist_train.sh CONFIG 8).
# The per-GPU batch (2) is what SN's BN branch averages over; with SyncSN
# (mask-rcnn_r50_fpn_syncsn-all_2x_coco.py) it is the union batch of 16.
# Schedule: 2x (24 epochs, lr 0.02, steps at epochs 16 and 22, 500-iteration linear warm-up).
#
# Pretrained backbone: an SN ResNet-50v1 ImageNet checkpoint in the official layout
# (SN(8,32), top-1 76.9, keys `module.*`, SN weights shaped (1,C,1,1), logits (3,)).
# Download it from the official Switchable-Normalization model zoo and save it as
#   data/pretrained/resnet50v1_sn_8x32.pth
# (relative to the directory you run tools/train.py from), or point to it with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/checkpoint.pth
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)

pretrained = 'data/pretrained/resnet50v1_sn_8x32.pth'
norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(
        norm_cfg=norm_cfg,
        # norm_eval only switches torch _BatchNorm layers to eval mode; SN keeps
        # training its statistics, so say so explicitly. frozen_stages=1 (from the base)
        # puts the stem and stage 1 in eval mode: their SN layers use running statistics.
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

train_dataloader = dict(batch_size=2)  # per GPU; x 8 GPUs = 16 images
# SN parameters (gamma, beta, importance logits) get no weight decay, as in the official
# SN detection code; every other parameter keeps 1e-4 (sn_mm.engine.optim).
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    constructor='SNOptimWrapperConstructor',
    paramwise_cfg=dict(sn_decay_mult=0.0))
auto_scale_lr = dict(enable=False, base_batch_size=16)
