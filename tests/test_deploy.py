"""to_fixed_norms on OpenMMLab models: a ResNet-50 backbone, the Mask R-CNN and DeepLabV3
demo models (SSN configs), with every branch choice exercised; converted eval outputs
equal the original's (float32, 1e-5), with the BN choices folded into their convs."""
import copy
import itertools
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope
from torch import nn
from torch.testing import assert_close

import sn_mm  # noqa: F401
from sn_mm.deploy import apply_plan, to_fixed_norms
from sn_mm.ops import SparseSwitchableNorm, SwitchableNorm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CHOICES = list(itertools.product(range(3), repeat=2)) + ['mixture']


def calibrate(model, run):
    """Running statistics = the statistics of one training-mode batch (``run(model)``), as
    training would leave them: eval-mode BN terms then normalize (activations stay O(1))."""
    layers = [m for m in model.modules() if isinstance(m, SparseSwitchableNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 1.0
    model.train()
    with torch.no_grad():
        run(model)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.eval()


def exercise_every_branch(model, seed=0):
    """Random affine parameters; layer i gets CHOICES[i % 10]: frozen one-hot (mean, var)
    branches, or sparsestmax mixtures at radius 0.2."""
    gen = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, SparseSwitchableNorm)]
    assert len(layers) >= len(CHOICES)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            c = layer.num_features
            layer.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            layer.bias.copy_(torch.randn(c, generator=gen) * 0.2)
            layer.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
            layer.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            choice = CHOICES[i % len(CHOICES)]
            if choice == 'mixture':
                layer.mean_weight.copy_(torch.randn(3, generator=gen) * 0.3)
                layer.var_weight.copy_(torch.randn(3, generator=gen) * 0.3)
                layer.set_radius(0.2)
            else:
                for logits, k in zip((layer.mean_weight, layer.var_weight), choice):
                    logits.zero_()
                    logits[k] = 1.0
                layer.freeze_one_hot(torch.tensor(True))
    return layers


def choose(layer, mean_branch, var_branch):
    with torch.no_grad():
        for logits, k in zip((layer.mean_weight, layer.var_weight), (mean_branch, var_branch)):
            logits.zero_()
            logits[k] = 1.0
    layer.freeze_one_hot(torch.tensor(True))


def check(conversion, kinds_at_least=('BatchNorm2d folded', 'SNInstanceNorm', 'BesselLayerNorm',
                                      'FixedMixtureNorm')):
    text = conversion.format()
    for kind in kinds_at_least:
        assert kind in text, kind
    assert not any(isinstance(m, SwitchableNorm) for m in conversion.model.modules())
    measured = [r for r in conversion.layers if r.calls]
    assert measured and max(r.max_deviation for r in measured) < 1e-4


def flat(outputs):
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def assert_converts_exactly(model, run, x, forward_x=None):
    """float64: converted == original to 1e-10 (the conversion itself is exact);
    float32: converted == original to 1e-5, or -- in deep random-weight networks where the
    float32 original is itself farther than that from its float64 evaluation -- to within
    the original's own float32 rounding (3x)."""
    forward_x = x if forward_x is None else forward_x
    model64 = copy.deepcopy(model).double()
    conv64 = to_fixed_norms(model64, forward=lambda m: run(m, forward_x.double())).model
    conv32 = to_fixed_norms(model, forward=lambda m: run(m, forward_x)).model
    with torch.no_grad():
        ref = flat(run(model64, x.double()))
        for a, b in zip(flat(run(conv64, x.double())), ref):
            assert_close(a, b, atol=1e-10, rtol=1e-10)
        worst = 0.0
        for a, b, r in zip(flat(run(conv32, x)), flat(run(model, x)), ref):
            own = float((b.double() - r).abs().max())  # the original's float32 rounding
            dev = float((a - b).abs().max())
            assert dev <= max(1e-5, 3 * own), (dev, own)
            worst = max(worst, dev)
    return worst


@pytest.fixture
def scope():
    """``scope('mmdet')``: that scope as default, its models registered; its MODELS."""
    import importlib

    def use(name):
        importlib.import_module(f'{name}.models')
        init_default_scope(name)
        return importlib.import_module(f'{name}.registry').MODELS
    yield use
    for name in ('mmdet', 'mmseg'):
        DefaultScope._instance_dict.pop(name, None)


