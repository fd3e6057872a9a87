# DeepLabV3+ R18-D8 from scratch, Exemplar Normalization (EN, Zhang et al. CVPR 2020)
# everywhere, on the built-in cityscapes-layout demo data: the SN demo config
# deeplabv3plus_r18-d8-sn_demo-cityscapes.py with every SN layer replaced by EN (per-image
# importance ratios; sn_mm.ops.exemplar_norm, docs/en.md), as the full-size
# configs/deeplabv3plus/*-en_* do.
# Optimizer (inherited SNOptimWrapperConstructor): no weight decay on any EN parameter (weight,
# bias and the ratio network; sn_decay_mult=0.0); sn_lr_mult=30 applies to
# EN's ratio network (reduce_weight, ratio_weight, ratio_bias), as to SN's logits.
# SNRatioHook (inherited, skip_without_sn=True) logs SN layers only: nothing for this model;
# `tools/analyze_sn.py --en-ratios CONFIG CKPT` shows the per-image ratios.
_base_ = './deeplabv3plus_r18-d8-sn_demo-cityscapes.py'
norm_cfg = dict(type='EN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
