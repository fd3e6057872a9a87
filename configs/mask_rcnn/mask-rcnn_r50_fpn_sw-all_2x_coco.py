# Mask R-CNN R50-FPN, Switchable Whitening (SW, Pan et al. ICCV 2019) everywhere: backbone,
# FPN, Shared4Conv1FC box head and mask head. mask-rcnn_r50_fpn_sn-all_2x_coco.py with another
# norm_cfg: the authors' ImageNet setting, BW+IW (sw_type=2) over groups of 16 channels with 5
# Newton iterations (docs/sw.md). With 2 images per GPU the BW branch averages over that batch;
# norm_cfg=dict(type='SyncSW', ...) takes the union batch of all GPUs.
# The backbone's convs start from torchvision's BN ResNet-50 (its BN tensors have no SW
# counterpart and are skipped): the SN checkpoint of the sibling was trained with SN layers.
# The authors' SW ImageNet checkpoint has another layout (SW only in the stem and in every
# other bottleneck of stages 1-3, BN elsewhere): it loads into type='SWResNet' (docs/sw.md).
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'
norm_cfg = dict(type='SW', sw_type=2, num_pergroup=16, T=5, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg,
                  init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
