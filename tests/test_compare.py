"""Cross-task comparison (sn_mm.analysis.compare, tools/analyze_sn.py --compare) on tiny
checkpoints written here in the layouts of the detection demo, the segmentation demos
and a tools/study.py results.json."""
import csv
import json
import math
import os.path as osp

import pytest
import torch

from sn_mm.analysis import LayerRatios, average_shares
from tests.cli import run_tool
from sn_mm.analysis.compare import (run_compare, PAPER_SHARES, STAGES, Task, canonical_stage, findings,
                                    latest_checkpoint, load_tasks, markdown_table,
                                    shared_backbone_layers, stage_shares, study_tasks)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

BACKBONE = ['layer1.0.sn1', 'layer1.0.sn2', 'layer2.0.sn1', 'layer2.0.sn2',
            'layer2.0.downsample.1']


def _logits(favour: int, strength: float):
    """Logits whose softmax favours branch ``favour`` (0 IN, 1 LN, 2 BN)."""
    v = torch.ones(3)
    v[favour] += strength
    return v


def _softmax(v):
    return torch.softmax(v.double(), 0).tolist()


def _write_ckpt(path, layers):
    """layers: {name: (mean logits, var logits)} -> an mmengine-style checkpoint."""
    state = {}
    for name, (mean, var) in layers.items():
        state[f'{name}.weight'] = torch.ones(4)
        state[f'{name}.bias'] = torch.zeros(4)
        state[f'{name}.mean_weight'] = mean
        state[f'{name}.var_weight'] = var
        state[f'{name}.running_mean'] = torch.zeros(4)
    state['backbone.conv1.weight'] = torch.zeros(4, 3, 3, 3)
    torch.save({'meta': {'iter': 10}, 'state_dict': state}, str(path))
    return str(path)


@pytest.fixture
def det_ckpt(tmp_path):
    """Detection layout: stem sn1, backbone favours BN, FPN/heads favour LN."""
    layers = {'backbone.sn1': (_logits(1, 2.0), _logits(1, 2.0))}
    for name in BACKBONE:
        layers[f'backbone.{name}'] = (_logits(2, 2.0), _logits(2, 1.0))
    layers['neck.fpn_convs.0.sn'] = (_logits(1, 1.5), _logits(1, 1.5))
    layers['roi_head.mask_head.convs.0.sn'] = (_logits(1, 3.0), _logits(0, 1.0))
    return _write_ckpt(tmp_path / 'iter_10.pth', layers)


@pytest.fixture
def seg_ckpt(tmp_path):
    """Segmentation layout: deep stem (stem.1/4/7), backbone favours IN, decode head LN."""
    layers = {f'backbone.stem.{i}': (_logits(0, 1.0), _logits(0, 1.0)) for i in (1, 4, 7)}
    for name in BACKBONE + ['layer3.0.sn1']:
        layers[f'backbone.{name}'] = (_logits(0, 2.0), _logits(1, 0.5))
    layers['decode_head.aspp_modules.0.sn'] = (_logits(1, 1.0), _logits(1, 1.0))
    layers['auxiliary_head.convs.0.sn'] = (_logits(2, 1.0), _logits(2, 1.0))
    return _write_ckpt(tmp_path / 'seg.pth', layers)


def _study_layer(name, stage, mean, var):
    return dict(name=name, mean=list(mean), var=list(var), using_bn=True, stage=stage,
                block=stage)


def _study_run(batch, seed, bn_share, **over):
    """A study run: every layer has mean share BN = bn_share, the rest split IN/LN."""
    rest = (1 - bn_share) / 2
    shares = (rest, rest, bn_share)
    run = dict(norm='SN', depth=1, init='kaiming', schedule='cosine', solver='sgd',
               ratios='per-layer', logit_lr_mult=10.0, seed=seed, batch=batch, accuracy=0.9)
    run.update(over)
    names = [('sn1', 'stem')] + [(n, n.split('.')[0]) for n in BACKBONE]
    run['layers'] = [_study_layer(n, s, shares, (1 / 3, 1 / 3, 1 / 3)) for n, s in names]
    return run


