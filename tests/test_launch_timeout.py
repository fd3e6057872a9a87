"""The CPU launcher honours ``env_cfg.dist_cfg.timeout`` (issue 20, item 5).

On the old main ``setup_cpu_distributed`` called ``init_process_group('gloo')`` without
it, so a hang could only end at gloo's default of 30 minutes."""
import os
import subprocess
import sys

import pytest
import torch

from tests.cli import ROOT

SCRIPT = '''
import socket, sys
from datetime import timedelta
import torch.distributed as dist
from mmengine.config import Config
from sn_mm.engine.launch import setup_cpu_distributed
cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo', {extra}))))
assert setup_cpu_distributed(cfg)
print('STORE_TIMEOUT', dist.distributed_c10d._get_default_store().timeout.total_seconds())
'''


def _run(extra):
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(port), PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, '-c', SCRIPT.format(extra=extra)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the launcher only acts without CUDA')
@pytest.mark.parametrize('extra,expected', [('timeout=7', 7.0), ('timeout=90.5', 90.5),
                                            ('', 1800.0)])
def test_dist_cfg_timeout_reaches_the_process_group(extra, expected):
    proc = _run(extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'STORE_TIMEOUT {expected}' in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason='the launcher only acts without CUDA')
@pytest.mark.parametrize('bad', ['0', '-5', "'60'", 'True'])
def test_bad_timeout_is_named(bad):
    proc = _run(f'timeout={bad}')
    assert proc.returncode != 0
    assert 'env_cfg.dist_cfg.timeout must be a positive number of seconds' in proc.stderr
