"""norm_eval=True / frozen_stages for SN in mmdet and mmseg ResNets."""
import copy

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import sn_mm  # noqa: F401
from sn_mm.ops import norm_eval as sn_norm_eval
from sn_mm.ops import SwitchableNorm


def _build(scope, **kwargs):
    cfg = dict(type=kwargs.pop('type', 'ResNet'), depth=18, norm_cfg=dict(type='SN'))
    cfg.update(kwargs)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # distinct, non-trivial statistics and logits
        for m in model.modules():
            if isinstance(m, SwitchableNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.mean_weight.normal_()
                m.var_weight.normal_()
    return model


def _x(seed=0):
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _sn(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SwitchableNorm)]


def _stats(model):
    return {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in _sn(model)}


@pytest.mark.parametrize('scope,backbone', [('mmdet', 'ResNet'), ('mmseg', 'ResNetV1c')])
def test_norm_eval_true_freezes_sn(scope, backbone):
    model = _build(scope, type=backbone, norm_eval=True)
    model.to('cpu')  # what mmengine's Runner does before wrapping the model in DDP
    layers = _sn(model)
    assert len(layers) == 20 + (2 if backbone == 'ResNetV1c' else 0)  # deep stem: 3 SN
    for name, layer in layers:  # frozen before DDP wraps the model: DDP/optimizers see it
        assert not layer.mean_weight.requires_grad and not layer.var_weight.requires_grad
        assert layer.weight.requires_grad and layer.bias.requires_grad, name
    reference = copy.deepcopy(model)
    reference.eval()  # mmdet's ResNet.train() returns None
    before = _stats(model)
    model.train()
    out = model(_x())
    assert all(not layer.training for _, layer in layers)
    for name, (mean, var) in _stats(model).items():  # running statistics untouched
        assert torch.equal(mean, before[name][0]) and torch.equal(var, before[name][1])
    with torch.no_grad():  # and the output is the eval-mode output
        expected = reference(_x())
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # logits get no gradient; affine parameters do
    sum(o.sum() for o in out).backward()
    for _, layer in layers:
        assert layer.mean_weight.grad is None and layer.weight.grad is not None
    # the optimizer built by mmengine leaves the logits alone
    wrapper = build_optim_wrapper(model, dict(optimizer=dict(type='SGD', lr=1.0)))
    logits = {n: m.mean_weight.detach().clone() for n, m in layers}
    wrapper.step()
    assert all(torch.equal(m.mean_weight, logits[n]) for n, m in layers)


def test_norm_eval_false_trains_sn():
    model = _build('mmdet', norm_eval=False)
    before = _stats(model)
    model.train()
    model(_x())
    for name, layer in _sn(model):
        assert layer.training and layer.mean_weight.requires_grad
        assert not torch.equal(layer.running_mean, before[name][0]), name


def test_frozen_stages_cover_sn():
    """mmdet's _freeze_stages already handles SN: stem + layer1 eval and frozen."""
    model = _build('mmdet', norm_eval=False, frozen_stages=1)
    before = _stats(model)
    model.train()
    model(_x())
    for name, layer in _sn(model):
        frozen = name == 'sn1' or name.startswith('layer1.')
        assert layer.training is not frozen, name
        assert all(p.requires_grad is not frozen for p in layer.parameters()), name
        assert torch.equal(layer.running_mean, before[name][0]) is frozen, name


def test_norm_eval_switched_on_after_construction_warns():
    model = _build('mmdet', norm_eval=False)
    model.norm_eval = True
    with pytest.warns(UserWarning, match='froze the importance logits'):
        model.train()
    model(_x())
    assert all(not m.training and not m.var_weight.requires_grad for _, m in _sn(model))
    model.norm_eval = False
    model.train()
    model(_x())
    assert all(m.training for _, m in _sn(model))


def test_disable_restores_library_behaviour():
    sn_norm_eval.disable()
    try:
        model = _build('mmdet', norm_eval=True)
        model.train()
        model(_x())
        assert all(m.training and m.mean_weight.requires_grad for _, m in _sn(model))
    finally:
        sn_norm_eval.enable()
    assert sn_norm_eval.is_enabled()


def test_no_global_module_hook():
    """Only SN's own constructor looks for a norm_eval owner: no process-wide hook."""
    from torch.nn.modules import module as torch_module
    assert not torch_module._global_module_registration_hooks
    assert not torch_module._global_forward_pre_hooks


def test_owner_survives_convert_sync_sn(recwarn):
    model = _build('mmdet', norm_eval=True)
    sn_mm.convert_sync_sn(model)
    model.train()
    assert not [w for w in recwarn if 'froze the importance logits' in str(w.message)]
    assert all(not m.mean_weight.requires_grad for _, m in _sn(model))
    assert all(not m.training for _, m in _sn(model))
    assert all(type(m).__name__ == 'SyncSwitchableNorm' for _, m in _sn(model))


def test_layers_outside_a_norm_eval_owner_are_unbound():
    layer = SwitchableNorm(4)
    assert sn_norm_eval.owner_of(layer) is None
    layer.train()
    assert layer.training and layer.mean_weight.requires_grad


def test_norm_eval_freeze_applies_at_train_and_explicitly():
    for apply in (lambda m: m.train(), sn_norm_eval.freeze_logits):
        model = _build('mmdet', norm_eval=True)
        apply(model)
        assert all(not m.mean_weight.requires_grad and not m.var_weight.requires_grad
                   for _, m in _sn(model))