@pytest.fixture
def study_json(tmp_path):
    runs = [_study_run(2, 0, 0.1), _study_run(2, 1, 0.2),        # mean BN 0.15 at b=2
            _study_run(8, 0, 0.5), _study_run(8, 1, 0.7),        # mean BN 0.60 at b=8
            _study_run(4, 0, 0.4),
            _study_run(2, 0, 0.9, logit_lr_mult=1.0),             # a factor variant
            _study_run(2, 0, 0.9, init='xavier'),
            dict(norm='BN', batch=2, seed=0, accuracy=0.8)]
    path = tmp_path / 'results.json'
    path.write_text(json.dumps(dict(settings='tiny', runs=runs, summary={})))
    return str(path)


def test_canonical_stages_across_layouts(det_ckpt, seg_ckpt, study_json):
    det, seg, b2, b8 = load_tasks([('det', det_ckpt), ('seg', seg_ckpt),
                                   ('digits', study_json)])
    assert [t.label for t in (b2, b8)] == ['digits b=2', 'digits b=8']
    assert list(stage_shares(det)) == ['stem', 'layer1', 'layer2', 'heads']
    assert list(stage_shares(seg)) == ['stem', 'layer1', 'layer2', 'layer3', 'heads']
    assert list(stage_shares(b2)) == ['stem', 'layer1', 'layer2']
    assert set(STAGES) >= {canonical_stage(l) for t in (det, seg, b2) for l in t.layers}
    # the stem of every layout, the heads of both checkpoint layouts
    assert [l.name for l in seg.layers if canonical_stage(l) == 'stem'] == [
        'backbone.stem.1', 'backbone.stem.4', 'backbone.stem.7']
    assert {l.name for l in det.layers if canonical_stage(l) == 'heads'} == {
        'neck.fpn_convs.0.sn', 'roi_head.mask_head.convs.0.sn'}
    # stage averages are the unweighted means of the layers' softmaxes
    heads = stage_shares(det)['heads']
    want = [(a + b) / 2 for a, b in zip(_softmax(_logits(1, 1.5)), _softmax(_logits(1, 3.0)))]
    assert heads['mean'] == pytest.approx(want)
    want_var = [(a + b) / 2 for a, b in zip(_softmax(_logits(1, 1.5)), _softmax(_logits(0, 1.0)))]
    assert heads['var'] == pytest.approx(want_var)
    # the shared backbone depth: union of the backbone layers, depth order, no backbone.
    names = shared_backbone_layers([det, seg, b2])
    assert names[:4] == ['stem.1', 'stem.4', 'stem.7', 'sn1']
    assert names[4:] == BACKBONE + ['layer3.0.sn1']


def test_study_baseline_is_averaged_over_seeds_and_excludes_variants(study_json):
    b2, b8 = study_tasks(study_json)
    assert average_shares(b2.layers)['mean'][2] == pytest.approx(0.15)
    assert average_shares(b8.layers)['mean'][2] == pytest.approx(0.60)
    (b4,) = study_tasks(study_json, batches=[4])
    assert average_shares(b4.layers)['mean'][2] == pytest.approx(0.4)
    with pytest.raises(ValueError, match=r'no SN baseline run at batch 16; available batch '
                                         r'sizes \[2, 4, 8\]'):
        study_tasks(study_json, batches=[16])


