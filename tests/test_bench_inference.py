"""bench/bench_inference.py keeps running (a smoke test on a tiny image; no timing asserted)."""
import os.path as osp
import re
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_bench_inference_prints_every_model():
    out = subprocess.run([sys.executable, 'bench/bench_inference.py', '--task', 'seg',
                          '--size', '64', '--repeats', '1', '--choice', 'mixed'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True).stdout
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r'^\| (SN|SSN->fixed|BN) \| ([0-9.]+) \| [0-9.]+ \|$', out, re.M)}
    assert set(rows) == {'SN', 'SSN->fixed', 'BN'}, out
    assert re.search(r'UTC, .* load average [0-9./]+ before, [0-9./]+ after', out), out
    assert 'BatchNorm2d (folded)' in out and 'SNInstanceNorm' in out, out
