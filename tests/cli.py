"""Run a command-line tool of the repository the way a user does: ``python tools/X.py``."""
import os
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run_tool(tool: str, *args, expect_rc: int = 0, stdout_only: bool = False,
             timeout: float = 300) -> str:
    """Run ``tools/<tool>`` with ``args`` from the repository root (this checkout's
    ``sn_mm`` first on the path); asserts the exit status and returns stdout + stderr
    (only stdout with ``stdout_only``)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    proc = subprocess.run([sys.executable, osp.join('tools', tool), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect_rc, (
        f'tools/{tool} {" ".join(map(str, args))}: exit status {proc.returncode}, expected '
        f'{expect_rc}:\n{out[-4000:]}')
    return proc.stdout if stdout_only else out
