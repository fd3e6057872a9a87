# Mask R-CNN R50-FPN baseline: frozen BN backbone (statistics and affine parameters fixed
# at their torchvision://resnet50 ImageNet values), no normalization in FPN and heads
# (mmdet's Shared2FC box head): the paper's "BN(frozen)/-" row, 38.6 box AP / 34.2 mask AP.
# mmdet's mask-rcnn_r50_fpn_2x_coco.py with requires_grad=False (mmdet: norm_eval=True only).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py'
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)
# exact --resume: checkpoints carry the RNG states (sn_mm.engine.exact_resume_hook)
default_hooks = dict(exact_resume=dict(type='ExactResumeHook'))
model = dict(backbone=dict(norm_cfg=dict(type='BN', requires_grad=False)))
optim_wrapper = dict(constructor='SNOptimWrapperConstructor', paramwise_cfg=dict(sn_decay_mult=0.0))
