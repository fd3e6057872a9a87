"""Every segmentation config: parses, builds with the intended norm layer on every norm
path (mmseg's base-config norm_cfg trap), SN parameters without weight decay, datasets are
mmseg's own classes, and one training step runs at a small size."""
import glob
import math
import os.path as osp
import re

import pytest
import torch
from mmcv.cnn import ConvModule, DepthwiseSeparableConvModule
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmengine.utils.dl_utils.parrots_wrapper import SyncBatchNorm  # what 'SyncBN' builds
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.testing import assert_close

import sn_mm  # noqa: F401
from sn_mm.ops import (SparseSwitchableNorm, SwitchableNorm, SwitchableWhitening,
                       SyncSwitchableNorm)
from sn_mm.ops.exemplar_norm import ExemplarNorm
from tests.resnet_layout import norm_name, resnet50_state

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
REAL_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'deeplabv3', '*.py'))
                      + glob.glob(osp.join(ROOT, 'configs', 'deeplabv3plus', '*.py')))
DEMO_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'seg_demo', '*.py')))
ALL_CONFIGS = REAL_CONFIGS + DEMO_CONFIGS
NORM_TYPES = {'sn': SwitchableNorm, 'syncsn': SyncSwitchableNorm, 'ssn': SparseSwitchableNorm,
              'syncbn': SyncBatchNorm, 'sw': SwitchableWhitening,
              'gn': nn.GroupNorm, 'en': ExemplarNorm}
SN_TYPES = ('sn', 'syncsn', 'ssn', 'sw', 'en')  # no weight decay on their parameters


def _norm_key(path):
    """The normalizer named in the file name: ``..._r50-d8-<norm>[-in1k-official]_...``."""
    match = re.search(r'-d8-(sn|syncsn|ssn|syncbn|gn|sw|en)(-in1k-official)?_', osp.basename(path))
    assert match, f'config name {osp.basename(path)} does not name its normalizer'
    return match.group(1)


def _ids(paths):
    return [osp.relpath(p, osp.join(ROOT, 'configs')) for p in paths]


def test_config_set_is_complete():
    names = {osp.relpath(p, osp.join(ROOT, 'configs')) for p in ALL_CONFIGS}
    for model in ('deeplabv3', 'deeplabv3plus'):
        for schedule in ('4xb2-80k_cityscapes-512x1024', '4xb4-160k_ade20k-512x512'):
            for norm in ('sn', 'syncsn', 'syncbn', 'gn', 'sn-in1k-official', 'sw', 'en'):
                assert f'{model}/{model}_r50-d8-{norm}_{schedule}.py' in names
        for layout in ('cityscapes', 'ade20k'):
            for norm in ('sn', 'syncsn', 'syncbn', 'gn', 'ssn', 'sw', 'en'):
                assert f'seg_demo/{model}_r18-d8-{norm}_demo-{layout}.py' in names


def _norm_layers(model):
    kinds = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, _InstanceNorm, SwitchableNorm,
             SwitchableWhitening, ExemplarNorm)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def _check_norm_paths(model, expected):
    norms = _norm_layers(model)
    wrong = [(n, type(m).__name__) for n, m in norms if type(m) is not expected]
    assert not wrong, f'norm layers that are not {expected.__name__}: {wrong[:5]}'
    conv_modules = [m for m in model.modules() if isinstance(m, ConvModule)]
    assert conv_modules and all(m.with_norm and type(m.norm) is expected for m in conv_modules)
    head = model.decode_head
    assert type(head.image_pool[1].norm) is expected  # the 1x1 image-pooling branch
    separable = [m for m in model.modules() if isinstance(m, DepthwiseSeparableConvModule)]
    if type(head).__name__ == 'DepthwiseSeparableASPPHead':
        assert len(separable) == len(head.dilations) - 1 + 2
        for m in separable:
            assert type(m.depthwise_conv.norm) is expected
            assert type(m.pointwise_conv.norm) is expected
    else:
        assert not separable
    return norms


