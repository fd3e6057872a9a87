"""Share trajectories from a run's vis_data/scalars.json (sn_mm.analysis.trajectories and
tools/analyze_sn.py --trajectories): a tiny hand-written file, and the file a real Runner
with SNRatioHook writes."""
import json
import os
import os.path as osp

import pytest

from sn_mm.analysis.trajectories import (find_scalars, final_shares, format_trajectories,
                                         plot_trajectories, read_trajectories,
                                         run_trajectories, select)
from tests.cli import run_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _write_run(work_dir):
    """work_dir/20260101_000000/vis_data/scalars.json as LoggerHook + SNRatioHook write it."""
    vis = work_dir / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    lines = []
    for step, bn in ((0, 1 / 3), (50, 0.5), (100, 0.7)):
        rest = (1 - bn) / 2
        record = {'step': step}
        for group in ('backbone.stem', 'backbone.layer1', 'neck', 'all'):
            for kind in ('mean', 'var'):
                record.update({f'sn_ratio_avg/{group}/{kind}_IN': rest,
                               f'sn_ratio_avg/{group}/{kind}_LN': rest,
                               f'sn_ratio_avg/{group}/{kind}_BN': bn})
        record.update({'sn_ratio/backbone.layer1.0.sn1/mean_IN': 0.5 + step / 1000,
                       'sn_ratio/backbone.layer1.0.sn1/mean_LN': 0.5 - step / 1000,
                       'sn_ratio/backbone.sn1/mean_IN': 0.2})  # 2-logit layers: no BN key
        lines.append(record)
        if step:
            lines.append({'lr': 0.02, 'loss': 1.0, 'iter': step, 'step': step})
    (vis / 'scalars.json').write_text('\n'.join(json.dumps(l) for l in lines) + '\n')
    return vis / 'scalars.json'


def test_read_stage_and_layer_curves(tmp_path):
    scalars = _write_run(tmp_path)
    for path in (tmp_path, tmp_path / '20260101_000000', scalars.parent, scalars):
        assert find_scalars(str(path)) == str(scalars)
    traj = read_trajectories(str(tmp_path))
    assert list(traj) == ['backbone.stem', 'backbone.layer1', 'neck', 'all']
    steps, values = traj['neck']['var']['BN']
    assert steps == [0, 50, 100] and values == pytest.approx([1 / 3, 0.5, 0.7])
    last = final_shares(traj)
    assert last['all']['mean'][0] == 100
    assert last['all']['mean'][1]['BN'] == pytest.approx(0.7)
    layers = read_trajectories(str(tmp_path), averages=False)
    assert list(layers) == ['backbone.sn1', 'backbone.layer1.0.sn1']  # depth order
    assert set(layers['backbone.layer1.0.sn1']['mean']) == {'IN', 'LN'}
    assert layers['backbone.layer1.0.sn1']['mean']['IN'][1] == pytest.approx([0.5, 0.55, 0.6])
    assert 'var' not in layers['backbone.sn1']
    text = format_trajectories(select(traj, ['all']))
    assert 'all' in text and '0.700' in text and 'neck' not in text
    with pytest.raises(ValueError, match=r"unknown trajectory group\(s\) \['layer9'\]; "
                                         r"available: \['backbone.stem'"):
        select(traj, ['layer9'])
    png = plot_trajectories(traj, str(tmp_path / 'traj.png'), title='tiny')
    assert os.path.getsize(png) > 10000


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='no scalars.json in'):
        find_scalars(str(tmp_path))
    bare = tmp_path / 'scalars.json'
    bare.write_text(json.dumps({'lr': 0.1, 'step': 1}) + '\n')
    with pytest.raises(ValueError, match='no "sn_ratio_avg/<group>/<mean|var>_<IN|LN|BN>" '
                                         'scalars; was the run trained with SNRatioHook'):
        read_trajectories(str(bare))
    bare.write_text('{not json\n')
    with pytest.raises(ValueError, match=r'scalars.json:1: not a JSON line'):
        read_trajectories(str(bare))


def test_cli_plots_the_curves_of_a_real_run(tmp_path, capsys):
    """A Runner with SNRatioHook writes scalars.json; --trajectories reads and plots it."""
    from tests.toy_runner import make_ratio_runner
    runner = make_ratio_runner(tmp_path, dict(type='SNRatioHook', interval=2), max_iters=4)
    runner.train()
    traj = run_trajectories(str(tmp_path))
    assert list(traj) == ['stem', 'layer1', 'layer2', 'all']
    assert traj['all']['mean']['IN'][0] == [0, 2, 4]
    assert set(traj['layer2']['var']['BN'][1]) == {0.0}  # stage of the 2-logit layer
    mean, _ = runner.model.sn1.importance()
    assert traj['stem']['mean']['BN'][1][-1] == pytest.approx(float(mean[2]), abs=1e-6)
    out = capsys.readouterr().out
    assert 'figure written to' in out
    png = out.split('figure written to ')[-1].strip()
    assert png.endswith(osp.join('vis_data', 'sn_trajectories.png')) and osp.getsize(png) > 10000
    layers = run_trajectories(str(tmp_path), str(tmp_path / 'l.png'), ['sn1'], True,
                              quiet=True)
    cli = run_tool('analyze_sn.py', '--trajectories', tmp_path, '--quiet')  # as a user runs it
    assert 'figure written to' in cli
    assert list(layers) == ['sn1']
