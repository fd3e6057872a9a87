# Exemplar Normalization (EN, Zhang et al. CVPR 2020) everywhere: the SN/SN demo config
# (mask-rcnn_r18_fpn_sn-all_coco-demo.py) with every SN layer replaced by EN (per-image
# importance ratios from a small ratio network; sn_mm.ops.exemplar_norm, docs/en.md), as
# configs/mask_rcnn/mask-rcnn_r50_fpn_en-all_2x_coco.py does for the R50 config.
# Optimizer (inherited SNOptimWrapperConstructor): no weight decay on any EN parameter
# (weight, bias and the ratio network; sn_decay_mult=0.0); sn_lr_mult=30 applies to
# EN's ratio network (reduce_weight, ratio_weight, ratio_bias), as to SN's logits.
# SNRatioHook (inherited, skip_without_sn=True) logs SN layers only: nothing for this model;
# `tools/analyze_sn.py --en-ratios CONFIG CKPT` shows the per-image ratios.
_base_ = './mask-rcnn_r18_fpn_sn-all_coco-demo.py'
norm_cfg = dict(type='EN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), neck=dict(norm_cfg=norm_cfg),
             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
