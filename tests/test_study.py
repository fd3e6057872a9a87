"""sn_mm.analysis.study (tools/study.py): model naming, ablation plumbing and the quick
study end to end."""
import json
import os

import pytest
import sklearn  # noqa: F401  (a requirement: requirements/runtime.txt)
import torch

from sn_mm.analysis import ratios_from_model, study
from sn_mm.ops import SwitchableNorm
from tests.cli import run_tool


def test_model_names_follow_mmdet_resnet_and_depth_order():
    names = [l.name for l in ratios_from_model(study.DigitsNet('SN', depth=2))]
    assert names == ['sn1', 'layer1.0.sn1', 'layer1.0.sn2', 'layer1.1.sn1', 'layer1.1.sn2',
                     'layer2.0.sn1', 'layer2.0.sn2', 'layer2.0.downsample.1', 'layer2.1.sn1',
                     'layer2.1.sn2']
    bn_net = study.DigitsNet('BN', depth=1)
    assert not any(isinstance(m, SwitchableNorm) for m in bn_net.modules())
    assert bn_net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown norm 'XN'"):
        study.DigitsNet('XN')


def test_shared_ratios_and_optimizer_groups():
    net = study.DigitsNet('SN', depth=1, ratios='shared')
    sns = [m for m in net.modules() if isinstance(m, SwitchableNorm)]
    assert len(sns) == 6 and all(m.mean_weight is sns[0].mean_weight for m in sns)
    opt = study.make_optimizer(net, 'sgd', logit_lr_mult=10.0)
    params = [p for g in opt.param_groups for p in g['params']]
    assert len(params) == len({id(p) for p in params}) == len(list(net.parameters()))
    logit_group = opt.param_groups[-1]
    assert logit_group['lr'] == pytest.approx(0.5) and len(logit_group['params']) == 2
    study.initialize(net, 'bn-start')
    assert torch.equal(sns[3].var_weight.detach(), torch.tensor([0.0, 0.0, 1.0]))


def test_schedules_and_plan():
    assert study.lr_factor('cosine', 0.0) == 1.0
    assert study.lr_factor('cosine', 0.5) == pytest.approx(0.5)
    assert study.lr_factor('step', 0.8) == pytest.approx(0.01)
    assert study.lr_factor('constant', 0.9) == 1.0
    runs = study.plan([2, 4, 32], [0, 1], [0], quick=False)
    acc = [r for r in runs if all(r[k] == v for k, v in study.BASE.items() if k != 'norm')]
    # SN and BN at every batch size; per-sample norms once, at the largest
    assert len(acc) == (3 * 2 + len(study.PER_SAMPLE_NORMS)) * 2
    assert {r['batch'] for r in acc if r['norm'] in study.PER_SAMPLE_NORMS} == {32}
    varied = [r for r in runs if r not in acc]
    assert {r['batch'] for r in varied} == {2, 32} and {r['seed'] for r in varied} == {0}
    assert len(runs) == len({json.dumps(r, sort_keys=True) for r in runs})


def test_quick_study_end_to_end(tmp_path, capsys):
    out = tmp_path / 'study'
    result = study.run_study(str(out), **study.QUICK)
    for name in ('accuracy.png', 'shares.png', 'layers.png'):
        with open(out / name, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
        assert os.path.getsize(out / name) > 5_000
    with open(out / 'results.json') as f:
        data = json.load(f)
    runs = data['runs']
    assert len(runs) == len(study.plan([2, 8], [0], [0], quick=True))
    assert all(0.0 <= r['accuracy'] <= 1.0 for r in runs)
    sn_runs = [r for r in runs if r['norm'] == 'SN']
    assert sn_runs and all(len(r['layers']) == 6 or r['depth'] == 2 for r in sn_runs)
    assert all(sum(r['average']['both']) == pytest.approx(1.0) for r in sn_runs)
    bn_start = [r for r in sn_runs if r['init'] == 'bn-start']
    assert bn_start and all(r['average']['mean'][2] > 0.5 for r in bn_start)
    report = (out / 'report.md').read_text()
    for heading in ('## (a)', '## (b)', '## Answers', '| SN |', '| BN |', '| GN |',
                    'logit_lr_mult', 'seed-to-seed'):
        assert heading in report
    assert result['summary']['ends'] == [2, 8]
    assert 'wrote' in capsys.readouterr().out


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='batch size 3 must be >= 2 and divide'):
        study.run_study(str(tmp_path), batch_sizes=[3])
    out = run_tool('study.py', '--batch-sizes', '3', expect_rc=2)
    assert '--batch-sizes: 3 must be >= 2 and divide --total-batch 32' in out
    out = run_tool('study.py', '--epochs', '0', expect_rc=2)
    assert '--epochs must be >= 1, got 0' in out
