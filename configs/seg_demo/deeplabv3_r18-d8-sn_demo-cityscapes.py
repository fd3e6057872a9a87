# DeepLabV3 R18-D8 from scratch, SN (Switchable Normalization) everywhere, on the
# built-in cityscapes-layout demo data (tools/make_seg_demo.py). The syncsn/syncbn/gn demos
# are deltas of this one. Every norm path is set: the mmseg base substituted its own.
_base_ = ['./_base_/deeplabv3_r18-d8_demo.py', './_base_/seg_demo_cityscapes.py']
norm_cfg = dict(type='SN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg, num_classes=19),
             auxiliary_head=dict(norm_cfg=norm_cfg, num_classes=19))
