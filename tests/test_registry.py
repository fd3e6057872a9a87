"""sn_mm in the OpenMMLab registries: build_norm_layer, layer names, ResNet keys, loading."""
import re

import pytest
import torch
from mmcv.cnn import ConvModule, build_norm_layer
from torch.testing import assert_close

import sn_mm  # noqa: F401
from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm


@pytest.mark.parametrize('type_name,cls', [('SN', SwitchableNorm), ('SyncSN', SyncSwitchableNorm)])
def test_build_norm_layer_round_trip(type_name, cls):
    name, layer = build_norm_layer(dict(type=type_name, momentum=0.003, using_bn=False), 64,
                                   postfix=1)
    assert name == 'sn1'
    assert type(layer) is cls
    assert layer.num_features == 64 and layer.momentum == 0.003 and not layer.using_bn
    assert layer.eps == 1e-5  # build_norm_layer always passes eps
    name, frozen = build_norm_layer(dict(type=type_name, requires_grad=False), 8)
    assert name == 'sn' and not any(p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_downstream_scopes_find_sn(scope):
    from mmengine.registry import DefaultScope, init_default_scope
    init_default_scope(scope)
    try:
        conv = ConvModule(3, 8, 3, padding=1, norm_cfg=dict(type='SN'))
        assert conv.norm_name == 'sn' and isinstance(conv.sn, SwitchableNorm)
        assert conv(torch.randn(2, 3, 8, 8)).shape == (2, 8, 8, 8)
    finally:
        DefaultScope._instance_dict.pop(scope, None)


def test_unknown_config_key_is_named():
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['momentun'\]"):
        build_norm_layer(dict(type='SN', momentun=0.1), 8)


def _official_state_dict(layer: SwitchableNorm, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = layer.num_features
    sd = {
        'weight': torch.randn(1, c, 1, 1, generator=gen),
        'bias': torch.randn(1, c, 1, 1, generator=gen),
        'mean_weight': torch.randn(layer.mean_weight.numel(), generator=gen),
        'var_weight': torch.randn(layer.var_weight.numel(), generator=gen),
    }
    if layer.using_bn:
        sd['running_mean'] = torch.randn(1, c, 1, generator=gen)
        sd['running_var'] = torch.rand(1, c, 1, generator=gen) + 0.5
    return sd


@pytest.mark.parametrize('using_bn', [True, False])
def test_load_official_layout(using_bn):
    layer = SwitchableNorm(16, using_bn=using_bn)
    official = _official_state_dict(layer)
    result = layer.load_state_dict({k: v.clone() for k, v in official.items()})
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in official.items():
        assert_close(getattr(layer, key), value.reshape(-1), rtol=0, atol=0)
    # Our own state dict round-trips through the versioned path.
    fresh = SwitchableNorm(16, using_bn=using_bn)
    fresh.load_state_dict(layer.state_dict())
    for key, value in layer.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    assert layer.state_dict()._metadata['']['version'] == 2


@pytest.mark.parametrize('file_using_bn', [True, False])
def test_using_bn_mismatch_says_which_setting(file_using_bn):
    source = SwitchableNorm(8, using_bn=file_using_bn)
    target = SwitchableNorm(8, using_bn=not file_using_bn)
    with pytest.raises(RuntimeError, match=f'build it with using_bn={file_using_bn}'):
        target.load_state_dict(_official_state_dict(source))


def test_mmdet_resnet50_key_names_match_official_checkpoints():
    from mmdet.models.backbones import ResNet
    model = ResNet(50, norm_cfg=dict(type='SN'), norm_eval=False)
    keys = set(model.state_dict())
    sn_prefixes = sorted({k.rsplit('.', 1)[0] for k in keys if k.endswith('.mean_weight')})
    expected = ['sn1']
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            expected += [f'layer{stage}.{block}.sn{i}' for i in (1, 2, 3)]
        expected.append(f'layer{stage}.0.downsample.1')
    assert sn_prefixes == sorted(expected)
    for prefix in expected:
        for suffix in ('weight', 'bias', 'mean_weight', 'var_weight', 'running_mean',
                       'running_var'):
            assert f'{prefix}.{suffix}' in keys
    assert not any(re.search(r'(bn\d|num_batches_tracked)', k) for k in keys)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in out] == [256, 512, 1024, 2048]


#: What ``import sn_mm`` adds to mmengine's root registries (sn_mm/registry.py), by registry.
ADDED = {
    'MODELS': {'SN', 'SyncSN', 'SSN', 'SyncSSN', 'SW', 'SyncSW', 'EN', 'SyncEN',
               'FixedNormModel', 'SWResNet'},
    'HOOKS': {'SNRatioHook', 'SNBatchAverageHook', 'SSNRadiusHook', 'ExactResumeHook',
              'SNFiniteCheckHook'},
    'OPTIM_WRAPPER_CONSTRUCTORS': {'SNOptimWrapperConstructor'},
}

_SNAPSHOT = r'''
import json, sys
import mmengine.registry as reg
import mmengine.runner, mmengine.hooks, mmengine.optim, mmengine.model  # their own names
names = [n for n in dir(reg) if isinstance(getattr(reg, n), reg.Registry)]
def snapshot():
    return {n: {k: getattr(v, '__module__', '?') + '.' + getattr(v, '__qualname__', repr(v))
                for k, v in getattr(reg, n).module_dict.items()} for n in names}
before = snapshot()
import sn_mm
after = snapshot()
json.dump(dict(before=before, after=after), sys.stdout)
'''


def test_import_sn_mm_adds_exactly_the_registry_module_names():
    """A fresh process: the root registries before and after ``import sn_mm`` differ by
    the names of sn_mm/registry.py, and by the two overrides of sn_mm.compat."""
    import json
    import os
    import os.path as osp
    import subprocess
    import sys

    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get('PYTHONPATH')) if p))
    proc = subprocess.run([sys.executable, '-c', _SNAPSHOT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    before, after = data['before'], data['after']
    added = {reg: set(after[reg]) - set(before[reg]) for reg in after}
    assert {reg: names for reg, names in added.items() if names} == ADDED
    assert all(set(before[reg]) <= set(after[reg]) for reg in before)  # nothing removed
    replaced = {(reg, name) for reg in before for name in before[reg]
                if before[reg][name] != after[reg][name]}
    assert replaced == {('WEIGHT_INITIALIZERS', 'Pretrained')}
    assert after['WEIGHT_INITIALIZERS']['Pretrained'] == \
        'sn_mm.engine.pretrained.SNPretrainedInit'
    assert after['MODELS']['FixedNormModel'] == 'sn_mm.deploy.mm.build_fixed_norm_model'


def test_registry_module_is_the_one_place():
    """No ``register_module`` outside sn_mm/registry.py, except sn_mm/compat.py's overrides
    (and, until it moves, sn_mm/deploy/mm.py's own FixedNormModel line)."""
    import os.path as osp
    import pathlib

    package = pathlib.Path(osp.dirname(sn_mm.__file__))
    users = sorted(str(p.relative_to(package)) for p in package.rglob('*.py')
                   if '.register_module(' in p.read_text())
    assert set(users) <= {'registry.py', 'compat.py', osp.join('deploy', 'mm.py')}, users
    assert {'registry.py', 'compat.py'} <= set(users)
