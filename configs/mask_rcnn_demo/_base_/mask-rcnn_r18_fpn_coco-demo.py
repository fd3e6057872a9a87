# Mask R-CNN, ResNet-18 FPN trained from scratch on sn_mm's synthetic COCO-format shapes
# (sn_mm/datasets/coco_demo.py; `python tools/make_coco_demo.py` writes data/coco_demo/).
# Small enough to train on 2 CPU cores in a few minutes, and to compare every normalizer
# over 3 seeds in about an hour (300 iterations; 1000 until 2026-12-03). This base uses
# BN everywhere (backbone, FPN, Shared4Conv1FC box head, mask head; batch statistics, trainable: no
# frozen BN without a pretrained backbone); the configs next to it change norm_cfg.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)

data_root = 'data/coco_demo/'
classes = ('circle', 'square', 'triangle', 'star')
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75),
                                          (255, 180, 0)])
image_size = (256, 256)
max_iters = 300
batch_size = 2  # the paper's per-GPU batch on COCO: small batches are where SN differs
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    backbone=dict(
        depth=18,
        base_channels=32,  # half-width ResNet-18 (32-64-128-256 channels): 2x faster on CPU
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,  # trained from scratch; True would freeze SN (sn_mm.ops.norm_eval)
        zero_init_residual=False,
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64, norm_cfg=norm_cfg),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            in_channels=64,
            conv_out_channels=64,
            fc_out_channels=256,
            num_classes=len(classes),
            norm_cfg=norm_cfg),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=len(classes),
                       norm_cfg=norm_cfg)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(max_per_img=50)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=None,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.75), int(max_iters * 0.9)], gamma=0.1)
]
# SN parameters (gamma, beta and the importance logits) get no weight decay, as in the
# official SN detection code: sn_decay_mult=0.0 (SNOptimWrapperConstructor, sn_mm.engine).
# The importance logits train at sn_lr_mult x lr: at 1x they barely leave 1/3 in a
# demo's few hundred iterations (the paper's 1x goes with schedules of ~10^5
# iterations); 30 is the value
# chosen by the sweep in docs/learning_the_choice.md. No effect on configs without SN.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=35, norm_type=2),
    constructor='SNOptimWrapperConstructor',
    paramwise_cfg=dict(sn_decay_mult=0.0, sn_lr_mult=30.0))
auto_scale_lr = dict(enable=False, base_batch_size=batch_size)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1),
    exact_resume=dict(type='ExactResumeHook'))  # exact --resume (RNG states in checkpoints)
log_processor = dict(by_epoch=False)
# Share trajectories of every SN layer (per layer, per stage, overall) to vis_data/scalars.json
# and TensorBoard (`tensorboard --logdir work_dirs/`); plot them with
# `tools/analyze_sn.py --trajectories WORK_DIR`. Configs without SN log nothing.
custom_hooks = [dict(type='SNRatioHook', interval=50, skip_without_sn=True)]
visualizer = dict(vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
