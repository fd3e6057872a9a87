"""``SN_MM_KERNELS=triton``: the public layers run the op through the Triton kernels.

On a machine without a GPU the kernels run on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``), in a subprocess because both variables are read at import.
The kernels themselves are checked in depth by tests/test_triton_kernels.py.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip('triton')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_public_layers_use_the_triton_kernels_and_match_the_reference():
    env = dict(os.environ, SN_MM_KERNELS='triton', TRITON_INTERPRET='1',
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'triton_layer_check.py')],
                            env=env, capture_output=True, text=True, timeout=1200)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'ALL OK' in result.stdout
    assert result.stdout.count('launches forward') == 9
