# DeepLabV3 with a half-width ResNet-18 (V1c stem, base_channels=32: stage widths
# 32/64/128/256) D8 backbone trained from scratch, sized for the CPU demo. The norm layers
# are chosen by the leaf configs (model.backbone/decode_head/auxiliary_head.norm_cfg):
# mmseg's base substitutes its own norm_cfg (SyncBN) when parsed.
_base_ = 'mmseg::_base_/models/deeplabv3_r50-d8.py'
model = dict(
    data_preprocessor=dict(size=(128, 128)),
    pretrained=None,
    # zero_init_residual=False (mmseg's default is True), as in the detection demo: with
    # gamma = 0 at the start the SN logits of every residual branch get no gradient and
    # stay at 1/3; every normalizer's row starts from the same non-zero init.
    backbone=dict(depth=18, stem_channels=32, base_channels=32, zero_init_residual=False),
    decode_head=dict(in_channels=256, channels=64, dilations=(1, 3, 6, 9)),
    auxiliary_head=dict(in_channels=128, channels=32))
