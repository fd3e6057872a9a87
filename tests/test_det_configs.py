"""Every Mask R-CNN config (configs/mask_rcnn, configs/mask_rcnn_demo) builds mmdet's model
with the intended normalizers, gives SN parameters no weight decay and runs one real
training step (mmdet's data preprocessor, losses and optimizer wrapper) on a small
random batch.

The COCO configs are tested at 128x128 with fewer proposals and sampled RoIs (the
architecture is unchanged): about 2 s per R50 config on 2 idle cores.
"""
import glob
import math
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import sn_mm  # noqa: F401
import sn_mm.datasets
from sn_mm.ops import (SparseSwitchableNorm, SwitchableNorm, SwitchableWhitening,
                       SyncSwitchableNorm)
from sn_mm.ops.exemplar_norm import ExemplarNorm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
COCO_DIR = osp.join(ROOT, 'configs', 'mask_rcnn')
DEMO_DIR = osp.join(ROOT, 'configs', 'mask_rcnn_demo')

# config name -> (backbone normalizer, normalizer of FPN + box head + mask head)
COCO_EXPECTED = {
    'mask-rcnn_r50_fpn_sn-all_2x_coco.py': ('SN', 'SN'),
    'mask-rcnn_r50_fpn_syncsn-all_2x_coco.py': ('SyncSN', 'SyncSN'),
    'mask-rcnn_r50_fpn_gn-all_2x_coco.py': ('GN', 'GN'),
    'mask-rcnn_r50_fpn_syncbn-all_2x_coco.py': ('SyncBN', 'SyncBN'),
    'mask-rcnn_r50_fpn_frozenbn_2x_coco.py': ('FrozenBN', None),
    'mask-rcnn_r50_fpn_frozenbn_sn-head_2x_coco.py': ('FrozenBN', 'SN'),
    'mask-rcnn_r50_fpn_frozenbn_gn-head_2x_coco.py': ('FrozenBN', 'GN'),
    'mask-rcnn_r50_fpn_gn_sn-head_2x_coco.py': ('GN', 'SN'),
    'mask-rcnn_r50_fpn_sw-all_2x_coco.py': ('SW', 'SW'),
    'mask-rcnn_r50_fpn_en-all_2x_coco.py': ('EN', 'EN'),
}
DEMO_EXPECTED = {
    'mask-rcnn_r18_fpn_sn-all_coco-demo.py': ('SN', 'SN'),
    'mask-rcnn_r18_fpn_syncsn-all_coco-demo.py': ('SyncSN', 'SyncSN'),
    'mask-rcnn_r18_fpn_gn-all_coco-demo.py': ('GN', 'GN'),
    'mask-rcnn_r18_fpn_bn-all_coco-demo.py': ('BN', 'BN'),
    'mask-rcnn_r18_fpn_syncbn-all_coco-demo.py': ('SyncBN', 'SyncBN'),
    'mask-rcnn_r18_fpn_bn_sn-head_coco-demo.py': ('BN', 'SN'),
    'mask-rcnn_r18_fpn_bn_gn-head_coco-demo.py': ('BN', 'GN'),
    'mask-rcnn_r18_fpn_gn_sn-head_coco-demo.py': ('GN', 'SN'),
    'mask-rcnn_r18_fpn_ssn-all_coco-demo.py': ('SSN', 'SSN'),
    'mask-rcnn_r18_fpn_sw-all_coco-demo.py': ('SW', 'SW'),
    'mask-rcnn_r18_fpn_en-all_coco-demo.py': ('EN', 'EN'),
}

NORM_CLASSES = {'SN': SwitchableNorm, 'SyncSN': SyncSwitchableNorm, 'SSN': SparseSwitchableNorm,
                'SW': SwitchableWhitening, 'EN': ExemplarNorm,
                'GN': nn.GroupNorm,
                'BN': nn.BatchNorm2d, 'FrozenBN': nn.BatchNorm2d, 'SyncBN': nn.SyncBatchNorm}


# ------------------------------------------------------------------- helpers
def load_cfg(path: str):
    from mmengine.config import Config
    return Config.fromfile(path)


def build_detector(cfg):
    """mmdet model from ``cfg.model`` (no pretrained weights loaded)."""
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return MODELS.build(cfg.model)


