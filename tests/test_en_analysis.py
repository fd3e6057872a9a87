"""EN ratio distribution (sn_mm.analysis.exemplar), the analyze_sn option and the deploy
refusal, on a tiny model."""
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sn_mm.analysis.exemplar import (collect_en_ratios, format_en_summary,
                                     summarize_en_ratios)
from sn_mm.deploy import to_fixed_norms
from sn_mm.ops import SwitchableNorm
from sn_mm.ops.exemplar_norm import ExemplarNorm


class Tiny(nn.Module):
    """Backbone EN (one row per image) and a 'RoI' EN (3 rows per image)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.en = ExemplarNorm(8, reduction=2)
        self.head = ExemplarNorm(8, reduction=4, mixture='statistics')
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in (self.en, self.head):
                for p in (layer.reduce_weight, layer.ratio_weight, layer.ratio_bias):
                    p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x):
        h = self.en(self.conv(x))
        rois = h.repeat_interleave(3, 0)[:, :, :2, :2]
        return self.head(rois)


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 6, 6, generator=gen), labels)
            for n, labels in ((2, [{0, 1}, {1}]), (3, [{2}, {0}, {1, 2}]))]


def test_collect_and_summarize_match_direct_computation():
    model = Tiny().eval()
    batches = _batches()
    layers = collect_en_ratios(model, batches, lambda m, b: m(b[0]), lambda b: b[1])
    assert list(layers) == ['en', 'head']
    direct = torch.cat([model.en.sample_ratios(model.conv(x))[0] for x, _ in batches])
    assert_close(layers['en'].weights('mean'), direct.double())
    summary = summarize_en_ratios(layers)
    s = summary['en']
    assert s['samples'] == 5 and s['branches'] == ['IN', 'LN', 'BN']
    assert_close(torch.tensor(s['mean']['mean'], dtype=torch.float64), direct.double().mean(0))
    assert_close(torch.tensor(s['mean']['std'], dtype=torch.float64), direct.double().std(0, correction=0))
    assert_close(torch.tensor(s['mean']['quantiles']['0.5'], dtype=torch.float64),
                 direct.double().quantile(0.5, dim=0))
    # class 1 is in images 0, 1 (batch 1) and 4 (batch 2, third image)
    assert s['per_class'][1]['samples'] == 3
    assert_close(torch.tensor(s['per_class'][1]['mean'], dtype=torch.float64), direct.double()[[0, 1, 4]].mean(0))
    assert sorted(s['per_class']) == [0, 1, 2]
    # RoI rows do not match the images: no per-class statistics, 3 rows per image
    assert summary['head']['samples'] == 15 and summary['head']['per_class'] == {}
    assert summary['head']['mean']['mean'] != summary['head']['var']['mean']
    text = format_en_summary(summary, class_names=['cat', 'dog', 'car'])
    assert 'per class, en' in text and 'dog' in text and 'head' in text
    # the hooks are gone and the outputs were not changed by them
    assert not model.en._forward_hooks


def test_collector_needs_en_layers():
    with pytest.raises(ValueError, match='no Exemplar Normalization .* found in Sequential'):
        collect_en_ratios(nn.Sequential(nn.Conv2d(3, 3, 1)), [], lambda m, b: None)


def test_deploy_refuses_en_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), SwitchableNorm(8), nn.Conv2d(8, 8, 1),
                          ExemplarNorm(8))
    with pytest.raises(ValueError, match=r"Exemplar Normalization layer\(s\) 3 \(ExemplarNorm\)"
                                         r" to fixed layers: EN computes its importance"):
        to_fixed_norms(model, tol=0.5)


def test_analyze_sn_en_ratios_argument_errors():
    from tests.cli import run_tool
    for bad, msg in ((['--en-ratios', 'c.py', 'k.pth', '--out', 's.csv'],
                      '--out must end in .json'),
                     (['--en-ratios', 'c.py', 'k.pth', '--max-batches', '0'],
                      '--max-batches must be a positive int, got 0'),
                     (['--en-ratios', 'c.py', 'k.pth', '--compare'], 'separate commands')):
        assert msg in run_tool('analyze_sn.py', *bad, expect_rc=2)


def test_analyze_sn_en_ratios_end_to_end(tmp_path):
    """``tools/analyze_sn.py --en-ratios`` on the detection demo (tiny data, random EN model):
    per-layer distribution and per-class rows for the backbone, as a user runs it."""
    import json
    import os.path as osp

    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from tests.cli import ROOT, run_tool
    data = tmp_path / 'coco_demo'
    run_tool('make_coco_demo.py', '--out', data, '--num-train', '2', '--num-val', '3',
             '--image-size', '64', '--min-size', '12', '--max-size', '40')
    base = osp.join(ROOT, 'configs', 'mask_rcnn_demo', 'mask-rcnn_r18_fpn_sn-all_coco-demo.py')
    cfg_path = tmp_path / 'en_demo.py'
    cfg_path.write_text(
        f"_base_ = {base!r}\n"
        "norm_cfg = dict(type='EN', requires_grad=True)\n"
        "model = dict(backbone=dict(norm_cfg=norm_cfg), neck=dict(norm_cfg=norm_cfg),\n"
        "             roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg),\n"
        "                           mask_head=dict(norm_cfg=norm_cfg)))\n"
        f"val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,\n"
        f"                      dataset=dict(data_root={str(data) + '/'!r}))\n")
    cfg = Config.fromfile(str(cfg_path))
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    with torch.no_grad():  # a non-uniform ratio network, so samples differ
        for m in model.modules():
            if isinstance(m, ExemplarNorm):
                m.ratio_bias.normal_()
                m.ratio_weight.normal_(std=0.5)
    ckpt = tmp_path / 'en.pth'
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    out = tmp_path / 'en_ratios.json'
    text = run_tool('analyze_sn.py', '--en-ratios', cfg_path, ckpt, '--max-batches', '1',
                    '--out', out)
    print(text)
    assert 'backbone.en1' in text  # the stem's EN layer (mmcv's abbreviation 'en')
    assert 'per class, backbone' in text and f'EN ratio summary written to {out}' in text
    summary = json.loads(out.read_text())
    layers = summary['layers']
    stem = next(name for name in layers if name.startswith('backbone.'))
    assert layers[stem]['samples'] == 2 and layers[stem]['per_class']
    assert summary['classes'] and len(layers[stem]['mean']['quantiles']) == 5
    heads = [n for n in layers if n.startswith('roi_head.mask_head')]
    assert heads and all(layers[n]['per_class'] == {} for n in heads)  # RoI rows
