# DeepLabV3+ R50-D8, GN (16 groups) everywhere:
# deeplabv3plus_r50-d8-sn_4xb4-160k_ade20k-512x512.py with another norm_cfg.
_base_ = './deeplabv3plus_r50-d8-sn_4xb4-160k_ade20k-512x512.py'
norm_cfg = dict(type='GN', num_groups=16, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
