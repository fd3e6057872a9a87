"""sn_mm.analysis and tools/analyze_sn.py: exact ratios from both checkpoint layouts,
depth order, tables, figures."""
import csv
import json
import math
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import sn_mm.engine  # noqa: F401  (safe checkpoint loader)
from sn_mm.analysis import (average_shares, block_of, depth_order, extract_ratios,
                            plot_ratios, ratios_from_checkpoint, ratios_from_model,
                            ratios_from_state_dict, softmax_shares, stage_averages,
                            stage_of, write_table)
from sn_mm.ops import SwitchableNorm
from tests.cli import run_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E = math.e
Z = 1 + E + E * E
P = (1 / Z, E / Z, E * E / Z)  # softmax of the logits (0, 1, 2), exactly

# Depth order of a small ResNet in the official / mmdet naming.
DEPTH_ORDER = ['sn1', 'layer1.0.sn1', 'layer1.0.sn2', 'layer1.0.sn3', 'layer1.0.downsample.1',
               'layer1.1.sn1', 'layer1.1.sn2', 'layer1.1.sn3', 'layer2.0.sn1', 'layer2.0.sn2',
               'layer2.0.sn3', 'layer2.0.downsample.1', 'layer2.1.sn1', 'layer2.1.sn2',
               'layer2.1.sn3', 'layer10.0.sn1']


def _logits(i):
    """Known logits per layer (exact in float32): mean softmax P, variance (P2, P0, P1)."""
    mean = torch.tensor([0.0, 1.0, 2.0]) + i  # softmax is shift invariant
    var = torch.tensor([2.0, 0.0, 1.0]) - 0.5 * i
    return mean, var


def _official_checkpoint(names, channels=4, using_bn=True):
    """Official layout: 'module.' keys, (1, C, 1, 1) affine, (1, C, 1) running stats."""
    state = {}
    for i, name in enumerate(names):
        p = f'module.{name}.'
        state[p + 'weight'] = torch.ones(1, channels, 1, 1)
        state[p + 'bias'] = torch.zeros(1, channels, 1, 1)
        mean, var = _logits(i)
        if using_bn:
            state[p + 'running_mean'] = torch.zeros(1, channels, 1)
            state[p + 'running_var'] = torch.ones(1, channels, 1)
        else:
            mean, var = mean[:2], var[:2]
        state[p + 'mean_weight'], state[p + 'var_weight'] = mean, var
    state['module.fc.weight'] = torch.zeros(10, channels)
    return {'state_dict': state, 'epoch': 100, 'best_prec1': 76.92}


def _expected(i, using_bn=True):
    if using_bn:
        return P, (P[2], P[0], P[1])
    # two logits [IN, LN]: mean (0, 1) -> (1, e) / (1 + e); variance (2, 0) -> (e^2, 1) / ...
    return (1 / (1 + E), E / (1 + E), 0.0), (E * E / (1 + E * E), 1 / (1 + E * E), 0.0)


def _shuffled(names, seed=0):
    names = list(names)
    random.Random(seed).shuffle(names)
    return names


