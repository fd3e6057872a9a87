"""Comparisons over seeds (sn_mm.apis.compare): statistics against published t quantiles
and hand-computed intervals, the run loop's order, progress, ETA and resume, the tables
and files it writes, the expected values the demos print beside their result, and the
one schedule rule of every demo (sn_mm.apis.runner.schedule_options)."""
import csv
import json
import math
import os.path as osp

import pytest
from mmengine.config import Config

from sn_mm.apis import compare
from sn_mm.apis.compare import Row
from sn_mm.apis.expected import expected_line, load_expected, update_expected
from sn_mm.apis.norm_tables import DET_NORMS, SEG_NORMS, det_rows, parse_row_name, seg_rows
from sn_mm.apis.runner import schedule_options

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_DIR = osp.join(ROOT, 'configs', 'mask_rcnn_demo')
SEG_DIR = osp.join(ROOT, 'configs', 'seg_demo')


# Student's t, two-sided 95% (0.975 quantile), from any printed table.
@pytest.mark.parametrize('df,quantile', [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622)])
def test_t_quantile_matches_the_printed_table(df, quantile):
    assert compare.t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-4)


def test_mean_std_and_paired_interval_by_hand():
    assert compare.mean_std([1.0, 2.0, 6.0]) == pytest.approx((3.0, math.sqrt(7.0)))
    assert compare.mean_std([5.0]) == (5.0, 0.0)
    # differences 1, 2, 3: mean 2, sample std 1, half width t(0.975, 2) / sqrt(3)
    d = compare.paired_interval([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert d['n'] == 3 and d['mean'] == pytest.approx(2.0)
    assert (d['lo'], d['hi']) == (pytest.approx(2 - half), pytest.approx(2 + half))
    # pairing: a seed effect common to both rows cancels (std of the rows is large)
    ref = [10.0, 30.0, 50.0]
    d = compare.paired_interval([v + 1.0 for v in ref], ref)
    assert (d['mean'], d['lo'], d['hi']) == pytest.approx((1.0, 1.0, 1.0))
    one = compare.paired_interval([3.0], [1.0])
    assert one == dict(mean=2.0, lo=None, hi=None, n=1)
    with pytest.raises(ValueError, match='equal lengths, got 2 and 1'):
        compare.paired_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match='at least one value'):
        compare.mean_std([])


def _layers(shares):
    return [dict(name=n, mean=list(s), var=list(s)) for n, s in shares.items()]


def test_undecided_layers_need_every_seed():
    third = (1 / 3, 1 / 3, 1 / 3)
    moved = (0.6, 0.2, 0.2)
    runs = [_layers({'a': third, 'b': moved}), _layers({'a': (0.36, 0.32, 0.32), 'b': third})]
    assert compare.undecided_layers(runs) == ['a']
    assert compare.undecided_layers([[], []]) == []


def _fake_result(row, seed):
    """A run's summary whose metric depends on row and seed in a known way."""
    offset = {'sn': 0.0, 'gn': -0.1, 'bn': -0.3}[row.name]
    return dict(metrics={'m': 0.5 + offset + 0.01 * seed}, iterations=7,
                train_seconds_per_iteration=1.0, train_cpu_seconds_per_iteration=2.0,
                sn_layers=_layers({'x': (1 / 3, 1 / 3, 1 / 3)}) if row.name == 'sn' else [])


def _rows():
    return [Row('sn', 'SN', 'sn.py'), Row('gn', 'GN', 'gn.py', reference='sn'),
            Row('bn', 'BN', 'bn.py', reference='sn')]


def test_run_comparison_order_progress_eta_and_resume(tmp_path):
    calls, lines = [], []
    ticks = iter(range(0, 10000, 60))  # every clock() call advances one minute

    def run_one(row, seed, work_dir):
        calls.append((row.name, seed))
        return _fake_result(row, seed)

    rows, seeds = _rows(), [0, 1]
    results = compare.run_comparison(rows, seeds, str(tmp_path), run_one, dict(iters=7),
                                     log=lines.append, clock=lambda: next(ticks))
    assert calls == [('sn', 0), ('sn', 1), ('gn', 0), ('gn', 1), ('bn', 0), ('bn', 1)]
    assert set(results) == set(calls)
    assert lines[0].startswith('[compare] 1/6 row sn (SN), seed 0: running; 6 runs left')
    # after the first run: 5 runs left at the mean duration of the finished ones
    eta = next(l for l in lines if l.startswith('[compare] 2/6'))
    assert 'ETA for the whole comparison' in eta and '5 runs left at' in eta
    assert osp.isfile(tmp_path / 'gn' / 'seed1' / 'result.json')
    # interrupted after 4 runs: remove the last two results; a rerun trains only those
    for name in ('bn',):
        for seed in seeds:
            (tmp_path / name / f'seed{seed}' / 'result.json').unlink()
    calls.clear()
    lines.clear()
    # a report of what has finished trains nothing
    partial = compare.run_comparison(rows, seeds, str(tmp_path), run_one, dict(iters=7),
                                     log=lines.append, run_missing=False)
    assert calls == [] and set(partial) == {('sn', 0), ('sn', 1), ('gn', 0), ('gn', 1)}
    assert sum('not run yet, left out of this report' in l for l in lines) == 2
    summary = compare.summarize(rows, seeds, partial, ['m'])
    assert [e['name'] for e in summary] == ['sn', 'gn']  # rows without runs are left out
    meta = compare.runs_meta(rows, seeds, str(tmp_path), partial)
    assert meta['runs_finished'].endswith(' UTC') and meta['run_load_1min'] is None
    lines.clear()
    again = compare.run_comparison(rows, seeds, str(tmp_path), run_one, dict(iters=7),
                                   log=lines.append, clock=lambda: next(ticks))
    assert calls == [('bn', 0), ('bn', 1)]
    assert again == results
    assert sum('finished earlier, reusing' in l for l in lines) == 4
    # other settings (here: the iterations) do not reuse the stored runs
    calls.clear()
    compare.run_comparison(rows[:1], [0], str(tmp_path), run_one, dict(iters=8),
                           log=lines.append)
    assert calls == [('sn', 0)]


def test_summarize_table_and_files(tmp_path):
    rows, seeds = _rows(), [0, 1, 2]
    results = {(r.name, s): _fake_result(r, s) for r in rows for s in seeds}
    summary = compare.summarize(rows, seeds, results, ['m'])
    sn, gn, bn = summary
    assert sn['metrics']['m']['mean'] == pytest.approx(0.51)
    assert sn['metrics']['m']['std'] == pytest.approx(0.01)
    assert sn['diff'] == {} and sn['undecided_layers'] == ['x']
    assert sn['leanings']['neck + heads']['leans'] == 'undecided' and gn['leanings'] == {}
    # the same seed effect in every row: the paired difference has no spread
    assert gn['diff']['m']['mean'] == pytest.approx(-0.1)
    assert gn['diff']['m']['lo'] == pytest.approx(-0.1)
    table = compare.markdown_table(summary, {'m': 'metric'}, scale=100)
    lines = table.splitlines()
    assert lines[0] == ('| Row | metric (mean ± std) | metric − SN [95% CI] | seeds | '
                        'wall s/iter | CPU s/iter |')
    assert lines[2] == '| SN | 51.0 ± 1.0 | (reference) | 3 | 1.00 | 2.00 |'
    assert lines[4] == '| BN | 21.0 ± 1.0 | -30.0 [-30.0, -30.0] * | 3 | 1.00 | 2.00 |'
    meta = dict(note='the note', iterations=7, date='d', commit='c', threads=1, command='x')
    paths = compare.write_outputs(str(tmp_path), rows, seeds, results, summary, ['m'], table,
                                  meta)
    assert open(paths['table']).read() == table + '\nthe note\n'
    data = json.load(open(paths['json']))
    assert data['seeds'] == seeds and len(data['runs']) == 9
    assert data['summary'][2]['diff']['m']['mean'] == pytest.approx(-0.3)
    runs = list(csv.DictReader(open(paths['csv'])))
    assert [(r['row'], r['seed']) for r in runs][:2] == [('sn', '0'), ('sn', '1')]
    assert float(runs[-1]['m']) == pytest.approx(0.22)
    # the demo values: plain rows only, with their seeds
    rows.append(Row('sn@lr1', 'SN 1x', 'sn.py', {'optim_wrapper.paramwise_cfg.sn_lr_mult': 1.0},
                    reference='sn'))
    results.update({('sn@lr1', s): _fake_result(rows[0], s) for s in seeds})
    entries = compare.expected_entries(rows, compare.summarize(rows, seeds, results, ['m']),
                                       meta)
    assert set(entries) == {'sn', 'gn', 'bn'}
    assert entries['bn']['metrics']['m']['values'] == [0.2, 0.21, 0.22]
    assert entries['bn']['iterations'] == 7 and entries['bn']['seeds'] == seeds


def test_bad_rows_and_seeds_are_named():
    with pytest.raises(ValueError, match=r"duplicates \['sn'\]"):
        compare.check_rows([Row('sn', 'a', 'x'), Row('sn', 'b', 'y')], [0])
    with pytest.raises(ValueError, match="compared to 'nope', which is not a row"):
        compare.check_rows([Row('gn', 'a', 'x', reference='nope')], [0])
    with pytest.raises(ValueError, match=r'seeds must be distinct ints >= 0, got \[1, 1\]'):
        compare.check_rows([Row('sn', 'a', 'x')], [1, 1])
    with pytest.raises(ValueError, match="unknown row 'ln'"):
        parse_row_name('ln', DET_NORMS)


def test_rows_of_the_tools():
    rows = det_rows(['sn', 'gn', 'sn@lr1'], DET_DIR)
    assert [r.reference for r in rows] == [None, 'sn', 'sn']
    assert rows[2].cfg_options == {'optim_wrapper.paramwise_cfg.sn_lr_mult': 1.0}
    assert rows[2].label == 'SN / SN, logits at 1x lr' and not rows[2].plain
    assert all(osp.isfile(r.config) for r in rows)
    seg = seg_rows('deeplabv3', ['sn', 'gn'], ['cityscapes', 'ade20k'], SEG_DIR)
    assert [r.name for r in seg] == ['cityscapes/sn', 'cityscapes/gn', 'ade20k/sn',
                                     'ade20k/gn']
    assert [r.reference for r in seg] == [None, 'cityscapes/sn', None, 'ade20k/sn']
    assert all(osp.isfile(r.config) for r in seg)


def test_every_normalizer_has_its_demo_configs():
    """Every row name of the tables is a demo config that exists (SW and EN included),
    for both segmentation models and layouts; rows without logits refuse '@lr'."""
    assert {'sn', 'ssn', 'sw', 'en'} <= set(DET_NORMS)
    assert {'sn', 'ssn', 'sw', 'en'} <= set(SEG_NORMS)
    rows = det_rows(list(DET_NORMS) + ['sw@lr1'], DET_DIR)
    assert all(osp.isfile(r.config) for r in rows), [r.config for r in rows]
    by_name = {r.name: r for r in rows}
    assert osp.basename(by_name['sw'].config) == 'mask-rcnn_r18_fpn_sw-all_coco-demo.py'
    assert osp.basename(by_name['en'].config) == 'mask-rcnn_r18_fpn_en-all_coco-demo.py'
    assert by_name['sw@lr1'].cfg_options == {'optim_wrapper.paramwise_cfg.sn_lr_mult': 1.0}
    assert by_name['en'].reference == 'sn' and by_name['sw'].label == 'SW / SW (BW+IW)'
    for model in ('deeplabv3', 'deeplabv3plus'):
        seg = seg_rows(model, list(SEG_NORMS), ['cityscapes', 'ade20k'], SEG_DIR)
        assert all(osp.isfile(r.config) for r in seg), [r.config for r in seg]
        assert f'{model}_r18-d8-sw_demo-ade20k.py' in {osp.basename(r.config) for r in seg}
    assert det_rows(['en@lr1'], DET_DIR)[0].cfg_options == {
        'optim_wrapper.paramwise_cfg.sn_lr_mult': 1.0}  # EN's ratio network learns the mixture
    for bad in ('bn@lr1', 'gn@lr10', 'bn_gn-head@lr1'):
        with pytest.raises(ValueError, match=f"row '{bad}': .* has no importance logits"):
            det_rows([bad], DET_DIR)
    with pytest.raises(ValueError, match="row 'syncbn@lr1'"):
        seg_rows('deeplabv3', ['syncbn@lr1'], ['cityscapes'], SEG_DIR)


def test_expected_file_and_the_demo_line(tmp_path):
    path = str(tmp_path / 'expected.json')
    assert load_expected(path) == {}
    entry = dict(iterations=300, seeds=[0, 1, 2], measured='2026-12-03',
                 metrics={'coco/bbox_mAP': dict(mean=0.30, std=0.02, values=[0.28, 0.3, 0.32])})
    update_expected(path, {'demo-a': entry})
    update_expected(path, {'demo-b': dict(entry, iterations=5)})
    expected = load_expected(path)
    assert set(expected) == {'demo-a', 'demo-b'}
    run = dict(config='/x/demo-a.py', iterations=300, metrics={'coco/bbox_mAP': 0.331})
    line = expected_line(run, expected, ['coco/bbox_mAP'], scale=100)
    assert 'bbox_mAP 33.1 vs 30.0 +- 2.0' in line and line.endswith('typical (within mean +- 2 std)')
    far = expected_line(dict(run, metrics={'coco/bbox_mAP': 0.40}), expected, ['coco/bbox_mAP'],
                        scale=100)
    assert far.endswith('OUTSIDE mean +- 2 std of the recorded seeds')
    update_expected(path, {'demo-a': dict(entry, threads=1)})
    two = expected_line(dict(run, torch_threads=2), load_expected(path), ['coco/bbox_mAP'])
    assert 'typical (within mean +- 2 std) (recorded with 1 torch thread(s), this run 2' in two
    assert 'are for 5 iterations; this run trained 300' in expected_line(
        dict(run, config='demo-b.py'), expected, ['coco/bbox_mAP'])
    assert 'no recorded mean +- std for demo-c' in expected_line(
        dict(run, config='demo-c.py'), expected, ['coco/bbox_mAP'])
    (tmp_path / 'bad.json').write_text('[1]')
    with pytest.raises(ValueError, match='"entries" object'):
        load_expected(str(tmp_path / 'bad.json'))


def test_schedule_options_one_rule_for_both_demos():
    det = Config.fromfile(osp.join(DET_DIR, 'mask-rcnn_r18_fpn_sn-all_coco-demo.py'))
    base = det.train_cfg.max_iters
    warm, steps = det.param_scheduler
    options = schedule_options(det, base // 2)
    assert options['train_cfg.max_iters'] == base // 2
    assert options['param_scheduler.0.end'] == round(warm.end / 2)
    assert options['param_scheduler.1.milestones'] == [round(m / 2) for m in steps.milestones]
    assert options['param_scheduler.1.end'] == base // 2
    assert options['default_hooks.checkpoint.interval'] == base // 2
    seg = Config.fromfile(osp.join(SEG_DIR, 'deeplabv3_r18-d8-sn_demo-cityscapes.py'))
    n = seg.train_cfg.max_iters
    options = schedule_options(seg, n // 3)
    warm, poly = seg.param_scheduler
    assert options['param_scheduler.0.end'] == round(warm.end / 3)
    assert options['param_scheduler.1.begin'] == round(poly.begin / 3)
    assert options['param_scheduler.1.end'] == n // 3
    # merged, the config trains n // 3 iterations with the compressed schedule
    seg.merge_from_dict(options)
    assert seg.param_scheduler[1].begin == round(poly.begin / 3)
    tiny = schedule_options(seg, 1)  # every end stays after its begin
    assert tiny['param_scheduler.0.end'] == 1 and tiny['param_scheduler.1.end'] == 2
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match='iters must be an int >= 1'):
            schedule_options(seg, bad)


def test_part_leanings_need_every_seed_and_the_figure(tmp_path):
    from sn_mm.analysis.seed_spread import part_leanings, plot_seed_shares
    lean_in = [dict(name='backbone.a', mean=[0.7, 0.2, 0.1], var=[0.5, 0.3, 0.2]),
               dict(name='neck.b', mean=[0.34, 0.33, 0.33], var=[0.33, 0.34, 0.33])]
    lean_bn = [dict(name='backbone.a', mean=[0.1, 0.2, 0.7], var=[0.2, 0.3, 0.5]),
               dict(name='neck.b', mean=[0.34, 0.33, 0.33], var=[0.33, 0.34, 0.33])]
    agree = part_leanings([lean_in, lean_in])
    assert agree['backbone']['leans'] == 'IN'
    assert agree['backbone']['per_seed'][0] == pytest.approx([0.6, 0.25, 0.15])
    assert agree['neck + heads']['leans'] == 'undecided'
    assert part_leanings([lean_in, lean_bn])['backbone']['leans'] == 'seeds disagree'
    assert part_leanings([[], []]) == {}
    png = plot_seed_shares([('SN', [lean_in, lean_bn])], str(tmp_path / 'f.png'), 'title')
    assert open(png, 'rb').read()[:4] == b'\x89PNG'
    with pytest.raises(ValueError, match='at least one row with SN layers'):
        plot_seed_shares([('BN', [[], []])], str(tmp_path / 'g.png'))
    with pytest.raises(ValueError, match=r"must end in .png, .pdf or .svg, got 'x.txt'"):
        plot_seed_shares([('SN', [lean_in])], 'x.txt')
