"""bench/bench_sn.py --quick on tiny shapes: every table row is present and its numbers
parse and agree with each other (no timing target is asserted: that is the benchmark's job
on an idle machine, docs/benchmarks.md)."""
import os.path as osp
import re
import statistics
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICK_SHAPES = ['(2, 64, 32, 32)', '(2, 128, 16, 16)']  # bench_sn.QUICK_SHAPES
NUMBER = r'[0-9]+(?:\.[0-9]+)?'


def ratio_agrees(ratio: float, num: float, den: float, step: float, ratio_step: float):
    """``ratio`` (printed to ``ratio_step``) is num/den for some values that print as
    ``num`` and ``den`` (printed to ``step``)."""
    half, r_half = step / 2, ratio_step / 2
    low = (num - half) / (den + half)
    high = (num + half) / (den - half) if den > half else float('inf')
    return low - r_half <= ratio <= high + r_half


def cells(row):
    return [c.strip() for c in row.strip().strip('|').split('|')]


@pytest.fixture(scope='module')
def quick_output():
    return subprocess.run([sys.executable, 'bench/bench_sn.py', '--quick', '--rounds', '1',
                           '--skip-compile'], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=True).stdout


def section(out, title):
    """The table rows (``| (shape) | ...``) of the section whose heading starts ``title``."""
    text = out.split(f'## {title}', 1)[1].split('\n## ', 1)[0]
    return [line for line in text.splitlines() if line.startswith('| (')], text


def test_bench_sn_quick_float32_table_has_every_shape_and_consistent_ratios(quick_output):
    rows, text = section(quick_output, 'ResNet-50 shapes')
    assert [cells(r)[0] for r in rows] == QUICK_SHAPES, quick_output
    sn_ratios = []
    for row in rows:
        c = cells(row)
        assert len(c) == 13, row
        assert all(re.fullmatch(NUMBER, x) for x in c[1:11]), row
        bn, gn, sn, sync, naive = map(float, c[1:6])
        r_sn, r_sync, r_naive, r_gn, saved = map(float, c[6:11])
        for ratio, num in ((r_sn, sn), (r_sync, sync), (r_naive, naive), (r_gn, gn)):
            assert ratio > 0 and ratio_agrees(ratio, num, bn, 0.1, 0.01), row
        assert 0 < saved <= 1.05, row  # the saved-bytes target (tests/test_saved_memory.py)
        peaks = re.fullmatch(r'(\d+), (\d+), (\d+)', c[11])  # MiB SN, BN, naive (Linux /proc)
        assert peaks, row
        assert re.fullmatch(NUMBER, c[12]) and float(c[12]) > 0, row
        sn_ratios.append(r_sn)
    median = re.search(rf'Median over shapes: SN/BN ({NUMBER}), SyncSN/BN ({NUMBER})', text)
    assert median, text
    assert float(median.group(1)) == pytest.approx(statistics.median(sn_ratios), abs=0.01)


def test_bench_sn_quick_autocast_table_has_every_shape_and_consistent_ratios(quick_output):
    rows, text = section(quick_output, 'Low precision')
    assert [cells(r)[0] for r in rows] == QUICK_SHAPES, quick_output
    ratios = []
    for row in rows:  # BN and SN bf16 ms, their ratio, saved-bytes ratio
        c = cells(row)
        assert len(c) == 5 and all(re.fullmatch(NUMBER, x) for x in c[1:]), row
        bn, sn, ratio, saved = map(float, c[1:])
        assert ratio > 0 and ratio_agrees(ratio, sn, bn, 0.1, 0.01), row
        assert 0 < saved <= 1.05, row
        ratios.append(ratio)
    median = re.search(rf'SN/BN bfloat16 ({NUMBER}) \(saved ({NUMBER})\)', text)
    assert median, text
    assert float(median.group(1)) == pytest.approx(statistics.median(ratios), abs=0.01)


def test_bench_sn_quick_fixed_cost_line_is_consistent(quick_output):
    line = re.search(rf'\| fixed cost \(2, 256, 2, 2\).*\| SN ({NUMBER}) ms \| BN ({NUMBER}) ms '
                     rf'\| SN/BN ({NUMBER}) \| op: (sn_mm::\w+) \|', quick_output)
    assert line, quick_output
    sn, bn, ratio = (float(line.group(i)) for i in (1, 2, 3))
    assert sn > 0 and bn > 0 and ratio_agrees(ratio, sn, bn, 0.001, 0.01), line.group(0)


def test_bench_sw_quick_prints_every_column():
    """bench/bench_sw.py: float32 and bf16 tables, 5 variants with saved bytes, 3 ratios."""
    out = subprocess.run([sys.executable, 'bench/bench_sw.py', '--quick', '--rounds', '1'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    assert re.search(r'goal: SW\(BW\+IW\) fwd\+bwd <= 2.0 x \(BN \+ floor\)', out), out
    assert 'Per-group matrix cost' in out
    rows = [line for line in out.splitlines() if line.startswith('| (')]
    assert len(rows) == 4, out  # 2 shapes x (float32, autocast bf16)
    for row in rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        assert len(cells) == 9, row
        assert all(re.fullmatch(r'[0-9.]+ \([0-9.]+\)', c) for c in cells[1:6]), row
        assert all(re.fullmatch(r'[0-9.]+x', c) for c in cells[6:]), row
