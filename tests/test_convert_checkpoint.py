"""Official SN checkpoints into mmdet/mmseg ResNets, conversion tool, inspection."""
import logging
import math

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

import sn_mm  # noqa: F401
from sn_mm.checkpoint_convert import (bn_to_sn, bn_share_logits, describe_sn,
                                      official_to_mmengine, read_checkpoint)
from sn_mm.engine.pretrained import SNCheckpointMismatchError
from tests.cli import run_tool
from tests.official_sn import (official_sn_checkpoint, official_sn_state_dict,
                               torchvision_bn_state_dict)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def build_resnet(scope, depth, checkpoint=None, using_bn=True, prefix=None, **kwargs):
    """mmdet/mmseg ``ResNet`` with SN, initialised from ``checkpoint``: (model, warnings)."""
    cfg = dict(type='ResNet', depth=depth, norm_cfg=dict(type='SN', using_bn=using_bn),
               norm_eval=False, **kwargs)
    if checkpoint is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=str(checkpoint))
        if prefix:
            cfg['init_cfg']['prefix'] = prefix
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(cfg)
        handler = _Collect()
        logger = MMLogger.get_current_instance()
        logger.addHandler(handler)
        try:
            model.init_weights()
        finally:
            logger.removeHandler(handler)
    return model, [m for m in handler.messages if 'do not match' in m]


def assert_official_landed(model, official, module_prefix=True):
    """Every model tensor equals the file's tensor (official shapes flattened)."""
    prefix = 'module.' if module_prefix else ''
    state = model.state_dict()
    used = set()
    for key, value in state.items():
        source = official[prefix + key]
        assert source.numel() == value.numel(), key
        torch.testing.assert_close(value, source.reshape(value.shape), rtol=0, atol=0,
                                   msg=key)
        used.add(prefix + key)
    assert sorted(set(official) - used) == [prefix + 'fc.bias', prefix + 'fc.weight']


def _report_keys(warnings):
    """(unexpected, missing) key lists from mmengine's load_state_dict warning."""
    unexpected, missing = [], []
    for message in warnings:
        for line in message.splitlines():
            if line.startswith('unexpected key in source state_dict: '):
                unexpected += line.split(': ', 1)[1].split(', ')
            if line.startswith('missing keys in source state_dict: '):
                missing += line.split(': ', 1)[1].split(', ')
    return sorted(unexpected), sorted(missing)


def test_official_legacy_file_with_module_prefix_into_mmdet_resnet50(tmp_path):
    """torch-0.4-era file: legacy format, ``module.``, epoch/best_prec1/optimizer, _metadata."""
    ckpt = official_sn_checkpoint(50, using_bn=True, seed=1)
    path = tmp_path / 'resnet50v1_sn.pth'
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    model, warnings = build_resnet('mmdet', 50, path)
    assert_official_landed(model, ckpt['state_dict'])
    assert _report_keys(warnings) == (['fc.bias', 'fc.weight'], [])
    assert len(warnings) == 1 and 'mean_weight has' not in warnings[0]


def test_official_8_1_model_using_bn_false_into_mmdet_resnet50(tmp_path):
    ckpt = official_sn_checkpoint(50, using_bn=False, seed=2)
    path = tmp_path / 'resnet50v1_sn_8x1.pth'
    torch.save(ckpt, path)
    model, warnings = build_resnet('mmdet', 50, path, using_bn=False)
    assert not any(k.endswith('running_mean') for k in model.state_dict())
    assert_official_landed(model, ckpt['state_dict'])
    assert _report_keys(warnings) == (['fc.bias', 'fc.weight'], [])


def test_bare_state_dict_without_prefix_into_mmseg_resnet(tmp_path):
    sd = official_sn_state_dict(18, using_bn=True, seed=3, module_prefix=False,
                                metadata=False)
    path = tmp_path / 'bare.pth'
    torch.save(sd, path)
    model, warnings = build_resnet('mmseg', 18, path, strides=(1, 2, 1, 1),
                                   dilations=(1, 1, 2, 4))
    assert_official_landed(model, sd, module_prefix=False)
    assert _report_keys(warnings) == (['fc.bias', 'fc.weight'], [])


