# Demo schedule for CPU: a short poly schedule (200 iterations; 600 until 2026-12-03, so
# that a comparison over 3 seeds fits in about an hour), validation (mIoU) and a checkpoint
# at the end, gloo as the backend of multi-process CPU runs; sn_mm imported. SN parameters
# (gamma, beta, importance logits) get no weight decay; sn_decay_mult touches SN layers
# only, so the SyncBN and GN demos keep the same optimizer as the SN ones.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)
max_iters = 200
optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0005)
# sn_lr_mult: the SN importance logits train at 30x lr (at 1x they stay near 1/3 in a
# demo's few hundred iterations; sweep in docs/learning_the_choice.md). No effect on
# configs without SN.
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None,
                     constructor='SNOptimWrapperConstructor',
                     paramwise_cfg=dict(sn_decay_mult=0.0, sn_lr_mult=30.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=17, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=17, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    exact_resume=dict(type='ExactResumeHook'))  # exact --resume (RNG states in checkpoints)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
# SN share trajectories to vis_data/scalars.json and TensorBoard (configs without SN log
# nothing); `tools/analyze_sn.py --trajectories WORK_DIR` plots them.
custom_hooks = [dict(type='SNRatioHook', interval=25, skip_without_sn=True)]
visualizer = dict(vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