def test_softmax_shares_exact_and_errors():
    assert softmax_shares(torch.tensor([0.0, 1.0, 2.0])) == pytest.approx(P, abs=1e-15)
    assert softmax_shares([5.0, 5.0]) == (0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match='expected 2 .* or 3 .* got 4'):
        softmax_shares([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match='finite'):
        softmax_shares([float('nan'), 0.0, 0.0])


def test_official_layout_exact_values_and_depth_order():
    names = _shuffled(DEPTH_ORDER)
    layers = ratios_from_state_dict(_official_checkpoint(names))
    assert [l.name for l in layers] == DEPTH_ORDER
    for layer in layers:
        mean, var = _expected(names.index(layer.name))
        assert layer.mean == pytest.approx(mean, abs=1e-15)
        assert layer.var == pytest.approx(var, abs=1e-15)
        assert layer.using_bn
    by_name = {l.name: l for l in layers}
    assert by_name['sn1'].stage == 'stem' and by_name['sn1'].block == 'stem'
    assert by_name['layer1.0.downsample.1'].stage == 'layer1'
    assert by_name['layer1.0.downsample.1'].block == 'layer1.0'
    assert by_name['layer10.0.sn1'].stage == 'layer10'


def test_official_two_logit_layout(tmp_path):
    names = ['sn1', 'layer1.0.sn1', 'layer1.0.downsample.1']
    path = str(tmp_path / 'official_8x1.pth')
    torch.save(_official_checkpoint(names, using_bn=False), path)
    layers = ratios_from_checkpoint(path)
    assert [l.name for l in layers] == names
    for i, layer in enumerate(layers):
        mean, var = _expected(i, using_bn=False)
        assert not layer.using_bn
        assert layer.mean == pytest.approx(mean, abs=1e-15)
        assert layer.var == pytest.approx(var, abs=1e-15)
        assert layer.mean[2] == 0.0 and layer.var[2] == 0.0


def test_mmengine_layout_file(tmp_path):
    """{'meta': ..., 'state_dict': ...} with 'backbone.' keys and a numpy scalar in meta."""
    names = ['layer2.0.sn1', 'sn1', 'layer1.0.sn2', 'layer1.0.sn1']
    state = {}
    for i, name in enumerate(names):
        mean, var = _logits(i)
        state[f'backbone.{name}.weight'] = torch.ones(4)
        state[f'backbone.{name}.mean_weight'] = mean
        state[f'backbone.{name}.var_weight'] = var
    state['neck.lateral_convs.0.sn.mean_weight'] = torch.zeros(3)
    state['neck.lateral_convs.0.sn.var_weight'] = torch.tensor([0.0, 0.0, 1.0])
    state['decode_head.conv_seg.weight'] = torch.zeros(2, 4, 1, 1)
    path = str(tmp_path / 'iter_10.pth')
    torch.save({'meta': {'iter': 10, 'acc': np.float64(0.5)}, 'state_dict': state}, path)
    layers = ratios_from_checkpoint(path)
    assert [l.name for l in layers] == ['backbone.sn1', 'backbone.layer1.0.sn1',
                                        'backbone.layer1.0.sn2', 'backbone.layer2.0.sn1',
                                        'neck.lateral_convs.0.sn']
    assert [l.stage for l in layers] == ['backbone.stem', 'backbone.layer1', 'backbone.layer1',
                                         'backbone.layer2', 'neck']
    for layer in layers[:4]:
        mean, var = _expected(names.index(layer.name[len('backbone.'):]))
        assert layer.mean == pytest.approx(mean, abs=1e-15)
        assert layer.var == pytest.approx(var, abs=1e-15)
    assert layers[4].mean == pytest.approx((1 / 3,) * 3, abs=1e-15)
    assert layers[4].var == pytest.approx((1 / (2 + E), 1 / (2 + E), E / (2 + E)), abs=1e-15)


def test_averages_exact():
    layers = ratios_from_state_dict(_official_checkpoint(['sn1', 'layer1.0.sn1']))
    avg = average_shares(layers)
    assert avg['mean'] == pytest.approx(P, abs=1e-15)
    assert avg['var'] == pytest.approx((P[2], P[0], P[1]), abs=1e-15)
    assert avg['both'] == pytest.approx(((P[0] + P[2]) / 2, (P[1] + P[0]) / 2,
                                         (P[2] + P[1]) / 2), abs=1e-15)
    stages = stage_averages(layers)
    assert list(stages) == ['stem', 'layer1']


def test_extraction_errors(tmp_path):
    with pytest.raises(ValueError, match='no SN layer found'):
        ratios_from_state_dict({'state_dict': {'conv.weight': torch.zeros(1)}})
    bad = {'a.mean_weight': torch.zeros(4), 'a.var_weight': torch.zeros(4)}
    with pytest.raises(ValueError, match="SN layer 'a'.*got 4"):
        ratios_from_state_dict(bad)
    mixed = {'a.mean_weight': torch.zeros(3), 'a.var_weight': torch.zeros(2)}
    with pytest.raises(ValueError, match='3 logits but a.var_weight has 2'):
        ratios_from_state_dict(mixed)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ratios_from_checkpoint(str(tmp_path / 'missing.pth'))
    with pytest.raises(TypeError, match='expected a checkpoint path'):
        extract_ratios(3)


def test_depth_order_rules():
    names = ['backbone.layer1.0.downsample.1', 'neck.fpn_convs.0.sn', 'backbone.layer1.0.sn1',
             'neck.lateral_convs.0.sn', 'backbone.stem.1', 'decode_head.bottleneck.sn',
             'backbone.layer1.1.sn1', 'backbone.stem.4', 'auxiliary_head.convs.0.sn']
    ordered = depth_order(names)
    assert ordered == ['backbone.stem.1', 'backbone.stem.4', 'backbone.layer1.0.sn1',
                       'backbone.layer1.0.downsample.1', 'backbone.layer1.1.sn1',
                       'neck.fpn_convs.0.sn', 'neck.lateral_convs.0.sn',
                       'decode_head.bottleneck.sn', 'auxiliary_head.convs.0.sn']
    # names under an unknown part keep their first appearance: lateral before fpn here
    assert depth_order(['x.lateral.sn', 'x.fpn.sn']) == ['x.lateral.sn', 'x.fpn.sn']
    assert stage_of('backbone.stem.1', names) == 'backbone.stem'
    assert block_of('backbone.layer1.1.sn1', names) == 'backbone.layer1.1'
    assert stage_of('stages.2.0.sn', []) == 'stages.2'
    assert block_of('stages.2.0.sn', []) == 'stages.2.0'
    with pytest.raises(ValueError, match='duplicate'):
        depth_order(['sn1', 'sn1'])


def test_depth_order_matches_mmdet_resnet50_module_order():
    """On a real mmdet ResNet-50 with SN, depth order == the order the model runs them."""
    from mmdet.models.backbones import ResNet
    import sn_mm  # noqa: F401  (registers SN)
    model = ResNet(50, norm_cfg=dict(type='SN'))
    modules = [n for n, m in model.named_modules() if isinstance(m, SwitchableNorm)]
    assert len(modules) == 53
    assert depth_order(_shuffled(modules, seed=3)) == modules
    layers = ratios_from_model(model)
    assert [l.name for l in layers] == modules
    assert layers[0].mean == pytest.approx((1 / 3,) * 3, abs=1e-6)


def test_live_model_matches_state_dict_and_importance():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4), SwitchableNorm(4, using_bn=False))
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SwitchableNorm):
                m.mean_weight.normal_()
                m.var_weight.normal_()
    live = ratios_from_model(model)
    saved = extract_ratios(model.state_dict())
    assert [l.name for l in live] == ['1', '2'] == [l.name for l in saved]
    for a, b, module in zip(live, saved, (model[1], model[2])):
        mean, var = module.importance()
        assert a.mean[:mean.numel()] == pytest.approx(mean.tolist(), abs=1e-7)
        assert a.var[:var.numel()] == pytest.approx(var.tolist(), abs=1e-7)
        assert a.mean == pytest.approx(b.mean, abs=1e-6)
        assert a.using_bn == b.using_bn
    with pytest.raises(ValueError, match='no SwitchableNorm'):
        ratios_from_model(nn.Conv2d(1, 1, 1))


