"""bench/bench_inference.py on a tiny image: every model has a row whose time parses and
whose ratio to SN agrees with the times; the SSN model was converted (no timing target is
asserted: that is the benchmark's job on an idle machine)."""
import os.path as osp
import re
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
NUMBER = r'[0-9]+(?:\.[0-9]+)?'


def test_bench_inference_times_every_model_relative_to_sn():
    out = subprocess.run([sys.executable, 'bench/bench_inference.py', '--task', 'seg',
                          '--size', '64', '--repeats', '1', '--choice', 'mixed'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True).stdout
    rows = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in
            re.finditer(rf'^\| (SN|SSN->fixed|BN) \| ({NUMBER}) \| ({NUMBER}) \|$', out, re.M)}
    assert list(rows) == ['SN', 'SSN->fixed', 'BN'], out
    sn_ms = rows['SN'][0]
    assert rows['SN'][1] == 1.0 and sn_ms > 0, out
    for name, (ms, ratio) in rows.items():  # ms printed to 0.1, ratio to 0.01
        low = (ms - 0.05) / (sn_ms + 0.05) - 0.005
        high = (ms + 0.05) / (sn_ms - 0.05) + 0.005 if sn_ms > 0.05 else float('inf')
        assert ms > 0 and low <= ratio <= high, (name, ms, ratio, out)
    assert re.search(r'UTC, .* load average [0-9./]+ before, [0-9./]+ after', out), out
    # the SSN model really was converted: BN choices folded, IN choices as SNInstanceNorm,
    # every layer's output deviation measured and small
    totals = re.search(r'# SSN->fixed: totals: (.*); max layer deviation (\S+)', out)
    assert totals, out
    assert 'BatchNorm2d (folded)' in totals.group(1) and 'SNInstanceNorm' in totals.group(1)
    assert float(totals.group(2)) < 1e-3, out
