# DeepLabV3+ R18-D8 from scratch, Sparse SN (SSN: sparsestmax importances) everywhere, on the
# built-in cityscapes-layout demo data. The SN demo config with norm_cfg type SSN and the
# radius schedule (0 -> 1 over the run); by the end every layer uses one normalizer and
# `python tools/deploy_sn.py` turns the checkpoint into plain BN/GN layers (docs/ssn.md).
_base_ = './deeplabv3plus_r18-d8-sn_demo-cityscapes.py'
norm_cfg = dict(type='SSN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
# custom_hooks replaces the base list: keep its SNRatioHook (share trajectories), add the radius
custom_hooks = [dict(type='SNRatioHook', interval=25, skip_without_sn=True),
                dict(type='SSNRadiusHook', log_interval=20)]
