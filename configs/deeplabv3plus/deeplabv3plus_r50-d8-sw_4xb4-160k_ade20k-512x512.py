# deeplabv3plus R50-D8 with Switchable Whitening (SW, Pan et al. ICCV 2019) everywhere:
# deeplabv3plus_r50-d8-sn_4xb4-160k_ade20k-512x512.py with another norm_cfg (the authors' BW+IW,
# groups of 16 channels, 5 Newton iterations; docs/sw.md). SW parameters get no weight
# decay, as SN's (inherited SNOptimWrapperConstructor). norm_cfg=dict(type='SyncSW', ...)
# takes the BW moments over all GPUs.
_base_ = './deeplabv3plus_r50-d8-sn_4xb4-160k_ade20k-512x512.py'
norm_cfg = dict(type='SW', sw_type=2, num_pergroup=16, T=5, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
