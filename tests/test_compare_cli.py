"""The command-line part both comparison tools share (sn_mm.apis.compare_cli): the same
options and checks in tools/compare_norms_det.py and tools/compare_norms_seg.py, and the
report they write after the runs."""
import importlib.util
import json
import os.path as osp

import pytest

from sn_mm.apis import compare, compare_cli
from sn_mm.apis.expected import load_expected

from .test_compare_seeds import _fake_result, _rows

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'tools', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('name,data_root', [('compare_norms_det', 'data/coco_demo'),
                                            ('compare_norms_seg', 'data/seg_demo')])
def test_both_tools_take_the_common_options(name, data_root):
    tool = _tool(name)
    args = tool.parse_args([])
    assert args.rows == tool.DEFAULT_ROWS and args.seeds == [0, 1, 2]
    assert (args.iters, args.threads, args.report_only, args.write_expected) == \
        (None, 1, False, None)
    assert args.data_root == data_root and args.work_dir == f'work_dirs/{name}'
    args = tool.parse_args(['--norms', 'sn', 'gn', '--seeds', '3', '--iters', '2',
                            '--report-only', '--write-expected', 'e.json'])
    assert args.rows == ['sn', 'gn'] and args.seeds == [3] and args.iters == 2
    assert args.report_only and args.write_expected == 'e.json'
    assert [r.name.split('/')[-1] for r in args.row_list][:2] == ['sn', 'gn']


@pytest.mark.parametrize('name,option', [('compare_norms_det', '--iters'),
                                         ('compare_norms_det', '--num-val'),
                                         ('compare_norms_seg', '--threads')])
def test_counts_below_one_are_named(name, option, capsys):
    with pytest.raises(SystemExit):
        _tool(name).parse_args([option, '0'])
    assert f'{option} must be >= 1, got 0' in capsys.readouterr().err


def test_bad_rows_and_seeds_are_argparse_errors(capsys):
    with pytest.raises(SystemExit):
        _tool('compare_norms_det').parse_args(['--rows', 'ln'])
    assert "unknown row 'ln'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _tool('compare_norms_seg').parse_args(['--seeds', '1', '1'])
    assert 'seeds must be distinct' in capsys.readouterr().err


def test_run_meta_names_the_command():
    class Args:
        threads, seeds = 1, [0, 2]
    meta = compare_cli.run_meta(Args, ROOT, 'tools/x.py', ['--seeds', '0', '2'])
    assert meta['command'] == 'python tools/x.py --seeds 0 2' and meta['seeds'] == [0, 2]
    assert meta['threads'] == 1 and 'commit' in meta


def test_write_report(tmp_path, capsys):
    rows, seeds = _rows(), [0, 1, 2]
    results = {(r.name, s): _fake_result(r, s) for r in rows for s in seeds}
    summary = compare.summarize(rows, seeds, results, ['m'])
    table = compare.markdown_table(summary, {'m': 'metric'})

    class Args:
        row_list, write_expected = rows, str(tmp_path / 'expected.json')
    Args.seeds = seeds
    meta = dict(note='the note', iterations=7, date='d', commit='c', threads=1, command='x')
    paths = compare_cli.write_report(Args, str(tmp_path), results, summary, ['m'], table, meta)
    out = capsys.readouterr().out
    assert open(paths['table']).read() == table + '\n' + meta['note'] + '\n'
    assert meta['note'].startswith('the note')
    assert json.load(open(paths['json']))['seeds'] == seeds
    assert set(load_expected(Args.write_expected)) == {'sn', 'gn', 'bn'}
    # the SN row's one layer stayed at 1/3 on every seed: named in the output
    assert "1 of 1 SN layers within 0.05 of 1/3 on every seed: x" in out
    assert f'[compare] table: {paths["table"]}' in out
