"""Every consumer of SN shares reads the pool table (sn_mm.ops.pool) and each layer's pool:
a model with a GN branch is analysed, tabled, plotted, logged by SNRatioHook and printed by
tools/convert_checkpoint.py with its GN shares; from a checkpoint alone a logit count other
than 3 or 2 needs ``branches`` (``--branches``), and without it the error names the layer,
the count and the option. Ordinary SN models keep their 3-column outputs."""
import csv
import glob
import json
import math

import pytest
import torch
from torch import nn

import sn_mm  # noqa: F401  (registers SNRatioHook)
from sn_mm.analysis import (LayerRatios, average_shares, columns_of, format_table,
                            ratios_from_checkpoint, ratios_from_model, ratios_from_state_dict,
                            softmax_shares, write_table)
from sn_mm.analysis.plot import _panel, new_figure, plot_ratios
from sn_mm.checkpoint import check_sn_layer, logit_pool, parse_branches, sn_layer_pool
from sn_mm.checkpoint_convert import describe_sn, format_sn_table
from sn_mm.engine.sn_ratio_hook import ratio_scalars
from sn_mm.ops import SwitchableNorm
from sn_mm.ops import pool as pool_table
from tests.cli import run_tool
from tests.toy_runner import TinySNNet, make_ratio_runner

NAMES = pool_table.NAMES
#: pools of the middle layer: GN with BN (table order and another logit order), GN without BN
POOLS = [('IN', 'LN', 'BN', 'GN'), ('GN', 'IN', 'LN', 'BN'), ('IN', 'LN', 'GN')]


