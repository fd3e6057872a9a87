# DeepLabV3+ with a half-width ResNet-18 (V1c stem, base_channels=32: stage widths
# 32/64/128/256) D8 backbone trained from scratch, sized for the CPU demo. The norm layers
# are chosen by the leaf configs. c1_channels=16 so that GN(num_groups=16) divides every
# normalized width (the depthwise conv of sep_bottleneck sees channels + c1_channels = 80).
_base_ = 'mmseg::_base_/models/deeplabv3plus_r50-d8.py'
model = dict(
    data_preprocessor=dict(size=(128, 128)),
    pretrained=None,
    # zero_init_residual=False (mmseg's default is True), as in the detection demo: with
    # gamma = 0 at the start the SN logits of every residual branch get no gradient and
    # stay at 1/3; every normalizer's row starts from the same non-zero init.
    backbone=dict(depth=18, stem_channels=32, base_channels=32, zero_init_residual=False),
    decode_head=dict(
        in_channels=256, channels=64, c1_in_channels=32, c1_channels=16,
        dilations=(1, 3, 6, 9)),
    auxiliary_head=dict(in_channels=128, channels=32))
