"""paramwise_cfg.sn_lr_mult: the SN importance logits (mean_weight, var_weight) and nothing
else train at lr * sn_lr_mult, in SN and SyncSN models built from the shipped configs;
unknown sn_* keys are errors; custom_keys still win; schedulers keep the ratio."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import sn_mm  # noqa: F401
from sn_mm.engine.optim import LOGIT_NAMES, SN_KEYS
from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_DEMO = osp.join(ROOT, 'configs', 'mask_rcnn_demo')
SEG_DEMO = osp.join(ROOT, 'configs', 'seg_demo')
# the value the demos use (docs/learning_the_choice.md: chosen by a measured sweep)
DEMO_SN_LR_MULT = 30.0
MODEL_CONFIGS = {
    'det-sn': (osp.join(DET_DEMO, 'mask-rcnn_r18_fpn_sn-all_coco-demo.py'), SwitchableNorm),
    'det-syncsn': (osp.join(DET_DEMO, 'mask-rcnn_r18_fpn_syncsn-all_coco-demo.py'),
                   SyncSwitchableNorm),
    'seg-sn': (osp.join(SEG_DEMO, 'deeplabv3_r18-d8-sn_demo-cityscapes.py'), SwitchableNorm),
    'seg-syncsn': (osp.join(SEG_DEMO, 'deeplabv3plus_r18-d8-syncsn_demo-ade20k.py'),
                   SyncSwitchableNorm),
}


def _build_model(cfg):
    scope = cfg.get('default_scope', 'mmdet')
    with DefaultScope.overwrite_default_scope(scope):
        if scope == 'mmdet':
            from mmdet.registry import MODELS
        else:
            from mmseg.registry import MODELS
        torch.manual_seed(0)
        return MODELS.build(cfg.model)


def _groups_by_name(model, optim_wrapper_cfg):
    """{parameter name: (lr, weight_decay)} of the optimizer built from the config."""
    wrapper = build_optim_wrapper(model, optim_wrapper_cfg)
    of = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            assert id(p) not in of, 'a parameter is in two groups'
            of[id(p)] = (group['lr'], group['weight_decay'])
    return {name: of[id(p)] for name, p in model.named_parameters()}


def _with_paramwise(optim_wrapper_cfg, **paramwise):
    cfg = optim_wrapper_cfg.copy()
    cfg['paramwise_cfg'] = dict(cfg.get('paramwise_cfg') or {}, **paramwise)
    return cfg


def _logit_names(model, cls):
    names = set()
    for m_name, module in model.named_modules():
        if isinstance(module, SwitchableNorm):
            assert isinstance(module, cls), f'{m_name} is {type(module).__name__}'
            names |= {f'{m_name}.{p}' for p in LOGIT_NAMES}
    return names


@pytest.mark.parametrize('key', list(MODEL_CONFIGS))
def test_multiplier_reaches_exactly_the_logits(key):
    path, cls = MODEL_CONFIGS[key]
    cfg = Config.fromfile(path)
    model = _build_model(cfg)
    logits = _logit_names(model, cls)
    assert len(logits) > 20 and 'backbone.layer2.0.downsample.1.mean_weight' in logits
    base_lr = cfg.optim_wrapper.optimizer.lr
    without = _groups_by_name(model, _with_paramwise(cfg.optim_wrapper, sn_lr_mult=None))
    assert {lr for lr, _ in without.values()} == {base_lr}
    mult = 7.5
    with_mult = _groups_by_name(model, _with_paramwise(cfg.optim_wrapper, sn_lr_mult=mult))
    assert set(with_mult) == set(without)
    for name, (lr, decay) in with_mult.items():
        want_lr = base_lr * mult if name in logits else without[name][0]
        assert lr == pytest.approx(want_lr), name
        assert decay == without[name][1], name  # the decay rules are untouched
    # SN weight/bias keep the base rate
    assert with_mult['backbone.layer1.0.sn1.weight'][0] == base_lr
    assert with_mult['backbone.layer1.0.sn1.bias'][0] == base_lr


def test_shipped_configs_use_the_paper_rate_except_the_demos():
    """COCO/Cityscapes/ADE20K configs: 1x (no key, or 1.0); CPU demos: the swept value."""
    import glob
    for path in sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)):
        if '_base_' in path:
            continue
        cfg = Config.fromfile(path)
        paramwise = cfg.optim_wrapper.get('paramwise_cfg') or {}
        demo = 'demo' in osp.basename(path)
        mult = paramwise.get('sn_lr_mult', 1.0)
        assert mult == (DEMO_SN_LR_MULT if demo else 1.0), (path, mult)
        if demo:
            assert cfg.optim_wrapper.constructor == 'SNOptimWrapperConstructor', path


def _tiny():
    from mmdet.models.backbones import ResNet
    return ResNet(18, base_channels=8, norm_cfg=dict(type='SN'), norm_eval=False)


def _tiny_cfg(**paramwise):
    return dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
                constructor='SNOptimWrapperConstructor', paramwise_cfg=paramwise)


@pytest.mark.parametrize('bad_key', ['sn_lr_mul', 'sn_logit_lr_mult', 'sn_'])
def test_unknown_sn_key_is_an_error_naming_it_and_the_valid_keys(bad_key):
    with pytest.raises(ValueError) as err:
        build_optim_wrapper(_tiny(), _tiny_cfg(**{bad_key: 10.0}))
    message = str(err.value)
    assert repr(bad_key) in message
    for valid in SN_KEYS:
        assert valid in message
    assert set(SN_KEYS) == {'sn_decay_mult', 'sn_lr_mult'}


@pytest.mark.parametrize('value', [-1.0, True, 'x', float('nan'), float('inf')])
def test_bad_sn_lr_mult_is_named(value):
    with pytest.raises(ValueError, match='sn_lr_mult must be a non-negative number, got'):
        build_optim_wrapper(_tiny(), _tiny_cfg(sn_lr_mult=value))


def test_sn_lr_mult_needs_a_base_lr():
    cfg = dict(optimizer=dict(type='Adadelta'), constructor='SNOptimWrapperConstructor',
               paramwise_cfg=dict(sn_lr_mult=10.0))
    with pytest.raises(ValueError, match='sn_lr_mult needs optimizer.lr'):
        build_optim_wrapper(_tiny(), cfg)


def test_custom_keys_take_precedence():
    model = _tiny()
    groups = _groups_by_name(model, _tiny_cfg(
        sn_lr_mult=10.0, custom_keys={'layer1.0.sn1': dict(lr_mult=2.0)}))
    assert groups['layer1.0.sn1.mean_weight'][0] == pytest.approx(0.2)
    assert groups['layer1.0.sn1.var_weight'][0] == pytest.approx(0.2)
    assert groups['layer1.0.sn2.mean_weight'][0] == pytest.approx(1.0)
    assert groups['layer1.0.sn2.weight'][0] == pytest.approx(0.1)


def test_the_ratio_holds_through_the_schedule_and_the_step():
    """Warm-up and steps scale every group from its own start; one SGD step moves the
    logits sn_lr_mult times as far as at 1x (same gradients)."""
    from mmengine.optim import LinearLR, MultiStepLR

    def run(mult):
        torch.manual_seed(0)
        model = _tiny()
        wrapper = build_optim_wrapper(model, _tiny_cfg(sn_lr_mult=mult, sn_decay_mult=0.0))
        schedulers = [LinearLR(wrapper, start_factor=0.1, by_epoch=False, begin=0, end=4),
                      MultiStepLR(wrapper, milestones=[5], gamma=0.1, by_epoch=False)]
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        for _ in range(7):
            for s in schedulers:
                s.step()
        before = model.layer1[0].sn1.mean_weight.detach().clone()
        wrapper.update_params(sum(o.square().mean() for o in model(x)))
        return model.layer1[0].sn1.mean_weight.detach() - before, wrapper

    delta1, _ = run(1.0)
    delta10, wrapper = run(10.0)
    for group in wrapper.optimizer.param_groups:
        is_logit = group['params'][0].shape == (3,)
        others = [g['lr'] for g in wrapper.optimizer.param_groups if g['params'][0].ndim > 1]
        assert group['lr'] == pytest.approx(others[0] * (10.0 if is_logit else 1.0))
    assert delta1.abs().max() > 0
    torch.testing.assert_close(delta10, 10.0 * delta1, rtol=1e-4, atol=1e-9)


def test_multiplier_reaches_the_ratio_network_of_en():
    """EN has no logits: its mixture is its ratio network's output, so sn_lr_mult scales
    reduce_weight, ratio_weight and ratio_bias, and nothing else of the layer."""
    from sn_mm.ops.exemplar_norm import ExemplarNorm
    cfg = Config.fromfile(osp.join(DET_DEMO, 'mask-rcnn_r18_fpn_en-all_coco-demo.py'))
    model = _build_model(cfg)
    ratio = {f'{m_name}.{p}' for m_name, m in model.named_modules()
             if isinstance(m, ExemplarNorm) for p in ('reduce_weight', 'ratio_weight', 'ratio_bias')}
    assert len(ratio) > 60
    base_lr = cfg.optim_wrapper.optimizer.lr
    groups = _groups_by_name(model, _with_paramwise(cfg.optim_wrapper, sn_lr_mult=7.5))
    for name, (lr, _) in groups.items():
        assert lr == pytest.approx(base_lr * 7.5 if name in ratio else base_lr), name
    assert groups['backbone.layer1.0.en1.weight'][0] == base_lr