class _Block(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.sn1 = layer


class PoolNet(nn.Module):
    """``sn1`` (default pool), ``layer1.0.sn1`` (``pool``, 2 groups), ``layer2.0.sn1`` (2
    logits), every logit seeded and distinct."""

    def __init__(self, pool, seed=0):
        super().__init__()
        self.sn1 = SwitchableNorm(4)
        self.layer1 = nn.Sequential(_Block(SwitchableNorm(
            4, branches=pool, num_groups=2, using_bn='BN' in pool)))
        self.layer2 = nn.Sequential(_Block(SwitchableNorm(4, using_bn=False)))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.sn_layers().values():
                for logits in (layer.mean_weight, layer.var_weight):
                    logits.copy_(torch.randn(logits.shape, generator=gen) * 2)

    def sn_layers(self):
        return {'sn1': self.sn1, 'layer1.0.sn1': self.layer1[0].sn1,
                'layer2.0.sn1': self.layer2[0].sn1}


def expected_shares(layer):
    """``{kind: {branch: float64 softmax share}}`` of the layer's branches (by name)."""
    return {kind: dict(zip(layer.pool, torch.softmax(
        getattr(layer, f'{kind}_weight').detach().double(), 0).tolist()))
        for kind in ('mean', 'var')}


def assert_layer(ratios, layer, tol=1e-6):
    want = expected_shares(layer)
    assert set(ratios.pool) == set(layer.pool)
    for kind in ('mean', 'var'):
        for branch in NAMES:
            assert ratios.share(kind, branch) == pytest.approx(
                want[kind].get(branch, 0.0), abs=tol), (ratios.name, kind, branch)


@pytest.mark.parametrize('pool', POOLS)
def test_ratios_from_model_align_every_layer_to_the_table(pool):
    model = PoolNet(pool)
    layers = ratios_from_model(model)
    assert [l.name for l in layers] == ['sn1', 'layer1.0.sn1', 'layer2.0.sn1']
    for ratios in layers:
        assert_layer(ratios, model.sn_layers()[ratios.name])
    stem, gn, two = layers
    # entry k is the share of NAMES[k]; a branch the layer does not mix is 0
    assert len(stem.mean) == 3 and len(gn.mean) == 4 and len(two.mean) == 3
    assert two.mean[2] == 0.0 and (gn.mean[2] == 0.0) == ('BN' not in pool)
    assert gn.using_bn == ('BN' in pool) and gn.pool == tuple(b for b in NAMES if b in pool)
    assert columns_of(layers) == ('IN', 'LN', 'BN', 'GN')
    assert columns_of([stem, two]) == ('IN', 'LN', 'BN')
    # the average over layers counts 0 for a layer without the branch
    avg = average_shares(layers)
    for kind in ('mean', 'var'):
        assert len(avg[kind]) == 4
        for k, branch in enumerate(NAMES):
            assert avg[kind][k] == pytest.approx(
                math.fsum(l.share(kind, branch) for l in layers) / 3, abs=1e-12)
            assert math.fsum(avg[kind]) == pytest.approx(1.0, abs=1e-6)
    # to_dict keeps the pool only where the shares' length and using_bn don't imply it,
    # so it reads back into the same LayerRatios
    for ratios in layers:
        assert 'pool' not in ratios.to_dict() and LayerRatios(**ratios.to_dict()) == ratios
    no_ln = LayerRatios('x', (0.4, 0.0, 0.6), (0.5, 0.0, 0.5), True, pool=('BN', 'IN'))
    assert no_ln.pool == ('IN', 'BN') and no_ln.to_dict()['pool'] == ['IN', 'BN']
    assert LayerRatios(**no_ln.to_dict()) == no_ln
    with pytest.raises(ValueError, match="LayerRatios 'y': mean and var"):
        LayerRatios('y', (0.5, 0.5), (0.5, 0.5), False)


@pytest.mark.parametrize('pool', POOLS)
def test_a_checkpoint_needs_the_branches_of_another_pool(pool):
    model = PoolNet(pool, seed=1)
    state = {'state_dict': model.state_dict()}
    if len(pool) == 4:
        match = r"SN layer 'layer1.0.sn1'.*got 4.*--branches IN,LN,BN,GN"
    else:  # 3 logits without running statistics cannot be [IN, LN, BN]
        match = r"SN layer 'layer1.0.sn1': 3 logits read as \['IN', 'LN', 'BN'\].*no running " \
                r'statistics.*--branches'
    with pytest.raises(ValueError, match=match):
        ratios_from_state_dict(state)
    layers = ratios_from_state_dict(state, branches=pool)
    for ratios in layers:  # the other layers keep their official pools
        assert_layer(ratios, model.sn_layers()[ratios.name])
    # branches that fit no layer of that count, or contradict its statistics: an error
    if len(pool) == 4:
        with pytest.raises(ValueError, match=r"'layer1.0.sn1'.*got 4.*branches=\('IN', 'LN'\) "
                                             'has 2'):
            ratios_from_state_dict(state, branches=('IN', 'LN'))
    else:
        with pytest.raises(ValueError, match='no running statistics'):
            sn_layer_pool(model.state_dict(), 'layer1.0.sn1', ('IN', 'LN', 'BN'))


def test_logit_pool_and_branch_names():
    assert logit_pool(3) == ('IN', 'LN', 'BN') and logit_pool(2) == ('IN', 'LN')
    assert logit_pool(3, ('IN', 'LN', 'GN')) == ('IN', 'LN', 'GN')
    assert logit_pool(2, ('IN', 'LN', 'GN')) == ('IN', 'LN')  # count decides
    with pytest.raises(ValueError, match="SN layer 'x': expected 2 .* or 3 .* got 5"):
        logit_pool(5, layer='x')
    assert parse_branches('IN, LN,BN,GN') == ('IN', 'LN', 'BN', 'GN')
    for bad, match in (('IN,XN', r"unknown normalizer\(s\) \['XN'\]"),
                       ('IN,IN', 'at least two distinct'), ('GN', 'at least two distinct')):
        with pytest.raises(ValueError, match=match):
            parse_branches(bad)
    # softmax of 4 logits with their pool, aligned to the table's names
    shares = softmax_shares([0.0, 1.0, 2.0, 3.0], ('GN', 'BN', 'LN', 'IN'))
    ref = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64), 0).tolist()
    assert shares == pytest.approx(ref[::-1], abs=1e-15)


def test_table_csv_and_json_have_gn_columns_and_ordinary_tables_do_not(tmp_path):
    model = PoolNet(POOLS[0], seed=2)
    gn_layers = ratios_from_model(model)
    plain = ratios_from_model(TinySNNet())
    text = format_table('gn', gn_layers)
    head = text.splitlines()[1].split()
    assert head == ['layer', 'mean_IN', 'mean_LN', 'mean_BN', 'mean_GN', 'var_IN', 'var_LN',
                    'var_BN', 'var_GN']
    assert 'shares [IN, LN, BN, GN]' in text
    row = next(line for line in text.splitlines() if line.startswith('layer1.0.sn1 '))
    want = expected_shares(model.layer1[0].sn1)
    numbers = [float(v) for v in row.split()[1:]]
    assert numbers == pytest.approx([want[k][b] for k in ('mean', 'var') for b in NAMES],
                                    abs=6e-4)
    stem = next(line for line in text.splitlines() if line.startswith('sn1 '))
    assert [float(v) for v in stem.split()[1:]][3] == 0.0 == [float(v) for v in stem.split()[1:]][7]
    assert 'mean_GN' not in format_table('plain', plain)

    both = [('gn', gn_layers), ('plain', plain)]
    with open(write_table(both, str(tmp_path / 't.csv'))) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['checkpoint', 'name', 'stage', 'block', 'using_bn'] + [
        f'{k}_{b}' for k in ('mean', 'var') for b in NAMES]
    gn_row = next(r for r in rows if r['name'] == 'layer1.0.sn1')
    assert float(gn_row['var_GN']) == pytest.approx(want['var']['GN'], abs=1e-6)
    assert all(float(r['mean_GN']) == 0.0 for r in rows if r['checkpoint'] == 'plain')

    data = json.load(open(write_table(both, str(tmp_path / 't.json'))))
    assert data['branches'] == ['IN', 'LN', 'BN', 'GN']
    avg = average_shares(gn_layers)
    assert data['average']['gn']['both'] == pytest.approx(list(avg['both']), abs=1e-12)
    assert data['average']['plain']['mean'][3] == 0.0
    plain_json = json.load(open(write_table([('plain', plain)], str(tmp_path / 'p.json'))))
    assert plain_json['branches'] == ['IN', 'LN', 'BN']
    assert all(len(v) == 3 for v in plain_json['average']['plain'].values())
    assert 'mean_GN' not in plain_json['layers'][0]


