"""SW in OpenMMLab: the registry, the SW authors' ResNet layout (SWResNet) and their ImageNet
checkpoint layout, the optimizer constructor and norm_eval inside an mmdet ResNet."""
import pytest
import torch
from torch.testing import assert_close

import sn_mm  # noqa: F401  (registrations)
from sn_mm.ops import SwitchableWhitening, SyncSwitchableWhitening
from sn_mm.sw_checkpoint import load_official_sw, official_sw_to_mmengine, sw_layout
from tests.resnet_layout import norm_name, resnet50_state

mmcv_cnn = pytest.importorskip('mmcv.cnn')


@pytest.mark.parametrize('type_name,cls', [('SW', SwitchableWhitening),
                                           ('SyncSW', SyncSwitchableWhitening)])
def test_norm_cfg_builds_sw(type_name, cls):
    name, layer = mmcv_cnn.build_norm_layer(
        dict(type=type_name, sw_type=5, num_pergroup=8, T=3, requires_grad=False), 32, postfix=2)
    assert name == 'sw2' and type(layer) is cls
    assert (layer.sw_type, layer.num_pergroup, layer.T) == (5, 8, 3)
    assert not any(p.requires_grad for p in layer.parameters())
    with pytest.raises(ValueError,
                       match=r'num_features \(24\) must be divisible by num_pergroup \(16\)'):
        mmcv_cnn.build_norm_layer(dict(type='SW'), 24)


