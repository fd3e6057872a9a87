# Mask R-CNN R50-FPN, Exemplar Normalization (EN, Zhang et al. CVPR 2020) everywhere:
# mask-rcnn_r50_fpn_sn-all_2x_coco.py with every SN layer replaced by EN (per-image
# importance ratios from a small ratio network; sn_mm.ops.exemplar_norm, docs/en.md).
# Same schedule, batch and SN ImageNet checkpoint: its conv weights and the SN layers'
# weight/bias/running statistics load into the EN layers (the official (1, C, 1, 1) layout
# is reshaped); the SN logits (mean_weight/var_weight) have no EN counterpart, and the
# ratio networks start at the uniform mixture, SN's initial one. EN parameters get no
# weight decay (sn_decay_mult=0.0 applies to EN layers too).
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'
norm_cfg = dict(type='EN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), neck=dict(norm_cfg=norm_cfg),
             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
