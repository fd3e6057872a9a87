"""NaN/Inf: documented behaviour, and the opt-in check naming the first SN layer that
sees a non-finite input or statistic (issue 20, item 6; the old main had neither)."""
import pytest
import torch
from torch import nn

from sn_mm.ops import SparseSwitchableNorm, SwitchableNorm
from sn_mm.ops.finite_check import NonFiniteError, watch_finite


def _net(norm=SwitchableNorm):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm(4), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, padding=1), norm(5), nn.ReLU(),
                         nn.Conv2d(5, 2, 1), norm(2))


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize('norm', [SwitchableNorm, SparseSwitchableNorm])
def test_one_nan_in_the_input_keeps_running_statistics_nan_as_batchnorm(norm):
    """The documented behaviour without the check (docs/checkpoints.md)."""
    sn, bn = norm(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    x[1, 2, 3, 3] = float('nan')
    for layer in (sn, bn):
        layer(x)
        for _ in range(3):
            layer(torch.randn(4, 3, 5, 5))
        assert torch.isnan(layer.running_mean[2]) and torch.isnan(layer.running_var[2])
        assert torch.isfinite(layer.running_mean[:2]).all()


@pytest.mark.parametrize('where,layer,what', [
    ('input', '1', 'input has 36 non-finite (NaN/Inf) value(s) of 400 in channel(s) [0, 1, 2, 3]'),
    ('conv2', '4', 'input has'),
    ('logits', '7', 'parameter mean_weight has 1 non-finite'),
    ('overflow', '1', 'statistic running_var (after this batch)'),
])
def test_the_first_sn_layer_to_see_a_non_finite_value_is_named(where, layer, what):
    model = _net().train()
    x = torch.randn(3, 3, 10, 10)
    if where == 'input':
        x = x[:1].clone()
        x[0, 2, 4, 4] = float('inf')
    elif where == 'conv2':
        with torch.no_grad():
            model[3].weight[0, 0, 0, 0] = float('nan')
    elif where == 'logits':
        with torch.no_grad():
            model[7].mean_weight[1] = float('nan')
    else:  # finite input whose variance overflows float32
        x = x * 3e20
    with watch_finite(model):
        with pytest.raises(NonFiniteError) as info:
            model(x)
    message = str(info.value)
    assert message.startswith(f"SwitchableNorm layer '{layer}' (training): ")
    assert what in message and 'first SN layer' in message


def test_off_costs_nothing_and_remove_restores_it():
    model = _net()
    assert _hooks(model) == 0
    watch = watch_finite(model)
    assert _hooks(model) == 6
    model(torch.randn(2, 3, 6, 6))  # finite: no error
    watch.remove()
    assert _hooks(model) == 0
    x = torch.randn(2, 3, 6, 6)
    x[0, 0, 0, 0] = float('nan')
    model(x)  # no check: no error


def test_mmengine_hook_names_the_layer(tmp_path):
    import sn_mm  # noqa: F401  registers SNFiniteCheckHook
    from tests.toy_runner import ToySNModel, make_runner
    model = ToySNModel()
    with torch.no_grad():
        model.conv2.bias[1] = float('nan')
    runner = make_runner(tmp_path, max_iters=2, model=model,
                         custom_hooks=[dict(type='SNFiniteCheckHook')])
    with pytest.raises(NonFiniteError, match=r"SwitchableNorm layer 'sn2' \(training\): input"):
        runner.train()
