# DeepLabV3+ R18-D8 demo, GN (16 groups) everywhere:
# deeplabv3plus_r18-d8-sn_demo-ade20k.py with another norm_cfg.
_base_ = './deeplabv3plus_r18-d8-sn_demo-ade20k.py'
norm_cfg = dict(type='GN', num_groups=16, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
