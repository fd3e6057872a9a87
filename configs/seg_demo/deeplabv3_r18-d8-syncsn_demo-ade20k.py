# DeepLabV3 R18-D8 from scratch, SyncSN everywhere (BN-branch moments over all processes;
# equals SN on one process),
# on the built-in ade20k-layout demo data (tools/make_seg_demo.py).
_base_ = [
    './_base_/deeplabv3_r18-d8_demo.py', './_base_/seg_demo_ade20k.py',
    './_base_/seg_demo_runtime.py'
]
custom_imports = dict(imports=['sn_mm'], allow_failed_imports=False)
norm_cfg = dict(type='SyncSN', requires_grad=True)
# Set every norm path explicitly: the mmseg base substituted its own norm_cfg.
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    decode_head=dict(norm_cfg=norm_cfg, num_classes=150),
    auxiliary_head=dict(norm_cfg=norm_cfg, num_classes=150))
# SN parameters (gamma, beta, importance logits) without weight decay.
optim_wrapper = dict(
    constructor='SNOptimWrapperConstructor', paramwise_cfg=dict(sn_decay_mult=0.0))