def _small_batch(num_images, size, num_classes, seed=0):
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(num_images):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8))
        sample = SegDataSample()
        labels = torch.randint(0, num_classes, (1, size, size), generator=gen)
        labels[:, :2] = 255  # some ignored pixels
        sample.gt_sem_seg = PixelData(data=labels)
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                                 pad_shape=(size, size)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=_ids(ALL_CONFIGS))
def test_config_builds_and_trains_one_step(path):
    from mmseg.registry import DATASETS, MODELS
    key = _norm_key(path)
    expected = NORM_TYPES[key]
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['sn_mm'], allow_failed_imports=False)
    assert cfg.default_scope == 'mmseg'
    assert cfg.model.backbone.norm_eval is False
    demo = path in DEMO_CONFIGS
    layout = 'cityscapes' if 'cityscapes' in osp.basename(path) else 'ade20k'
    num_classes = 19 if layout == 'cityscapes' else 150
    assert cfg.model.decode_head.num_classes == num_classes
    assert cfg.model.auxiliary_head.num_classes == num_classes
    dataset_type = 'CityscapesDataset' if layout == 'cityscapes' else 'ADE20KDataset'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.type == dataset_type  # mmseg's own class
    assert cfg.val_evaluator.type == 'IoUMetric'
    if demo:
        assert cfg.train_dataloader.dataset.data_root == f'data/seg_demo/{layout}/'
        assert cfg.train_dataloader.batch_size >= 2  # SN's BN branch on 1x1 image pooling
        assert cfg.model.backbone.depth == 18 and cfg.model.pretrained is None
    if key in SN_TYPES:
        assert cfg.optim_wrapper.constructor == 'SNOptimWrapperConstructor'
        assert cfg.optim_wrapper.paramwise_cfg.sn_decay_mult == 0.0  # sn_lr_mult: test_sn_lr_mult
    if 'in1k-official' in path:
        assert cfg.model.backbone.type == 'ResNet' and cfg.model.pretrained is None
        assert cfg.model.backbone.init_cfg.type == 'Pretrained'
        assert cfg.model.backbone.strides == (1, 2, 1, 1)
        assert cfg.model.backbone.dilations == (1, 1, 2, 4)

    size = 64 if not demo else 96
    cfg.model.data_preprocessor.size = (size, size)
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = DATASETS.build(dict(cfg.train_dataloader.dataset, lazy_init=True))
        assert len(dataset.pipeline.transforms) == len(cfg.train_dataloader.dataset.pipeline)
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
    if 'in1k-official' in path:
        stem = model.backbone
        assert stem.conv1.kernel_size == (7, 7) and not stem.deep_stem
    norms = _check_norm_paths(model, expected)
    if key == 'syncbn':
        model = revert_sync_batchnorm(model)  # what the Runner does without distribution
    model.train()

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    decay = {id(p): g['weight_decay'] for g in optim_wrapper.optimizer.param_groups
             for p in g['params']}
    for name, layer in norms:
        for pname, p in layer.named_parameters():
            want = 0.0 if key in SN_TYPES else base_wd
            assert decay[id(p)] == want, f'{name}.{pname}: weight decay {decay[id(p)]} != {want}'
    assert decay[id(model.decode_head.conv_seg.weight)] == base_wd

    sn_layers = [m for _, m in norms if isinstance(m, SwitchableNorm)]
    before = [m.mean_weight.detach().clone() for m in sn_layers]
    running = [m.running_mean.clone() for m in sn_layers]
    en_layers = [m for _, m in norms if isinstance(m, ExemplarNorm)]
    en_before = [m.ratio_weight.detach().clone() for m in en_layers]
    sw_layers = [m for _, m in norms if isinstance(m, SwitchableWhitening)]
    sw_before = [(m.sw_mean_weight.detach().clone(), m.sw_var_weight.detach().clone(),
                  m.running_cov.clone()) for m in sw_layers]
    log = model.train_step(_small_batch(2, size, num_classes), optim_wrapper)
    loss = float(log['loss'].detach())
    assert math.isfinite(loss) and loss > 0
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(log)
    for m, b, r in zip(sn_layers, before, running):
        assert torch.isfinite(m.mean_weight).all()
        assert not torch.equal(m.mean_weight, b)  # importance logits are trained
        assert not torch.equal(m.running_mean, r)  # BN-branch statistics are tracked
    for m, b in zip(en_layers, en_before):
        assert not torch.equal(m.ratio_weight, b)  # EN's ratio networks are trained
    for m, (mean_w, var_w, cov) in zip(sw_layers, sw_before):
        assert not torch.equal(m.running_cov, cov)  # BW statistics are tracked
        if demo:  # from scratch, zero_init_residual=False: every layer's logits get a gradient
            assert not torch.equal(m.sw_mean_weight, mean_w)  # SW's logits are trained
            assert not torch.equal(m.sw_var_weight, var_w)