def test_table_files(tmp_path):
    layers = ratios_from_state_dict(_official_checkpoint(['sn1', 'layer1.0.sn1']))
    csv_path = write_table([('a', layers), ('b', layers[:1])], str(tmp_path / 't.csv'))
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [(r['checkpoint'], r['name']) for r in rows] == [('a', 'sn1'), ('a', 'layer1.0.sn1'),
                                                          ('b', 'sn1')]
    assert float(rows[0]['mean_BN']) == pytest.approx(P[2], abs=1e-15)
    assert float(rows[1]['var_IN']) == pytest.approx(P[2], abs=1e-15)
    json_path = write_table([('a', layers)], str(tmp_path / 't.json'))
    with open(json_path) as f:
        data = json.load(f)
    assert data['branches'] == ['IN', 'LN', 'BN']
    assert data['average']['a']['mean'] == pytest.approx(list(P), abs=1e-15)
    with pytest.raises(ValueError, match='.csv or .json'):
        write_table([('a', layers)], str(tmp_path / 't.txt'))


def test_plot_files(tmp_path):
    layers = ratios_from_state_dict(_official_checkpoint(DEPTH_ORDER))
    png = plot_ratios([('batch 32', layers), ('batch 2', layers[:5])], str(tmp_path / 'f.png'))
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert os.path.getsize(png) > 10_000
    pdf = plot_ratios([('x', layers)], str(tmp_path / 'sub' / 'f.pdf'))
    with open(pdf, 'rb') as f:
        assert f.read(5) == b'%PDF-'
    with pytest.raises(ValueError, match='.png, .pdf or .svg'):
        plot_ratios([('x', layers)], str(tmp_path / 'f.jpg'))
    with pytest.raises(ValueError, match='no SN layers'):
        plot_ratios([('x', [])], str(tmp_path / 'g.png'))


