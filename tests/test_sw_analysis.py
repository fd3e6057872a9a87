"""Switchable Whitening weights in the ratio analysis (sn_mm.analysis.sw_ratios, the
tables, the figure and tools/analyze_sn.py): the weights are the softmaxes of the logits
(computed here by hand with math.exp), named in the authors' order [BW, IW, BN, IN, LN],
the same from a live model and from its checkpoint, beside SN layers in one depth order."""
import csv
import json
import math
import os.path as osp

import pytest
import torch
from torch import nn

import sn_mm.engine  # noqa: F401  (safe checkpoint loader)
from sn_mm.analysis import format_table, plot_ratios, ratios_from_state_dict, write_table
from sn_mm.analysis.sw_ratios import (SW_BRANCHES, columns_for, format_sw_table,
                                      layers_from_checkpoint, layers_from_state_dict,
                                      split_kinds, sw_ratios_from_model,
                                      sw_ratios_from_state_dict)
from sn_mm.ops import SwitchableNorm, SwitchableWhitening
from tests.cli import run_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _softmax(logits):
    e = [math.exp(float(x)) for x in torch.as_tensor(logits).detach().flatten()]
    return [v / sum(e) for v in e]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.sw1 = SwitchableWhitening(16, num_pergroup=8, sw_type=5)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.sn2 = SwitchableNorm(16)