@pytest.mark.parametrize('file_using_bn', [False, True])
def test_using_bn_mismatch_is_an_error(tmp_path, file_using_bn):
    path = tmp_path / 'sn.pth'
    torch.save(official_sn_checkpoint(18, using_bn=file_using_bn, seed=4), path)
    with pytest.raises(SNCheckpointMismatchError) as info:
        build_resnet('mmdet', 18, path, using_bn=not file_using_bn)
    message = str(info.value)
    assert f'using_bn={file_using_bn}' in message and str(path) in message
    assert f"norm_cfg=dict(type='SN', using_bn={file_using_bn})" in message
    assert 'layer1.0.sn1' in message and '(20 layers)' in message


@pytest.mark.parametrize('using_bn,module_prefix,extras,legacy',
                         [(True, True, True, True), (True, False, False, False),
                          (False, True, True, False), (False, False, False, True)])
def test_official_to_mmengine_every_variant(tmp_path, using_bn, module_prefix, extras,
                                            legacy):
    ckpt = official_sn_checkpoint(18, using_bn=using_bn, seed=5,
                                  module_prefix=module_prefix, extras=extras)
    src, dst = tmp_path / 'official.pth', tmp_path / 'clean.pth'
    torch.save(ckpt, src, _use_new_zipfile_serialization=not legacy)
    run_tool('convert_checkpoint.py', 'official', src, dst)
    clean = read_checkpoint(str(dst))
    assert set(clean) == {'meta', 'state_dict'}
    assert clean['meta']['using_bn'] is using_bn and clean['meta']['num_sn_layers'] == 20
    if extras:
        assert clean['meta']['epoch'] == 100
        assert math.isclose(clean['meta']['best_prec1'], 76.92, rel_tol=1e-6)
    prefix = 'module.' if module_prefix else ''
    official = ckpt['state_dict']
    assert len(clean['state_dict']) == len(official) - 2  # fc dropped
    for key, value in clean['state_dict'].items():
        assert not key.startswith(('module.', 'fc.'))
        if key.rpartition('.')[2] in ('weight', 'bias', 'running_mean', 'running_var') \
                and ('.sn' in key or key.startswith('sn') or 'downsample.1' in key):
            assert value.dim() == 1, key
        torch.testing.assert_close(value, official[prefix + key].reshape(value.shape),
                                   rtol=0, atol=0)
    model, warnings = build_resnet('mmdet', 18, dst, using_bn=using_bn)
    assert warnings == []  # every key matches, nothing unexpected or missing
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, clean['state_dict'][key], rtol=0, atol=0)


def test_official_to_mmengine_with_backbone_prefix_and_init_cfg_prefix(tmp_path):
    src, dst = tmp_path / 'official.pth', tmp_path / 'detector.pth'
    ckpt = official_sn_checkpoint(18, seed=6)
    torch.save(ckpt, src)
    run_tool('convert_checkpoint.py', 'official', src, dst, '--prefix', 'backbone.', '--keep-fc')
    clean = read_checkpoint(str(dst))
    assert all(k.startswith('backbone.') for k in clean['state_dict'])
    assert 'backbone.fc.weight' in clean['state_dict']
    model, _ = build_resnet('mmdet', 18, dst, prefix='backbone.')
    assert_official_landed(model, ckpt['state_dict'])


