"""SNOptimWrapperConstructor: SN parameters get weight_decay * sn_decay_mult."""
import pytest
from mmengine.optim import build_optim_wrapper

import sn_mm  # noqa: F401
from sn_mm.ops import SwitchableNorm


def _resnet18_sn():
    from mmdet.models.backbones import ResNet
    return ResNet(18, norm_cfg=dict(type='SN'), norm_eval=False)


def _decays(model, paramwise_cfg):
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
        constructor='SNOptimWrapperConstructor', paramwise_cfg=paramwise_cfg))
    decay_of = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            decay_of[id(p)] = group['weight_decay']
    return {name: decay_of[id(p)] for name, p in model.named_parameters()}


def _sn_param_names(model):
    return {f'{m_name}.{p_name}' for m_name, m in model.named_modules()
            if isinstance(m, SwitchableNorm) for p_name, _ in m.named_parameters()}


@pytest.mark.parametrize('paramwise_cfg', [dict(sn_decay_mult=0.0), dict(norm_decay_mult=0.0)])
def test_sn_parameters_get_no_decay(paramwise_cfg):
    model = _resnet18_sn()
    decays = _decays(model, paramwise_cfg)
    sn_names = _sn_param_names(model)
    assert 'layer2.0.downsample.1.mean_weight' in sn_names  # missed by a '.sn' custom key
    for name, decay in decays.items():
        assert decay == (0.0 if name in sn_names else 1e-4), name


def test_default_keeps_base_decay_and_custom_keys_win():
    model = _resnet18_sn()
    assert set(_decays(model, None).values()) == {1e-4}
    decays = _decays(model, dict(sn_decay_mult=0.0,
                                 custom_keys={'layer1.0.sn1': dict(decay_mult=2.0)}))
    assert decays['layer1.0.sn1.weight'] == 2e-4
    assert decays['layer1.0.sn2.weight'] == 0.0


def test_bad_sn_decay_mult_is_named():
    with pytest.raises(ValueError, match=r"sn_decay_mult must be a non-negative number, got -1"):
        _decays(_resnet18_sn(), dict(sn_decay_mult=-1))


def test_param_groups_are_plain_dicts_so_dynamo_traces_the_step():
    """mmengine's compile=True compiles train_step, optimizer.step() included; dynamo
    cannot trace it over ConfigDict groups, which mmengine's constructor makes from a
    config's ConfigDict (what the Runner passes)."""
    import torch
    from mmengine.config import ConfigDict
    from torch import nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4))
    wrapper = build_optim_wrapper(model, ConfigDict(
        optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
        constructor='SNOptimWrapperConstructor', paramwise_cfg=dict(sn_decay_mult=0.0)))
    assert all(type(group) is dict for group in wrapper.optimizer.param_groups)
    assert [g['weight_decay'] for g in wrapper.optimizer.param_groups] == [1e-4] * 2 + [0.0] * 4
    torch._dynamo.reset()

    def step(x):
        loss = model(x).square().mean()
        wrapper.update_params(loss)
        return loss.detach()

    before = model[0].weight.detach().clone()
    compiled = torch.compile(step, backend='eager')
    for seed in range(2):
        assert torch.isfinite(compiled(torch.randn(2, 3, 6, 6,
                                                   generator=torch.Generator().manual_seed(seed))))
    assert not torch.equal(model[0].weight, before)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1