def test_table_and_findings_come_from_the_numbers(det_ckpt, study_json):
    tasks = load_tasks([('det', det_ckpt), ('digits', study_json)])
    text = markdown_table(tasks)
    for label, shares in PAPER_SHARES.items():
        assert f'| paper: {label} | 53 | ' + ' / '.join(f'{v:.2f}' for v in shares) in text
    det_avg = average_shares(tasks[0].layers)['both']
    assert f'| det | {len(tasks[0].layers)} | ' + ' / '.join(f'{v:.2f}' for v in det_avg) in text
    lines = findings(tasks)
    assert any('smaller per-device batch gives less BN' in line for line in lines)
    bn = [average_shares(t.layers)['both'][2] for t in tasks]
    assert any(f'BN share (averaged over layers, mean and variance): from {min(bn):.2f}' in line
               for line in lines)
    # the detection checkpoint's backbone favours BN, so its largest overall share is BN
    assert any(line.startswith('det: largest share overall BN') for line in lines)
    # shares still within 0.05 of their 1/3 start have chosen nothing
    third = (1 / 3, 1 / 3, 1 / 3)
    near = (0.37, 0.32, 0.31)
    flat = Task('flat', (LayerRatios('sn1', third, third, True, 'stem'),
                         LayerRatios('layer1.0.sn1', near, near, True, 'layer1')), '')
    (overall_line,) = [l for l in findings([flat]) if l.startswith('flat: largest')]
    assert overall_line.startswith('flat: largest share overall undecided')
    assert overall_line.endswith('per stage: stem undecided, layer1 undecided.')
    # flipping the study's trend flips the sentence
    flipped = findings([Task('digits b=2', tasks[2].layers, ''),
                        Task('digits b=8', tasks[1].layers, '')])
    assert any('gives not less BN' in line for line in flipped)


def test_run_compare_writes_figure_and_tables(tmp_path, det_ckpt, seg_ckpt, study_json, capsys):
    png, md = tmp_path / 'out' / 'cross.png', tmp_path / 'out' / 'cross.md'
    tasks = run_compare([det_ckpt, seg_ckpt, study_json], ['det', 'seg', 'digits'],
                        str(png), str(md))
    assert [t.label for t in tasks] == ['det', 'seg', 'digits b=2', 'digits b=8']
    assert png.stat().st_size > 20000 and png.read_bytes()[:4] == b'\x89PNG'
    assert md.read_text() == markdown_table(tasks)
    assert '## Per stage (both)' in capsys.readouterr().out
    out_csv = tmp_path / 'cross.csv'
    run_compare([det_ckpt, study_json], None, str(tmp_path / 'c.png'), str(out_csv), quiet=True)
    rows = list(csv.DictReader(open(out_csv)))
    first = rows[0]
    assert (first['task'], first['stage']) == ('iter_10', 'all')
    assert math.isclose(sum(float(first[f'both_{b}']) for b in ('IN', 'LN', 'BN')), 1.0,
                        abs_tol=1e-3)


def test_cli_compare(tmp_path, det_ckpt, study_json):
    """``tools/analyze_sn.py --compare`` as a user runs it, and its argument errors."""
    png, md = tmp_path / 'cli.png', tmp_path / 'cli.md'
    out = run_tool('analyze_sn.py', '--compare', det_ckpt, study_json, '--labels', 'det',
                   'digits', '--plot', png, '--out', md)
    assert f'figure written to {png}' in out and f'table written to {md}' in out
    assert md.read_text().startswith('# Which normalizer each layer chose')
    for argv, message in ((['--compare', '--out', 'x.txt'],
                           "--out must end in .csv or .json or .md, got 'x.txt'"),
                          ([], 'expected checkpoint files, --compare or --trajectories RUN')):
        assert message in run_tool('analyze_sn.py', *argv, expect_rc=2)


def test_missing_default_outputs_name_the_commands(tmp_path, monkeypatch, det_ckpt):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_tasks()
    for command in ('python tools/demo.py', 'tools/demo_seg.py --layout ade20k',
                    'python tools/study.py'):
        assert command in str(err.value)
    assert latest_checkpoint(str(tmp_path / 'iter_*.pth')) == det_ckpt
    (tmp_path / 'iter_9.pth').write_bytes(b'')
    assert latest_checkpoint(str(tmp_path / 'iter_*.pth')) == det_ckpt  # 10 > 9
    with pytest.raises(FileNotFoundError, match="nope.pth' does not exist"):
        load_tasks([('x', str(tmp_path / 'nope.pth'))])
    with pytest.raises(ValueError, match="given twice; one checkpoint per run"):
        load_tasks([('x', det_ckpt), ('x', det_ckpt)])
    with pytest.raises(ValueError, match='task labels must be unique'):
        load_tasks([('digits', det_ckpt), ('digits b=2', str(tmp_path / 'iter_10.pth'))]
                   + [('digits', _study_file(tmp_path))])