def test_resnet50_backbone(scope):
    MODELS = scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(dict(type='ResNet', depth=50, norm_cfg=dict(type='SSN'),
                              norm_eval=False, out_indices=(0, 1, 2, 3)))
    model.eval()  # (mmdet's ResNet.train() returns None: no chaining)
    exercise_every_branch(model)
    choose(model.layer1[0].downsample[1], 2, 2)  # a BN shortcut: Sequential(conv, norm)
    choose(model.sn1, 2, 2)  # the stem's conv1 / sn1
    calibrate(model, lambda m: m(torch.randn(4, 3, 128, 128)))
    x = torch.randn(2, 3, 128, 128)
    conversion = to_fixed_norms(model, forward=lambda m: m(x))
    check(conversion)
    folded = {r.name: r.folded_into for r in conversion.layers if r.folded_into}
    assert folded['layer1.0.downsample.1'] == 'layer1.0.downsample.0'
    assert folded['sn1'] == 'conv1'
    assert {k.rsplit('.', 1)[-1] for k in folded} >= {'sn1', 'sn2', '1'} and len(folded) >= 6
    for inp in (x, torch.randn(1, 3, 72, 104)):  # exact for other sizes too
        assert_converts_exactly(model, lambda m, t: m(t), inp)
    # a fresh model from the same config, given the plan, loads the converted weights
    fresh = MODELS.build(dict(type='ResNet', depth=50, norm_cfg=dict(type='SSN'),
                              norm_eval=False, out_indices=(0, 1, 2, 3)))
    apply_plan(fresh, **conversion.plan)
    fresh.load_state_dict(conversion.model.state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        for a, b in zip(fresh(x), conversion.model(x)):
            assert torch.equal(a, b)


def _demo_model(config, registry):
    cfg = Config.fromfile(osp.join(ROOT, config))
    torch.manual_seed(0)
    model = registry.build(cfg.model)
    model.eval()
    return model


def test_mask_rcnn_demo_model(scope):
    from mmengine.structures import InstanceData
    model = _demo_model('configs/mask_rcnn_demo/mask-rcnn_r18_fpn_ssn-all_coco-demo.py',
                        scope('mmdet'))
    exercise_every_branch(model)
    choose(model.neck.lateral_convs[0].norm, 2, 2)  # mmcv ConvModule pairs
    choose(model.roi_head.mask_head.convs[0].norm, 2, 2)
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(2, 20, 2, generator=gen) * 90
    wh = torch.rand(2, 20, 2, generator=gen) * 30 + 4
    boxes = [torch.cat([xy[i], xy[i] + wh[i]], -1) for i in range(2)]

    def run(m, x):  # backbone + FPN, then the box and mask heads on fixed proposals
        feats = m.extract_feat(x)
        proposals = [InstanceData(bboxes=b.to(x.dtype)) for b in boxes]
        return list(feats) + list(m.roi_head.forward(feats, proposals))

    calibrate(model, lambda m: m.extract_feat(torch.randn(2, 3, 128, 128)))
    x = torch.randn(2, 3, 128, 128)
    conversion = to_fixed_norms(model, forward=lambda m: run(m, x))
    check(conversion)
    assert any(r.name.startswith('roi_head.mask_head') for r in conversion.layers)
    folded = {r.name: r.folded_into for r in conversion.layers}
    assert folded['neck.lateral_convs.0.sn'] == 'neck.lateral_convs.0.conv'
    assert folded['roi_head.mask_head.convs.0.sn'] == 'roi_head.mask_head.convs.0.conv'
    assert_converts_exactly(model, run, x)


def test_deeplabv3_demo_model(scope):
    model = _demo_model('configs/seg_demo/deeplabv3_r18-d8-ssn_demo-ade20k.py', scope('mmseg'))
    layers = exercise_every_branch(model)
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(m)] for m in layers if 'image_pool' in names[id(m)]]  # 1x1 maps

    def run(m, x):
        feats = m.extract_feat(x)
        return [m.decode_head(feats), m.auxiliary_head(feats)]

    calibrate(model, lambda m: run(m, torch.randn(2, 3, 64, 64)))
    x = torch.randn(2, 3, 64, 64)
    check(to_fixed_norms(model, forward=lambda m: run(m, x)))
    assert_converts_exactly(model, run, x)
    # one image: single-sample 1x1 maps in the image pool (torch's GroupNorm refuses them)
    assert_converts_exactly(model, run, torch.randn(1, 3, 48, 64))


def test_model_deviation_flags_structural_differences():
    from sn_mm.deploy.mm import max_abs_difference
    a = [dict(scores=torch.tensor([0.5, 0.25]), labels=torch.tensor([1, 2]))]
    assert max_abs_difference(a, [dict(scores=torch.tensor([0.5, 0.5]),
                                       labels=torch.tensor([1, 2]))]) == 0.25
    assert max_abs_difference(a, [dict(scores=torch.tensor([0.5]),  # one detection fewer
                                       labels=torch.tensor([1]))]) == float('inf')
    assert max_abs_difference(a, [dict(scores=torch.tensor([0.5, 0.25]),
                                       labels=torch.tensor([1, 3]))]) == float('inf')
    assert max_abs_difference('x', 'y') is None