def random_det_batch(num_images: int, size: int, num_classes: int, seed: int,
                     empty: Sequence[int] = ()) -> dict:
    """A raw detection batch as mmdet's dataloader yields it (before the preprocessor).

    uint8 (3, size, size) images; 1-3 boxes per image (none for indices in ``empty``)
    with labels in [0, num_classes) and filled-ellipse masks inside the boxes.
    """
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i in range(num_images):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g))
        k = 0 if i in empty else int(torch.randint(1, 4, (1,), generator=g))
        wh = size * (0.15 + 0.35 * torch.rand(k, 2, generator=g))
        xy = (size - wh) * torch.rand(k, 2, generator=g)
        boxes = torch.cat([xy, xy + wh], 1)
        masks = np.zeros((k, size, size), np.uint8)
        yy, xx = np.mgrid[0:size, 0:size]
        for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            masks[j] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        sample = DetDataSample(metainfo=dict(img_id=i, img_shape=(size, size),
                                             ori_shape=(size, size), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=boxes, labels=torch.randint(0, num_classes, (k,), generator=g),
            masks=BitmapMasks(masks, size, size))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def shrink_for_test(cfg, rois: int = 32) -> None:
    """Fewer proposals/sampled RoIs so a COCO-sized head runs fast (architecture kept)."""
    cfg.model.train_cfg.rpn_proposal.nms_pre = 200
    cfg.model.train_cfg.rpn_proposal.max_per_img = 64
    cfg.model.train_cfg.rcnn.sampler.num = rois


def norm_layers(module: nn.Module) -> List[nn.Module]:
    return [m for m in module.modules()
            if isinstance(m, (SwitchableNorm, SwitchableWhitening, ExemplarNorm, nn.GroupNorm,
                              _BatchNorm))]


def norm_kind(layer: nn.Module) -> str:
    from mmengine.model.utils import _BatchNormXd
    if type(layer) is _BatchNormXd:  # what mmengine's revert_sync_batchnorm makes of SyncBN
        return 'SyncBN(reverted)'
    for name in ('SyncSN', 'SN', 'SSN', 'SW', 'EN', 'GN', 'SyncBN', 'BN'):
        if type(layer) is NORM_CLASSES[name]:
            return name
    return type(layer).__name__


def check_parts(model, backbone: str, head: Optional[str]) -> None:
    parts = {'backbone': (model.backbone, backbone), 'neck': (model.neck, head),
             'bbox_head': (model.roi_head.bbox_head, head),
             'mask_head': (model.roi_head.mask_head, head)}
    for part, (module, expected) in parts.items():
        kinds = {norm_kind(m) for m in norm_layers(module)}
        want = set() if expected is None else {'BN' if expected == 'FrozenBN' else expected}
        assert kinds == want, f'{part}: normalizers {kinds}, expected {want}'
    if head is not None:
        assert type(model.roi_head.bbox_head).__name__ == 'Shared4Conv1FCBBoxHead'
        assert len(norm_layers(model.roi_head.bbox_head)) == 4
        assert len(norm_layers(model.roi_head.mask_head)) == 4


def check_weight_decay(model, optim_wrapper, base_wd: float) -> None:
    """SN/SyncSN/SW/EN parameters: decay 0; conv/linear weights: the base decay."""
    owner = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owner[id(p)] = module
    seen_sn = 0
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            module = owner[id(p)]
            if not p.requires_grad:
                continue
            if isinstance(module, (SwitchableNorm, SwitchableWhitening, ExemplarNorm)):
                seen_sn += 1
                assert group['weight_decay'] == 0.0, (module, group['weight_decay'])
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and p.dim() > 1:
                assert group['weight_decay'] == pytest.approx(base_wd)
    num_sn = sum(1 for m in model.modules()
                 if isinstance(m, (SwitchableNorm, SwitchableWhitening, ExemplarNorm))
                 for p in m.parameters() if p.requires_grad)
    assert seen_sn == num_sn


def run_train_step(cfg, size: int, seed: int = 0):
    """Build model + optimizer wrapper from cfg, one train step; returns (model, log_vars)."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    torch.manual_seed(seed)
    model = build_detector(cfg)
    model = revert_sync_batchnorm(model)  # as mmengine's Runner does outside DDP
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    num_classes = cfg.model.roi_head.bbox_head.num_classes
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    log_vars = model.train_step(random_det_batch(2, size, num_classes, seed), optim_wrapper)
    changed = [n for n, p in model.state_dict().items()
               if p.is_floating_point() and not torch.equal(before[n], p)]
    return model, optim_wrapper, log_vars, changed


# -------------------------------------------------------------------- tests
def test_config_lists_are_complete():
    """Every config file is covered (a new config must be added to the tables above)."""
    coco = {osp.basename(p) for p in glob.glob(osp.join(COCO_DIR, '*.py'))}
    demo = {osp.basename(p) for p in glob.glob(osp.join(DEMO_DIR, '*.py'))}
    assert coco == set(COCO_EXPECTED)
    assert demo == set(DEMO_EXPECTED)


@pytest.mark.parametrize('name', sorted(COCO_EXPECTED))
def test_coco_config_settings(name):
    """Paper setting: 2 images/GPU x 8, lr 0.02, 2x with warm-up, sn_mm imported."""
    cfg = load_cfg(osp.join(COCO_DIR, name))
    assert cfg.custom_imports == dict(imports=['sn_mm'], allow_failed_imports=False)
    assert cfg.default_scope == 'mmdet'
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.optim_wrapper.optimizer.lr == 0.02
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
    assert cfg.optim_wrapper.constructor == 'SNOptimWrapperConstructor'
    assert cfg.optim_wrapper.paramwise_cfg.sn_decay_mult == 0.0
    assert cfg.train_cfg.max_epochs == 24
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == 500 and not warmup.by_epoch
    assert steps.type == 'MultiStepLR' and steps.milestones == [16, 22]
    backbone, _ = COCO_EXPECTED[name]
    bb = cfg.model.backbone
    assert bb.depth == 50
    if backbone == 'FrozenBN':
        assert bb.norm_eval is True and bb.norm_cfg.requires_grad is False
    else:
        assert bb.norm_eval is False  # explicit for SN/GN/SyncBN backbones
    ckpt = bb.init_cfg.checkpoint
    if 'SN' in backbone or backbone == 'EN':  # EN starts from the SN checkpoint
        assert ckpt == 'data/pretrained/resnet50v1_sn_8x32.pth'
    elif backbone == 'GN':
        assert ckpt == 'open-mmlab://contrib/resnet50_gn'
    else:
        assert ckpt == 'torchvision://resnet50'
    assert cfg.train_dataloader.dataset.ann_file == 'annotations/instances_train2017.json'


@pytest.mark.parametrize('name', sorted(COCO_EXPECTED))
def test_coco_config_builds_and_trains(name):
    cfg = load_cfg(osp.join(COCO_DIR, name))
    shrink_for_test(cfg)
    backbone, head = COCO_EXPECTED[name]
    model, optim_wrapper, log_vars, changed = run_train_step(cfg, size=128)
    _check_step(model, optim_wrapper, log_vars, changed, backbone, head, frozen_stages=1)


@pytest.mark.parametrize('name', sorted(DEMO_EXPECTED))
def test_demo_config_builds_and_trains(name):
    cfg = load_cfg(osp.join(DEMO_DIR, name))
    assert cfg.custom_imports == dict(imports=['sn_mm'], allow_failed_imports=False)
    assert cfg.model.backbone.norm_eval is False
    assert cfg.model.backbone.init_cfg is None  # trained from scratch
    assert cfg.train_dataloader.dataset.metainfo.classes == sn_mm.datasets.CLASSES
    assert cfg.model.roi_head.bbox_head.num_classes == len(sn_mm.datasets.CLASSES)
    backbone, head = DEMO_EXPECTED[name]
    model, optim_wrapper, log_vars, changed = run_train_step(cfg, size=96)
    _check_step(model, optim_wrapper, log_vars, changed, backbone, head, frozen_stages=-1)


def _check_step(model, optim_wrapper, log_vars, changed, backbone, head, frozen_stages):
    # SyncBN became _BatchNormXd through revert_sync_batchnorm, as in a 1-process Runner
    reverted = {'SyncBN': 'SyncBN(reverted)'}
    check_parts(model, reverted.get(backbone, backbone), reverted.get(head, head))
    check_weight_decay(model, optim_wrapper, base_wd=1e-4)
    for key in ('loss', 'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'):
        assert key in log_vars and math.isfinite(float(log_vars[key])), (key, log_vars)
    assert any(n.startswith('roi_head.mask_head') for n in changed)
    assert 'backbone.layer4.0.conv1.weight' in changed
    bb = model.backbone
    bb_norm_changed = [n for n in changed if n.startswith('backbone.') and
                       any(n.startswith(f'backbone.{name}.') for name, m in bb.named_modules()
                           if m in norm_layers(bb))]
    if backbone == 'FrozenBN':
        # statistics and affine parameters stay at their (ImageNet) values
        assert all(not m.training for m in norm_layers(bb))
        assert not any(p.requires_grad for m in norm_layers(bb) for p in m.parameters())
        assert bb_norm_changed == []
    else:
        assert all(m.training for m in norm_layers(bb.layer2))
        assert 'backbone.layer4.0.' + bb.layer4[0].norm1_name + '.weight' in changed
        if backbone not in ('GN',):  # statistics are tracked
            assert 'backbone.layer4.0.' + bb.layer4[0].norm1_name + '.running_mean' in changed
    if frozen_stages >= 1:
        assert all(not m.training for m in norm_layers(bb.layer1))
        assert not any(n.startswith('backbone.layer1') for n in changed)
    if 'SN' in (head or ''):
        # the importance logits of the heads' SN layers are trained
        assert 'roi_head.mask_head.convs.0.sn.mean_weight' in changed
        assert 'roi_head.bbox_head.shared_convs.0.sn.var_weight' in changed
    if 'SN' in backbone:
        assert 'backbone.layer4.1.sn2.mean_weight' in changed
    if backbone == 'EN':  # the ratio networks are trained
        assert 'backbone.layer4.1.en2.ratio_weight' in changed
        assert 'roi_head.mask_head.convs.0.en.ratio_weight' in changed
    if backbone == 'SW':  # the whitening logits are trained
        assert f'backbone.layer4.1.{bb.layer4[1].norm2_name}.sw_mean_weight' in changed
        mask_norm = model.roi_head.mask_head.convs[0].norm_name
        assert f'roi_head.mask_head.convs.0.{mask_norm}.sw_var_weight' in changed