def _study_file(tmp_path):
    path = tmp_path / 'study_b2.json'
    path.write_text(json.dumps(dict(settings='tiny', runs=[_study_run(2, 0, 0.1),
                                                           _study_run(8, 0, 0.5)], summary={})))
    return str(path)


def test_a_label_given_for_several_checkpoints_is_one_task_over_seeds(tmp_path):
    """Seeds: the mean over runs, and a choice named only where every run makes it."""
    layers = {'backbone.sn1': (_logits(0, 3.0), _logits(0, 3.0)),
              'backbone.layer1.0.sn1': (_logits(0, 2.0), _logits(0, 2.0))}
    other = {'backbone.sn1': (_logits(0, 1.0), _logits(0, 1.0)),
             'backbone.layer1.0.sn1': (_logits(2, 2.0), _logits(2, 2.0))}
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    a = _write_ckpt(tmp_path / 'a' / 'iter_10.pth', layers)
    b = _write_ckpt(tmp_path / 'b' / 'iter_10.pth', other)
    (task,) = load_tasks([('det', a), ('det', b)])
    assert len(task.runs) == 2 and task.source == f'{a} + {b}'
    stem = task.layers[0]
    want = [(x + y) / 2 for x, y in zip(_softmax(_logits(0, 3.0)), _softmax(_logits(0, 1.0)))]
    assert list(stem.mean) == pytest.approx(want)
    line = next(l for l in findings([task]) if l.startswith('det: largest'))
    # the stem leans to IN on both seeds; layer1 goes IN on one seed and BN on the other
    assert '(2 seeds; a leaning is named only where every seed leans so)' in line
    assert 'stem IN' in line and 'layer1 seeds disagree' in line
    png = tmp_path / 'seeds.png'
    run_compare([a, b], ['det', 'det'], str(png), str(tmp_path / 'seeds.md'), quiet=True)
    assert png.read_bytes()[:4] == b'\x89PNG'


# --------------------------------------------------------------- tasks over seeds
class _SeedNet(torch.nn.Module):
    """A small model in the detection layout with real SN layers: stem ``backbone.sn1``,
    ``backbone.layer1.0.sn1``/``sn2``, ``backbone.layer2.0.sn1`` and an FPN conv's SN."""

    def __init__(self):
        super().__init__()
        from sn_mm.ops import SwitchableNorm
        self.backbone = torch.nn.Module()
        self.backbone.sn1 = SwitchableNorm(4)
        self.backbone.layer1 = torch.nn.ModuleList([torch.nn.Module()])
        self.backbone.layer1[0].sn1 = SwitchableNorm(4)
        self.backbone.layer1[0].sn2 = SwitchableNorm(4)
        self.backbone.layer2 = torch.nn.ModuleList([torch.nn.Module()])
        self.backbone.layer2[0].sn1 = SwitchableNorm(4)
        self.neck = torch.nn.Module()
        self.neck.fpn_convs = torch.nn.ModuleList([torch.nn.Module()])
        self.neck.fpn_convs[0].sn = SwitchableNorm(4)