def test_plot_stacks_a_gn_bar_and_writes_the_file(tmp_path):
    model = PoolNet(POOLS[1], seed=3)
    layers = ratios_from_model(model)
    fig = new_figure(4, 3)
    ax = fig.subplots()
    _panel(ax, layers, 'var', show_stages=False, fontsize=8.0, branches=columns_of(layers))
    assert [c.get_label() for c in ax.containers] == ['IN', 'LN', 'BN', 'GN']
    gn_bars = ax.containers[3]
    assert [bar.get_height() for bar in gn_bars] == pytest.approx(
        [l.share('var', 'GN') for l in layers], abs=1e-12)
    tops = [bar.get_y() + bar.get_height() for bar in gn_bars]
    assert tops == pytest.approx([1.0] * 3, abs=1e-6)  # the stack sums to 1
    path = plot_ratios([('gn', layers), ('plain', ratios_from_model(TinySNNet()))],
                       str(tmp_path / 'fig.png'))
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_ratio_scalars_have_gn_keys_only_where_a_layer_mixes_gn():
    model = PoolNet(POOLS[2], seed=4)
    scalars = ratio_scalars(model)
    want = expected_shares(model.layer1[0].sn1)
    assert scalars['sn_ratio/layer1.0.sn1/mean_GN'] == pytest.approx(want['mean']['GN'], abs=1e-6)
    assert 'sn_ratio/layer1.0.sn1/mean_BN' not in scalars  # ('IN', 'LN', 'GN'): no BN
    assert 'sn_ratio/sn1/mean_GN' not in scalars and 'sn_ratio/sn1/mean_BN' in scalars
    assert not any(k.startswith('sn_ratio/layer2.0.sn1/') and k[-2:] in ('BN', 'GN')
                   for k in scalars)
    layers = ratios_from_model(model)
    assert scalars['sn_ratio_avg/all/var_GN'] == pytest.approx(
        sum(l.share('var', 'GN') for l in layers) / 3, abs=1e-9)
    assert scalars['sn_ratio_avg/layer2/mean_GN'] == 0.0
    assert not any(k.endswith('_GN') for k in ratio_scalars(TinySNNet()))


class TinyGNNet(TinySNNet):
    """TinySNNet whose ``layer1.0.sn1`` mixes ``('IN', 'LN', 'BN', 'GN')`` (2 groups)."""

    def __init__(self):
        super().__init__()
        self.layer1[0].sn1 = SwitchableNorm(4, branches=('IN', 'LN', 'BN', 'GN'), num_groups=2)


def test_hook_logs_gn_shares_on_a_real_runner(tmp_path):
    runner = make_ratio_runner(tmp_path, dict(type='SNRatioHook', interval=2), max_iters=3,
                               model=TinyGNNet())
    runner.train()
    files = glob.glob(str(tmp_path / '*' / 'vis_data' / 'scalars.json'))
    logged = [json.loads(line) for line in open(files[0]) if 'sn_ratio/sn1/mean_IN' in line]
    assert [line['step'] for line in logged] == [0, 2, 3]
    assert logged[0]['sn_ratio/layer1.0.sn1/mean_GN'] == pytest.approx(0.25, abs=1e-6)
    mean, var = runner.model.layer1[0].sn1.importance()
    assert logged[-1]['sn_ratio/layer1.0.sn1/var_GN'] == pytest.approx(float(var[3]), abs=1e-6)
    assert abs(logged[-1]['sn_ratio/layer1.0.sn1/mean_GN'] - 0.25) > 1e-4  # it learned
    assert 'sn_ratio/layer2.0.sn1/mean_GN' not in logged[-1]
    assert runner.message_hub.get_scalar('sn_ratio_avg/layer1/mean_GN').current() == \
        pytest.approx(float(mean[3]), abs=1e-6)


