# DeepLabV3 R50-D8, GN (32 groups) everywhere:
# deeplabv3_r50-d8-sn_4xb2-80k_cityscapes-512x1024.py with another norm_cfg.
_base_ = './deeplabv3_r50-d8-sn_4xb2-80k_cityscapes-512x1024.py'
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