def _official_sn_resnet50_state(seed=0):
    """An official-layout SN ResNet-50v1 checkpoint (layout only, random values).

    Written from the published layout, independently of mmseg's module names:
    ``module.`` prefix, 7x7 stem ``conv1``/``sn1``, bottlenecks ``layer{i}.{j}.conv{1,2,3}``
    / ``sn{1,2,3}``, ``downsample.{0,1}``, ``fc``; SN weight/bias (1,C,1,1), running
    statistics (1,C,1), 3 importance logits.
    """
    gen = torch.Generator().manual_seed(seed)

    def sn(state, parent, index, c, stage, block):
        prefix = norm_name(parent, index, 'sn')
        state[f'{prefix}.weight'] = torch.rand(1, c, 1, 1, generator=gen) + 0.5
        state[f'{prefix}.bias'] = torch.randn(1, c, 1, 1, generator=gen)
        state[f'{prefix}.mean_weight'] = torch.randn(3, generator=gen)
        state[f'{prefix}.var_weight'] = torch.randn(3, generator=gen)
        state[f'{prefix}.running_mean'] = torch.randn(1, c, 1, generator=gen)
        state[f'{prefix}.running_var'] = torch.rand(1, c, 1, generator=gen) + 0.5

    state = resnet50_state(gen, sn)
    return {f'module.{k}': v for k, v in state.items()}


@pytest.mark.parametrize('name', [
    'deeplabv3/deeplabv3_r50-d8-sn-in1k-official_4xb4-160k_ade20k-512x512.py',
    'deeplabv3plus/deeplabv3plus_r50-d8-sn-in1k-official_4xb2-80k_cityscapes-512x1024.py'])
def test_official_sn_checkpoint_initialises_the_whole_backbone(name, tmp_path):
    from mmseg.registry import MODELS
    official = _official_sn_resnet50_state()
    ckpt = tmp_path / 'resnet50v1_sn.pth'
    torch.save(dict(state_dict=official, epoch=100, best_prec1=76.92), ckpt)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    cfg.model.backbone.init_cfg.checkpoint = str(ckpt)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    backbone = dict(model.backbone.state_dict())
    backbone = {k: v for k, v in backbone.items() if not k.endswith('num_batches_tracked')}
    expected = {k[len('module.'):]: v for k, v in official.items()
                if not k.startswith('module.fc.')}
    assert set(backbone) == set(expected)  # every backbone tensor comes from the file
    for k, v in expected.items():
        assert_close(backbone[k], v.reshape(backbone[k].shape), rtol=0, atol=0, msg=k)


def test_bn_imagenet_weights_initialise_the_convs_of_sn_configs(tmp_path):
    """The SN configs keep mmseg's BN-trained ``open-mmlab://resnet50_v1c`` backbone, as an
    explicit partial load (``partial=True``): its conv weights load, the SN layers (no counterpart for ``bn``/``stem.1`` keys) keep
    their initial values. Simulated with a local BN ResNetV1c-50 file of the same layout."""
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        bn_backbone = MODELS.build(dict(type='ResNetV1c', depth=50, norm_cfg=dict(type='BN')))
    bn_state = {k: torch.randn_like(v) if v.is_floating_point() else v
                for k, v in bn_backbone.state_dict().items()}
    ckpt = tmp_path / 'resnet50_v1c_bn.pth'
    torch.save(dict(state_dict=bn_state), ckpt)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'deeplabv3',
                                   'deeplabv3_r50-d8-sn_4xb4-160k_ade20k-512x512.py'))
    assert cfg.model.pretrained is None  # explicit partial load of mmseg's BN ResNetV1c
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', partial=True,
                                               checkpoint='open-mmlab://resnet50_v1c')
    cfg.model.backbone.init_cfg.checkpoint = str(ckpt)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    state = model.backbone.state_dict()
    convs = [k for k in bn_state if k.endswith('.weight') and bn_state[k].dim() == 4]
    assert len(convs) == 3 + 16 * 3 + 4  # deep stem, 16 bottlenecks, 4 downsample convs
    for k in convs:
        assert_close(state[k], bn_state[k], rtol=0, atol=0, msg=k)
    for name, m in model.backbone.named_modules():
        if isinstance(m, SwitchableNorm):
            assert torch.equal(m.mean_weight, torch.ones(3)), name  # official init (uniform)
