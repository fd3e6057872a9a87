"""bench/bench_sn.py keeps running (a smoke test on tiny shapes; no timing is asserted)."""
import os.path as osp
import re
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_bench_sn_quick_prints_every_column():
    out = subprocess.run([sys.executable, 'bench/bench_sn.py', '--quick', '--rounds', '1',
                          '--skip-compile'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith('| (')]
    float32_rows = [r for r in rows if len(r.strip('|').split('|')) == 13]
    autocast_rows = [r for r in rows if len(r.strip('|').split('|')) == 5]
    assert len(float32_rows) == 2 and len(autocast_rows) == 2, out
    for row in float32_rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        assert all(re.fullmatch(r'[0-9.]+', c) for c in cells[1:11]), row  # times, ratios, saved
        assert 'n/a' not in cells[11], row  # peak memory measured (Linux /proc)
    for row in autocast_rows:  # BN and SN bf16 times, their ratio, saved bytes ratio
        cells = [c.strip() for c in row.strip('|').split('|')]
        assert all(re.fullmatch(r'[0-9.]+', c) for c in cells[1:]), row
    assert re.search(r'Median over shapes: SN/BN [0-9.]+, SyncSN/BN [0-9.]+', out), out
    assert re.search(r'SN/BN bfloat16 [0-9.]+ \(saved [0-9.]+\)', out), out
    assert re.search(r'fixed cost \(2, 256, 2, 2\).*SN/BN [0-9.]+', out), out


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
