"""bench/bench_sn.py keeps running (a smoke test on tiny shapes; no timing is asserted)."""
import os.path as osp
import re
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_bench_sn_quick_prints_every_column():
    out = subprocess.run([sys.executable, 'bench/bench_sn.py', '--quick', '--rounds', '1'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith('| (')]
    assert len(rows) == 2, out
    for row in rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        assert len(cells) == 13, row
        assert all(re.fullmatch(r'[0-9.]+', c) for c in cells[1:11]), row  # times, ratios, saved
        assert 'n/a' not in cells[11], row  # peak memory measured (Linux /proc)
    assert re.search(r'Median over shapes: SN/BN [0-9.]+, SyncSN/BN [0-9.]+', out), out
