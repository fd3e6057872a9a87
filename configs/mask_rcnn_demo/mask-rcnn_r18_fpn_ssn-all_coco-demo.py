# Sparse SN (SSN: sparsestmax importances) everywhere: the SN/SN demo config with norm_cfg
# type SSN and the radius schedule (0 -> 1 over the run). By the end every layer uses one
# normalizer and `python tools/deploy_sn.py` turns the checkpoint into plain BN/GN layers
# (docs/ssn.md).
_base_ = './mask-rcnn_r18_fpn_sn-all_coco-demo.py'
norm_cfg = dict(type='SSN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
# custom_hooks replaces the base list: keep its SNRatioHook (share trajectories), add the radius
custom_hooks = [dict(type='SNRatioHook', interval=50, skip_without_sn=True),
                dict(type='SSNRadiusHook', log_interval=20)]