def test_analyze_sn_cli(tmp_path):
    official = str(tmp_path / 'official.pth')
    torch.save(_official_checkpoint(_shuffled(DEPTH_ORDER)), official)
    mm = str(tmp_path / 'mm.pth')
    state = {f'backbone.{k[len("module."):]}': v
             for k, v in _official_checkpoint(['sn1', 'layer1.0.sn1'])['state_dict'].items()}
    torch.save({'meta': {'epoch': 1}, 'state_dict': state}, mm)
    out = run_tool('analyze_sn.py', official, mm, '--labels', 'official', 'mmengine',
                   '--out', tmp_path / 'r.csv', '--plot', tmp_path / 'r.png')
    assert '# official: 16 SN layers' in out and '# mmengine: 2 SN layers' in out
    assert 'layer1.0.downsample.1' in out and 'average' in out
    assert out.index('# official') < out.index('# mmengine')
    with open(tmp_path / 'r.csv') as f:
        assert [r['checkpoint'] for r in csv.DictReader(f)] == ['official'] * 16 + ['mmengine'] * 2
    assert os.path.getsize(tmp_path / 'r.png') > 10_000
    assert '--labels got 2 labels for 1 checkpoints' in run_tool(
        'analyze_sn.py', official, '--labels', 'a', 'b', expect_rc=2)
    assert '--plot must end in .png, .pdf or .svg' in run_tool(
        'analyze_sn.py', official, '--plot', tmp_path / 'x.gif', expect_rc=2)
    assert 'does not exist' in run_tool('analyze_sn.py', tmp_path / 'missing.pth',
                                        expect_rc=1)


def test_stage_labels_of_a_resnet50_do_not_collide():
    """At ResNet-50 depth the 1-layer stem's name is wider than its bar: it moves to a
    row of its own above the others; names that fit stay on the first row."""
    from sn_mm.analysis.plot import stage_label_rows
    spans = [(0, 0, 'stem'), (1, 10, 'layer1'), (11, 23, 'layer2'), (24, 42, 'layer3'),
             (43, 52, 'layer4')]
    assert stage_label_rows(spans, points_per_layer=17.0, fontsize=8.0) == [1, 0, 0, 0, 0]
    assert stage_label_rows(spans, points_per_layer=40.0, fontsize=8.0) == [0] * 5
    narrow = [(0, 0, 'stem'), (1, 1, 'neck'), (2, 2, 'head')]  # adjacent wide names alternate
    assert stage_label_rows(narrow, points_per_layer=5.0, fontsize=8.0) == [1, 2, 1]
