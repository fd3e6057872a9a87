# deeplabv3 R50-D8 with Switchable Whitening (SW, Pan et al. ICCV 2019) everywhere:
# deeplabv3_r50-d8-sn_4xb2-80k_cityscapes-512x1024.py with another norm_cfg (the authors' BW+IW,
# groups of 16 channels, 5 Newton iterations; docs/sw.md). SW parameters get no weight
# decay, as SN's (inherited SNOptimWrapperConstructor). norm_cfg=dict(type='SyncSW', ...)
# takes the BW moments over all GPUs.
_base_ = './deeplabv3_r50-d8-sn_4xb2-80k_cityscapes-512x1024.py'
norm_cfg = dict(type='SW', sw_type=2, num_pergroup=16, T=5, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