class _Tiny(nn.Module):
    """backbone: stem SW (BW+IW), one stage of two blocks (SW type 5, SN); head: a
    tie_weight SW of type 3."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.backbone.sw1 = SwitchableWhitening(16, num_pergroup=8, sw_type=2)
        self.backbone.layer1 = nn.Sequential(_Block(), _Block())
        self.decode_head = nn.Module()
        self.decode_head.conv = nn.Conv2d(16, 16, 1)
        self.decode_head.sw = SwitchableWhitening(16, num_pergroup=16, sw_type=3,
                                                  tie_weight=True)

    def forward(self, x):
        x = self.backbone.sw1(self.backbone.conv1(x))
        for block in self.backbone.layer1:
            x = block.sn2(block.conv2(block.sw1(block.conv1(x))))
        return self.decode_head.sw(self.decode_head.conv(x))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = _Tiny()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (SwitchableWhitening, SwitchableNorm)):
                for p in (m.mean_weight, m.var_weight):
                    p.normal_(0, 1.5)
    return model


SW_NAMES = ['backbone.sw1', 'backbone.layer1.0.sw1', 'backbone.layer1.1.sw1',
            'decode_head.sw']
ALL_NAMES = ['backbone.sw1', 'backbone.layer1.0.sw1', 'backbone.layer1.0.sn2',
             'backbone.layer1.1.sw1', 'backbone.layer1.1.sn2', 'decode_head.sw']


def test_weights_are_the_softmaxed_logits_in_the_authors_order(tiny):
    layers = sw_ratios_from_model(tiny)
    assert [l.name for l in layers] == SW_NAMES
    modules = dict(tiny.named_modules())
    for layer in layers:
        m = modules[layer.name]
        assert layer.branches == {2: ('BW', 'IW'), 3: ('BW', 'IW', 'LN'),
                                  5: ('BW', 'IW', 'BN', 'IN', 'LN')}[m.sw_type]
        want_mean = _softmax(m.sw_mean_weight)
        want_var = want_mean if m.tie_weight else _softmax(m.sw_var_weight)
        assert list(layer.mean) == pytest.approx(want_mean, abs=1e-14)
        assert list(layer.var) == pytest.approx(want_var, abs=1e-14)
        assert layer.tied == m.tie_weight
        for k, branch in enumerate(layer.branches):  # the k-th logit is the k-th branch
            assert layer.share('mean', branch) == pytest.approx(want_mean[k], abs=1e-14)
        mean_w, _ = m.importance()  # the layer's own (float32) weights, same order
        assert list(layer.mean) == pytest.approx(mean_w.tolist(), abs=1e-6)
    five = layers[1]
    assert five.share('var', 'GN') == 0.0 and layers[0].share('mean', 'LN') == 0.0
    assert math.fsum(five.var) == pytest.approx(1.0, abs=1e-15)
    assert [l.stage for l in layers] == ['backbone.stem', 'backbone.layer1', 'backbone.layer1',
                                        'decode_head']
    assert layers[-1].tied and not layers[0].tied
    assert columns_for(layers) == SW_BRANCHES  # types 2, 3, 5 together: all five


def test_checkpoint_equals_the_model_beside_its_sn_layers(tiny, tmp_path):
    state = {f'module.{k}': v for k, v in tiny.state_dict().items()}
    path = str(tmp_path / 'tiny.pth')
    torch.save({'meta': {'iter': 1}, 'state_dict': state}, path)
    layers = layers_from_checkpoint(path)
    assert [l.name for l in layers] == ALL_NAMES  # one depth order for both kinds
    sn, sw = split_kinds(layers)
    live = sw_ratios_from_model(tiny)
    assert [l.name for l in sw] == SW_NAMES
    for a, b in zip(sw, live):
        assert a == b  # float64 softmax of the same logits: identical
    want_sn = ratios_from_state_dict(state)
    assert [(l.name, l.mean, l.var, l.stage, l.block) for l in sn] == \
        [(l.name, l.mean, l.var, l.stage, l.block) for l in want_sn]
    assert columns_for(layers) == ('IN', 'LN', 'BN', 'BW', 'IW')
    # a bare SW state dict (authors' keys, no prefix) and the mean-only (tie_weight) layer
    bare = sw_ratios_from_state_dict(tiny.decode_head.sw.state_dict())
    assert len(bare) == 1 and bare[0].name == 'sw' and bare[0].tied
    assert bare[0].mean == live[-1].mean


def test_bad_checkpoints_are_named(tiny):
    state = dict(tiny.state_dict())
    state['backbone.sw1.sw_mean_weight'] = torch.zeros(4)
    with pytest.raises(ValueError, match=r"SW layer 'backbone.sw1': 4 logits in "
                                         r'sw_mean_weight; expected \[1, 2, 3, 5\]'):
        sw_ratios_from_state_dict(state)
    state = dict(tiny.state_dict())
    state['backbone.sw1.sw_var_weight'] = torch.zeros(3)
    with pytest.raises(ValueError, match="'backbone.sw1': sw_var_weight has 3 logits, "
                                         'sw_mean_weight 2'):
        sw_ratios_from_state_dict(state)
    state = dict(tiny.state_dict())
    state['backbone.sw1.sw_mean_weight'] = torch.tensor([0.0, float('nan')])
    with pytest.raises(ValueError, match='must be finite'):
        sw_ratios_from_state_dict(state)
    with pytest.raises(ValueError, match=r'no SN or SW layer found.*--en-ratios'):
        layers_from_state_dict({'conv.weight': torch.zeros(1)})


def test_tables_json_csv_and_figure(tiny, tmp_path):
    layers = layers_from_state_dict(tiny.state_dict())
    sn, sw = split_kinds(layers)
    text = format_sw_table('tiny', sw)
    assert text.startswith('# tiny: 4 SW layers, weights [BW, IW, BN, IN, LN] after softmax')
    assert '1 tie_weight layers use one set' in text
    avg_line = text.splitlines()[-1].split()
    assert avg_line[0] == 'average'
    want_bw = sum(l.share('mean', 'BW') for l in sw) / 4
    assert float(avg_line[1]) == pytest.approx(want_bw, abs=5e-4)
    assert '# tiny: 2 SN layers' in format_table('tiny', sn)

    csv_path = write_table([('tiny', layers)], str(tmp_path / 't.csv'))
    with open(csv_path) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ['checkpoint', 'name', 'stage', 'block', 'using_bn', 'kind'] + [
        f'{k}_{b}' for k in ('mean', 'var') for b in ('IN', 'LN', 'BN', 'BW', 'IW')]
    assert [r['name'] for r in rows] == ALL_NAMES
    assert [r['kind'] for r in rows] == ['SW', 'SW', 'SN', 'SW', 'SN', 'SW']
    head = rows[-1]  # type 3 [BW, IW, LN], tied: var = mean
    assert float(head['mean_LN']) == pytest.approx(sw[-1].share('mean', 'LN'), abs=1e-15)
    assert head['var_LN'] == head['mean_LN'] and float(head['mean_BN']) == 0.0
    assert float(rows[2]['mean_BW']) == 0.0  # an SN layer mixes no BW

    json_path = write_table([('tiny', layers)], str(tmp_path / 't.json'))
    with open(json_path) as f:
        data = json.load(f)
    assert data['branches'] == ['IN', 'LN', 'BN', 'BW', 'IW']
    assert data['sw_branches'] == list(SW_BRANCHES)
    assert data['sw_average']['tiny']['mean'][0] == pytest.approx(want_bw, abs=1e-15)
    assert sum(data['sw_average']['tiny']['var']) == pytest.approx(1.0, abs=1e-12)
    want_sn_in = sum(l.share('mean', 'IN') for l in sn) / 2
    assert data['average']['tiny']['mean'][0] == pytest.approx(want_sn_in, abs=1e-15)
    # a table of SN layers only keeps its columns (no kind, no SW keys)
    sn_only = write_table([('sn', sn)], str(tmp_path / 'sn.json'))
    with open(sn_only) as f:
        data = json.load(f)
    assert data['branches'] == ['IN', 'LN', 'BN'] and 'sw_average' not in data
    assert 'kind' not in data['layers'][0]

    png = plot_ratios([('tiny', layers), ('SW only', sw)], str(tmp_path / 'f.png'))
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_sw_demo_config_model_and_the_cli(tmp_path):
    """The half-width Mask R-CNN SW demo model: every SW layer of its checkpoint is a row of
    tools/analyze_sn.py's table, JSON file and figure."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmdet.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'mask_rcnn_demo',
                                   'mask-rcnn_r18_fpn_sw-all_coco-demo.py'))
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SwitchableWhitening):
                m.sw_mean_weight.normal_()
                m.sw_var_weight.normal_()
    n_sw = sum(isinstance(m, SwitchableWhitening) for m in model.modules())
    assert n_sw == 36
    ckpt = str(tmp_path / 'iter_1.pth')
    torch.save({'meta': {'iter': 1}, 'state_dict': model.state_dict()}, ckpt)
    out = run_tool('analyze_sn.py', ckpt, '--labels', 'sw-demo', '--out', tmp_path / 'r.json',
                   '--plot', tmp_path / 'r.png')
    assert '# sw-demo: 36 SW layers, weights [BW, IW] after softmax' in out
    assert 'SN layers' not in out
    with open(tmp_path / 'r.json') as f:
        data = json.load(f)
    assert data['branches'] == ['BW', 'IW'] and len(data['layers']) == 36
    live = {l.name: l for l in sw_ratios_from_model(model)}
    for row in data['layers']:
        assert row['kind'] == 'SW'
        assert row['mean_BW'] == pytest.approx(live[row['name']].share('mean', 'BW'), abs=1e-15)
    stages = [r['stage'] for r in data['layers']]
    assert stages[0] == 'backbone.stem' and 'backbone.layer4' in stages and 'neck' in stages
    assert osp.getsize(tmp_path / 'r.png') > 10_000
    bad = str(tmp_path / 'plain.pth')
    torch.save({'state_dict': {'conv.weight': torch.zeros(1)}}, bad)
    err = run_tool('analyze_sn.py', bad, expect_rc=1)
    assert 'no SN or SW layer found' in err
