# deeplabv3 R50-D8 with Exemplar Normalization (EN, Zhang et al. CVPR 2020) everywhere: the SN
# sibling deeplabv3_r50-d8-sn_4xb4-160k_ade20k-512x512.py with the normalizer replaced by EN (per-image importance
# ratios; sn_mm.ops.exemplar_norm, docs/en.md). Everything else is the sibling's: schedule,
# pipeline, every norm path, no weight decay on the normalizer's parameters.
_base_ = './deeplabv3_r50-d8-sn_4xb4-160k_ade20k-512x512.py'
norm_cfg = dict(type='EN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
