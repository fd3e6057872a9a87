# The one place that names the pretrained SN backbone of the COCO and Cityscapes/ADE20K
# configs: an SN ResNet-50v1 ImageNet checkpoint in the official layout (SN(8,32),
# top-1 76.9; keys `module.*`, SN weights shaped (1,C,1,1), logits (3,); sn_mm loads that
# layout directly). Download it from the official Switchable-Normalization model zoo and
# save it here, relative to the directory you run tools/train.py from, or override it:
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/checkpoint.pth
# (docs/checkpoints.md: layouts, conversion, using_bn=False checkpoints).
sn_imagenet_checkpoint = 'data/pretrained/resnet50v1_sn_8x32.pth'