@pytest.mark.parametrize('pool', POOLS[:1] + POOLS[2:])
def test_describe_and_print_tool_show_gn_shares_with_branches(tmp_path, pool):
    model = PoolNet(pool, seed=5)
    state = model.state_dict()
    rows = describe_sn(state, pool)
    gn_row = next(r for r in rows if r['name'] == 'layer1.0.sn1')
    order = [b for b in NAMES if b in pool]
    want = expected_shares(model.layer1[0].sn1)
    assert gn_row['branches'] == order and gn_row['using_bn'] == ('BN' in pool)
    assert gn_row['mean'] == pytest.approx([want['mean'][b] for b in order], abs=1e-6)
    assert 'branches' not in rows[0] and check_sn_layer(state, 'layer1.0.sn1', pool) == 4
    table = format_sn_table(rows)
    assert table.splitlines()[0].split('|')[0].split()[-4:] == ['IN', 'LN', 'BN', 'GN']
    # average over the layers that mix every column: the GN layer alone when it has BN
    assert table.splitlines()[-1].startswith(
        'average (1 layers)' if 'BN' in pool else 'no layer mixes every branch')

    path = tmp_path / 'gn.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in state.items()}}, path)
    out = run_tool('convert_checkpoint.py', 'print', path, '--branches', ','.join(pool),
                   stdout_only=True)
    line = next(l for l in out.splitlines() if l.startswith('backbone.layer1.0.sn1 '))
    cells = line.replace('|', ' ').replace('mean:', ' ').replace('var:', ' ').split()[2:]
    for kind, part in (('mean', cells[:4]), ('var', cells[4:])):
        for branch, cell in zip(NAMES, part):
            if branch in pool:
                assert float(cell) == pytest.approx(want[kind][branch], abs=6e-4)
            else:
                assert cell == '-'
    data = json.loads(run_tool('convert_checkpoint.py', 'print', path, '--json', '--branches',
                               ','.join(pool), stdout_only=True))
    assert [r.get('branches') for r in data] == [None, order, None]
    # without --branches: the error names the layer, the count and the option
    err = run_tool('convert_checkpoint.py', 'print', path, expect_rc=1)
    assert "SN layer 'backbone.layer1.0.sn1'" in err and '--branches' in err
    assert (f'got {len(pool)}' if len(pool) == 4 else 'no running statistics') in err
    assert 'Traceback' not in err
    assert 'unknown normalizer' in run_tool('convert_checkpoint.py', 'print', path,
                                            '--branches', 'IN,XN', expect_rc=2)


def test_analyze_sn_cli_with_branches(tmp_path):
    model = PoolNet(POOLS[0], seed=6)
    path = tmp_path / 'gn.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    out = run_tool('analyze_sn.py', path, '--branches', 'IN,LN,BN,GN', '--out',
                   tmp_path / 't.json', '--plot', tmp_path / 'f.png')
    assert 'mean_GN' in out and (tmp_path / 'f.png').stat().st_size > 0
    assert json.load(open(tmp_path / 't.json'))['branches'] == ['IN', 'LN', 'BN', 'GN']
    layers = ratios_from_checkpoint(str(path), ('IN', 'LN', 'BN', 'GN'))
    assert_layer(layers[1], model.layer1[0].sn1)
    err = run_tool('analyze_sn.py', path, expect_rc=1)
    assert "SN layer 'layer1.0.sn1'" in err and 'got 4' in err and '--branches' in err
    assert '--branches applies to checkpoint files' in run_tool(
        'analyze_sn.py', '--compare', '--branches', 'IN,LN', expect_rc=2)


def test_compare_and_trajectories_read_the_default_pool_columns_of_gn_layers(tmp_path):
    from sn_mm.analysis.compare import Task, table_rows
    from sn_mm.analysis.trajectories import format_trajectories, read_trajectories

    model = PoolNet(POOLS[0], seed=7)
    layers = tuple(ratios_from_model(model))
    row = table_rows([Task('gn', layers, '')])[0]
    assert [k for k in row if k.startswith('mean_')] == ['mean_IN', 'mean_LN', 'mean_BN']
    assert row['mean_BN'] == round(average_shares(layers)['mean'][2], 4)
    scalars = dict(ratio_scalars(model), step=3)
    (tmp_path / 'scalars.json').write_text(json.dumps(scalars) + '\n')
    traj = read_trajectories(str(tmp_path / 'scalars.json'), averages=False)
    assert set(traj['layer1.0.sn1']['var']) == {'IN', 'LN', 'BN'}  # GN curves not read
    assert traj['layer1.0.sn1']['var']['BN'] == ([3], [pytest.approx(
        scalars['sn_ratio/layer1.0.sn1/var_BN'])])
    assert 'layer1.0.sn1' in format_trajectories(traj)