def test_bn_to_sn_copies_everything_and_sets_logits():
    bn = torchvision_bn_state_dict(50, seed=7)
    sn = bn_to_sn(bn)
    assert 'layer1.0.sn3.running_var' in sn and 'layer1.0.downsample.1.mean_weight' in sn
    assert not any('num_batches_tracked' in k or k.startswith('fc.') or '.bn' in k
                   or k.startswith('bn') for k in sn)
    for key, value in bn.items():
        if key.startswith('fc.') or key.endswith('num_batches_tracked'):
            continue
        new = key.replace('.bn', '.sn')
        new = 'sn' + new[2:] if new.startswith('bn') else new
        torch.testing.assert_close(sn[new], value, rtol=0, atol=0)
    assert torch.equal(sn['sn1.mean_weight'], torch.ones(3))
    biased = bn_to_sn(bn, bn_share=0.7)
    shares = torch.softmax(biased['layer2.1.sn2.var_weight'], 0)
    torch.testing.assert_close(shares, torch.tensor([0.15, 0.15, 0.7]))
    rows = describe_sn(biased)
    assert len(rows) == 53 and all(abs(r['mean'][2] - 0.7) < 1e-6 for r in rows)
    no_bn = bn_to_sn(bn, using_bn=False)
    assert 'sn1.running_mean' not in no_bn and no_bn['sn1.mean_weight'].numel() == 2
    for bad in (0.0, 1.0, -1, 2):
        with pytest.raises(ValueError, match='bn_share must be a number in'):
            bn_share_logits(bad)


def test_from_bn_init_reproduces_the_bn_network_when_bn_dominates(tmp_path):
    """SN from BN weights with BN share ~1 computes what the BN ResNet computes (eval)."""
    bn = torchvision_bn_state_dict(18, seed=8)
    src, dst = tmp_path / 'tv.pth', tmp_path / 'sn.pth'
    torch.save(bn, src)
    run_tool('convert_checkpoint.py', 'from-bn', src, dst, '--bn-share', 1 - 1e-9)
    sn_model, warnings = build_resnet('mmdet', 18, dst)
    assert warnings == []
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        bn_model = MODELS.build(dict(type='ResNet', depth=18, norm_eval=False))
    bn_model.load_state_dict({k: v for k, v in bn.items() if not k.startswith('fc.')})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sn_model.eval()  # (mmdet's ResNet.train() returns None: no chaining)
    bn_model.eval()
    with torch.no_grad():
        out_sn, out_bn = sn_model(x), bn_model(x)
    for a, b in zip(out_sn, out_bn):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_print_lists_each_layer(tmp_path):
    ckpt = official_sn_checkpoint(18, seed=9)
    path = tmp_path / 'official.pth'
    torch.save(ckpt, path)
    lines = run_tool('convert_checkpoint.py', '--print', path,
                     stdout_only=True).strip().splitlines()
    assert len(lines) == 1 + 20 + 1 and lines[-1].startswith('average (20 layers)')
    layer = next(line for line in lines if line.startswith('layer3.1.sn2 '))
    mean = torch.softmax(ckpt['state_dict']['module.layer3.1.sn2.mean_weight'], 0)
    var = torch.softmax(ckpt['state_dict']['module.layer3.1.sn2.var_weight'], 0)
    numbers = [float(t) for t in layer.replace('|', ' ').split() if '.' in t and t[0] != 'l']
    torch.testing.assert_close(torch.tensor(numbers), torch.cat([mean, var]), atol=6e-4,
                               rtol=0)


def test_bad_inputs_are_named(tmp_path):
    sd = official_sn_state_dict(18, module_prefix=False, metadata=False)
    sd['layer1.0.sn1.var_weight'] = torch.ones(4)
    with pytest.raises(ValueError, match=r"'layer1.0.sn1'.*3 \(\[IN, LN, BN\]\) or 2"):
        official_to_mmengine({'state_dict': sd})
    sd = official_sn_state_dict(18, module_prefix=False, metadata=False)
    sd['sn1.running_var'] = torch.ones(1, 63, 1)
    with pytest.raises(ValueError, match="'sn1': running_var has 63 values, expected 64"):
        official_to_mmengine(sd)
    with pytest.raises(ValueError, match='no SN layer'):
        official_to_mmengine(torchvision_bn_state_dict(18))
    with pytest.raises(ValueError, match='no BN layer'):
        bn_to_sn(official_sn_state_dict(18))
