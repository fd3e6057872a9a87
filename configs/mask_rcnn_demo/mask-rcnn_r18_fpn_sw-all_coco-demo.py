# Switchable Whitening (SW, Pan et al. ICCV 2019) everywhere: the SN/SN demo config
# (mask-rcnn_r18_fpn_sn-all_coco-demo.py) with another norm_cfg, the SW setting of
# configs/mask_rcnn/mask-rcnn_r50_fpn_sw-all_2x_coco.py: BW+IW (sw_type=2), groups of 16
# channels, 5 Newton iterations (docs/sw.md). 16 divides every normalized width of the
# half-width model (32/64/128/256 in the backbone, 64 in the FPN and both heads).
# Optimizer (inherited SNOptimWrapperConstructor): no weight decay on any SW parameter
# (sn_decay_mult=0.0), and the SW importance logits sw_mean_weight/sw_var_weight train at
# sn_lr_mult=30x lr like SN's logits; weight/bias at the base lr.
# SNRatioHook (inherited, skip_without_sn=True) logs SN layers only: nothing for this model.
_base_ = './mask-rcnn_r18_fpn_sn-all_coco-demo.py'
norm_cfg = dict(type='SW', sw_type=2, num_pergroup=16, T=5, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), neck=dict(norm_cfg=norm_cfg),
             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
