# DeepLabV3+ R18-D8 from scratch, Switchable Whitening (SW, Pan et al. ICCV 2019) everywhere, on
# the built-in cityscapes-layout demo data: the SN demo config
# deeplabv3plus_r18-d8-sn_demo-cityscapes.py with another norm_cfg, the SW setting of the
# full-size configs (configs/deeplabv3plus/*-sw_*): BW+IW (sw_type=2), groups of 16 channels, 5
# Newton iterations (docs/sw.md). 16 divides every normalized width of the half-width model
# (16/32 in the V1c stem, 32/64/128/256 in the stages, 64 in the ASPP head, 16 in c1_bottleneck,
# 80 = 64 + 16 in the first depthwise separable conv, 32 in the auxiliary head).
# Optimizer (inherited SNOptimWrapperConstructor): no weight decay on any SW parameter
# (sn_decay_mult=0.0), and the SW importance logits sw_mean_weight/sw_var_weight train at
# sn_lr_mult=30x lr like SN's logits; weight/bias at the base lr.
# SNRatioHook (inherited, skip_without_sn=True) logs SN layers only: nothing for this model.
_base_ = './deeplabv3plus_r18-d8-sn_demo-cityscapes.py'
norm_cfg = dict(type='SW', sw_type=2, num_pergroup=16, T=5, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
             auxiliary_head=dict(norm_cfg=norm_cfg))
