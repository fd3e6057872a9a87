# DeepLabV3+ R18-D8 demo, SyncSN everywhere (BN-branch moments over all processes; equals SN on
# one process): deeplabv3plus_r18-d8-sn_demo-ade20k.py with another norm_cfg.
_base_ = './deeplabv3plus_r18-d8-sn_demo-ade20k.py'
norm_cfg = dict(type='SyncSN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