def _seed_ckpt(path, logits):
    """Save a _SeedNet whose SN logits are ``logits[name]`` (mean and variance alike;
    default: all zero, shares 1/3)."""
    model = _SeedNet()
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, 'mean_weight'):
                module.mean_weight.copy_(logits.get(name, torch.zeros(3)))
                module.var_weight.copy_(logits.get(name, torch.zeros(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'meta': {'iter': 10}, 'state_dict': model.state_dict()}, str(path))
    return str(path)


def _three_seeds(tmp_path, layer1_favours):
    """Seeds 0-2: the stem leans to IN on every seed (strength varies), layer1 leans to
    ``layer1_favours[seed]``, layer2 and the neck stay at 1/3."""
    paths = []
    for seed, favour in enumerate(layer1_favours):
        logits = {'backbone.sn1': _logits(0, 1.0 + seed) - 1}
        for n in ('sn1', 'sn2'):
            logits[f'backbone.layer1.0.{n}'] = _logits(favour, 1.5) - 1
        paths.append(_seed_ckpt(tmp_path / f'seed{seed}' / 'iter_10.pth', logits))
    return paths


@pytest.mark.parametrize('favours, layer1', [((2, 2, 2), 'BN'),            # agree
                                             ((2, 0, 2), 'seeds disagree'),
                                             ((2, None, 2), 'undecided')])
def test_three_seeds_claim_a_leaning_only_where_all_agree(tmp_path, favours, layer1):
    """A leaning is claimed for a stage only when every seed leans to it; the table shows
    every seed and the layers that never leave 1/3; the figure is written."""
    from sn_mm.analysis.compare import group_leanings, never_left_third, parse_sources
    from sn_mm.analysis.seed_spread import agreed_leaning
    paths = []
    for seed, favour in enumerate(favours):
        logits = {'backbone.sn1': _logits(0, 1.0 + seed) - 1}
        if favour is not None:
            for n in ('sn1', 'sn2'):
                logits[f'backbone.layer1.0.{n}'] = _logits(favour, 1.5) - 1
        paths.append(_seed_ckpt(tmp_path / f'seed{seed}' / 'iter_10.pth', logits))
    sources = parse_sources(['det=' + ','.join(paths)])
    assert sources == [('det', p) for p in paths]
    (task,) = load_tasks(sources)
    assert len(task.runs) == 3
    # the mean over seeds, layer by layer, against the softmax of the logits set
    stem = [_softmax(_logits(0, 1.0 + s))[0] for s in range(3)]
    assert task.layers[0].mean[0] == pytest.approx(sum(stem) / 3)
    lean = group_leanings(task)
    assert lean['stem']['leans'] == 'IN' and lean['layer1']['leans'] == layer1
    assert lean['layer2']['leans'] == 'undecided' and lean['heads']['leans'] == 'undecided'
    for stage, v in lean.items():  # the same rule as the seed comparisons, seed by seed
        assert v['leans'] == agreed_leaning(v['per_seed'])
        assert len(v['per_seed']) == 3
    line = next(l for l in findings([task]) if l.startswith('det: largest'))
    assert 'stem IN' in line and f'layer1 {layer1},' in line
    assert (' layer1 BN' in line) == (layer1 == 'BN')
    stuck = ['backbone.layer2.0.sn1', 'neck.fpn_convs.0.sn']
    assert never_left_third(task) == stuck  # layer1 at 1/3 on one seed only is not stuck
    md = markdown_table([task])
    assert '| det | seed1 |' in md and 'never leave 1/3' in md
    assert '2 of 5 SN layers never leave 1/3' in md
    png, table = tmp_path / 'seeds.png', tmp_path / 'seeds.json'
    run_compare(['det=' + ','.join(paths)], None, str(png), str(table), quiet=True)
    assert png.read_bytes()[:4] == b'\x89PNG' and png.stat().st_size > 10000
    data = json.loads(table.read_text())
    assert data['never_left_third']['det'] == stuck
    assert {r['stage']: r['leans'] for r in data['rows']}['layer1'] == layer1
    assert all(r['seeds'] == 3 for r in data['rows'])


def test_agreed_leaning_rule():
    from sn_mm.analysis.seed_spread import agreed_leaning
    t = 1 / 3
    assert agreed_leaning([[0.5, 0.3, 0.2]] * 3) == 'IN'
    assert agreed_leaning([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]) == 'seeds disagree'
    assert agreed_leaning([[0.5, 0.3, 0.2], [t + 0.04, t, t - 0.04]]) == 'undecided'
    # every seed undecided, even with different largest shares: undecided, not disagree
    assert agreed_leaning([[t + 0.01, t, t - 0.01], [t, t - 0.01, t + 0.01]]) == 'undecided'
    assert agreed_leaning([[0.2, 0.4, 0.4]], tol=0.05) == 'LN'  # ties go to the first
    with pytest.raises(ValueError, match='at least one seed'):
        agreed_leaning([])


def test_parse_sources_forms_and_errors(tmp_path, det_ckpt):
    from sn_mm.analysis.compare import parse_sources
    assert parse_sources([det_ckpt]) == [('iter_10', det_ckpt)]  # the old, one-file form
    assert parse_sources([det_ckpt, det_ckpt], ['a', 'b']) == [('a', det_ckpt), ('b', det_ckpt)]
    assert parse_sources([f'x={det_ckpt}', f'y={det_ckpt},{det_ckpt}']) == [
        ('x', det_ckpt), ('y', det_ckpt), ('y', det_ckpt)]
    with pytest.raises(ValueError, match='all be LABEL=FILE'):
        parse_sources([f'x={det_ckpt}', det_ckpt])
    with pytest.raises(ValueError, match='cannot be used with LABEL=FILES'):
        parse_sources([f'x={det_ckpt}'], ['x'])
    for bad in (f'={det_ckpt}', f'x={det_ckpt},'):
        with pytest.raises(ValueError, match='expected LABEL=FILE'):
            parse_sources([bad])
    with pytest.raises(ValueError, match='got 1 labels for 2 sources'):
        parse_sources([det_ckpt, det_ckpt], ['a'])


def test_cli_compare_over_seeds(tmp_path):
    """``tools/analyze_sn.py --compare det=a,b,c`` as a user runs it."""
    paths = _three_seeds(tmp_path, (2, 0, 2))
    md = tmp_path / 'out.md'
    out = run_tool('analyze_sn.py', '--compare', 'det=' + ','.join(paths), '--plot',
                   str(tmp_path / 'f.png'), '--out', str(md))
    assert 'layer1 seeds disagree' in out and 'stem IN' in out
    assert '| det | 3 | ' in md.read_text()
    err = run_tool('analyze_sn.py', '--compare', 'det=' + paths[0], '--labels', 'x',
                   expect_rc=1)
    assert 'cannot be used with LABEL=FILES' in err


@pytest.mark.parametrize('bn_b2, bn_b8, claim', [
    ((0.1, 0.2), (0.5, 0.7), 'the smaller per-device batch gives less BN'),
    ((0.1, 0.6), (0.5, 0.7), 'the seeds of the two batch sizes overlap, no claim'),
    ((0.8, 0.9), (0.5, 0.7), 'the smaller per-device batch gives not less BN')])
def test_study_seeds_are_runs_and_the_batch_trend_needs_every_seed(tmp_path, bn_b2, bn_b8,
                                                                     claim):
    runs = [_study_run(2, s, v) for s, v in enumerate(bn_b2)] + [
        _study_run(8, s, v) for s, v in enumerate(bn_b8)]
    path = tmp_path / 'results.json'
    path.write_text(json.dumps(dict(settings='tiny', runs=runs, summary={})))
    b2, b8 = study_tasks(str(path))
    assert len(b2.runs) == 2 and len(b8.runs) == 2
    assert average_shares(b2.runs[1])['mean'][2] == pytest.approx(bn_b2[1])
    (line,) = [l for l in findings([b2, b8]) if l.startswith('digits: BN share')]
    assert line.endswith(f': {claim}.')
    assert '(per seed ' in line
    md = markdown_table([b2, b8])
    assert f'digits b=2: 2 runs of `{path}`' in md and '| digits b=2 | run 2 |' in md