def _authors_resnet50_state(sw_type=2, seed=0):
    """A checkpoint in the SW authors' ResNet-50 layout (random values), written from their
    published layout: ``module.`` keys, ``sw1`` stem, ``layerK.J.sw2`` for odd J of stages
    1-3, BN elsewhere, ``fc``."""
    gen = torch.Generator().manual_seed(seed)

    def bn(state, p, c):
        state[f'{p}.weight'] = torch.rand(c, generator=gen) + 0.5
        state[f'{p}.bias'] = torch.randn(c, generator=gen)
        state[f'{p}.running_mean'] = torch.randn(c, generator=gen)
        state[f'{p}.running_var'] = torch.rand(c, generator=gen) + 0.5
        state[f'{p}.num_batches_tracked'] = torch.tensor(100)

    def sw(state, p, c, g=16):
        state[f'{p}.sw_mean_weight'] = torch.randn(sw_type, generator=gen)
        state[f'{p}.sw_var_weight'] = torch.randn(sw_type, generator=gen)
        state[f'{p}.weight'] = torch.rand(c, generator=gen) + 0.5
        state[f'{p}.bias'] = torch.randn(c, generator=gen)
        state[f'{p}.running_mean'] = torch.randn(c // g, g, 1, generator=gen)
        a = torch.randn(c // g, g, g, generator=gen)
        state[f'{p}.running_cov'] = a @ a.transpose(1, 2) / g + torch.eye(g)

    def norm(state, parent, index, c, stage, block):
        if stage == 0 or (index == 2 and stage < 4 and block % 2 == 1):
            sw(state, norm_name(parent, index, 'sw'), c)
        else:
            bn(state, norm_name(parent, index, 'bn'), c)

    state = resnet50_state(gen, norm)
    return dict(state_dict={f'module.{k}': v for k, v in state.items()}, epoch=100,
                arch='resnet50', prec1=77.93, prec5=93.96)


def _swresnet(**kw):
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    return MODELS.build(dict(type='SWResNet', depth=50, norm_cfg=dict(type='BN'),
                             norm_eval=False, **kw))


def test_authors_checkpoint_loads_into_swresnet_every_tensor():
    ckpt = _authors_resnet50_state()
    layout = sw_layout(official_sw_to_mmengine(ckpt))
    assert len(layout) == 1 + 1 + 2 + 3  # stem, stages 1-3: blocks 1 | 1, 3 | 1, 3, 5
    assert all(v == dict(sw_type=2, num_pergroup=16, tie_weight=False) for v in layout.values())
    backbone = _swresnet()
    load_official_sw(backbone, ckpt)
    state = backbone.state_dict()
    expected = {k[len('module.'):]: v for k, v in ckpt['state_dict'].items()
                if not k.startswith('module.fc.')}
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert_close(state[k], v, rtol=0, atol=0, msg=k)
    assert isinstance(backbone.sw1, SwitchableWhitening) and backbone.norm1 is backbone.sw1
    assert isinstance(backbone.layer2[3].norm2, SwitchableWhitening)
    assert not isinstance(backbone.layer4[1].norm2, SwitchableWhitening)
    backbone.eval()
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert len(outs) == 4 and all(torch.isfinite(o).all() for o in outs)


def test_pretrained_init_cfg_loads_the_authors_file(tmp_path):
    ckpt = _authors_resnet50_state(seed=3)
    path = tmp_path / 'resnet50_sw.pth'
    torch.save(ckpt, path)
    backbone = _swresnet(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    assert_close(backbone.layer3[5].sw2.running_cov,
                 ckpt['state_dict']['module.layer3.5.sw2.running_cov'], rtol=0, atol=0)


def test_mismatched_layouts_are_named():
    ckpt = _authors_resnet50_state(sw_type=5)
    with pytest.raises(ValueError, match=r"sw1: checkpoint \{'sw_type': 5.*model \{'sw_type': 2"):
        load_official_sw(_swresnet(), ckpt)
    with pytest.raises(ValueError, match=r"only in the checkpoint: \['layer3.1.sw2'"):
        load_official_sw(_swresnet(stage_with_sw=(True, True, False, False),
                                   sw_cfg=dict(type='SW', sw_type=5)), ckpt)
    bad = _authors_resnet50_state()
    bad['state_dict']['module.sw1.running_cov'] = torch.zeros(4, 16, 8)
    with pytest.raises(ValueError, match=r"SW layer 'sw1' has inconsistent shapes"):
        official_sw_to_mmengine(bad)
    with pytest.raises(ValueError, match='no SW layer'):
        official_sw_to_mmengine({'module.conv1.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='deep_stem must be False'):
        _swresnet(deep_stem=True)


def test_sw_parameters_follow_sn_decay_mult_and_norm_eval():
    from mmdet.models.backbones import ResNet
    from mmengine.optim import build_optim_wrapper
    model = ResNet(18, norm_cfg=dict(type='SW', num_pergroup=16), norm_eval=False)
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
        constructor='SNOptimWrapperConstructor',
        paramwise_cfg=dict(sn_decay_mult=0.0, sn_lr_mult=2.0)))
    sw_params = {id(p): n for m in model.modules() if isinstance(m, SwitchableWhitening)
                 for n, p in m.named_parameters()}
    seen = 0
    for group in wrapper.optimizer.param_groups:
        name = sw_params.get(id(group['params'][0]))
        if name is None:
            assert group['lr'] == 0.1
            continue
        seen += 1
        assert group['weight_decay'] == 0.0, name
        assert group['lr'] == (0.2 if name.startswith('sw_') else 0.1), name
    assert seen == 4 * (1 + 2 * 8 + 3)  # stem, 2 per basic block, 3 downsamples; 4 tensors
    frozen = ResNet(18, norm_cfg=dict(type='SW', num_pergroup=16), norm_eval=True)
    frozen.train()
    sw_layers = [m for m in frozen.modules() if isinstance(m, SwitchableWhitening)]
    assert sw_layers and all(not m.training for m in sw_layers)
    assert all(not m.sw_mean_weight.requires_grad for m in sw_layers)


def test_to_fixed_norms_folds_an_sw_resnet_and_keeps_its_outputs():
    from mmdet.models.backbones import ResNet
    from sn_mm.deploy import apply_plan, to_fixed_norms
    torch.manual_seed(0)
    model = ResNet(18, norm_cfg=dict(type='SW', sw_type=1, num_pergroup=16), norm_eval=False)
    model.train()
    for _ in range(3):  # running statistics
        model(torch.randn(4, 3, 64, 64))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SwitchableWhitening):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    conversion = to_fixed_norms(model)
    report = conversion.layers
    assert len(report) == 1 + 2 * 8 + 3
    assert all(r.became.startswith('SW map folded into') for r in report), report
    converted = conversion.model
    assert not any(isinstance(m, SwitchableWhitening) for m in converted.modules())
    for a, b in zip(converted(x), expected):
        assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the plan rebuilds the structure from the config (tools/deploy_sn.py's FixedNormModel)
    rebuilt = apply_plan(ResNet(18, norm_cfg=dict(type='SW', sw_type=1, num_pergroup=16)),
                         **conversion.plan)
    rebuilt.load_state_dict(converted.state_dict())
    rebuilt.eval()  # mmdet's ResNet.train() returns None
    for a, b in zip(rebuilt(x), expected):
        assert_close(a, b, rtol=1e-4, atol=1e-4)
    mixed = ResNet(18, norm_cfg=dict(type='SW', sw_type=2, num_pergroup=16))
    with pytest.raises(ValueError, match=r"layer 'conv1'|layer 'norm1'|depends on the sample"):
        to_fixed_norms(mixed)
