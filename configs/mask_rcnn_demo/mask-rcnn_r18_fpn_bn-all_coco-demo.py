# BN everywhere, statistics of the per-GPU batch (2 images; RoI heads: the sampled RoIs):
# the base config as it is. Trained from scratch, so BN is trained, not frozen.
_base_ = './_base_/mask-rcnn_r18_fpn_coco-demo.py'
