"""The pure-torch parts import and work with every OpenMMLab package unavailable.

``sn_mm.ops`` (the layers and custom ops) and ``sn_mm.deploy`` (``to_fixed_norms`` and the
fixed layers) must run on a machine with torch alone. Each case runs in a fresh Python
process in which ``mmengine``, ``mmcv``, ``mmdet`` and ``mmseg`` look uninstalled
(``sys.modules[name] = None``, what ``import`` and ``importlib.util.find_spec`` treat as
absent) and a ``sys.meta_path`` finder raises for any other module whose top-level name
starts with ``mm`` (the standard library's ``mmap`` excepted); the process then asserts
that no such module was imported.
"""
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

BLOCK_MM = textwrap.dedent('''
    import sys

    BLOCKED = ('mmengine', 'mmcv', 'mmdet', 'mmseg')
    for name in BLOCKED:
        sys.modules[name] = None  # import raises ModuleNotFoundError; find_spec gives None


    def is_openmmlab(name):
        top = name.split('.')[0]
        return top.startswith('mm') and top not in sys.stdlib_module_names  # not mmap


    class BlockMM:
        """Raise for any mm* module, so that an import the None entries miss fails too."""

        def find_spec(self, name, path=None, target=None):
            if is_openmmlab(name):
                raise ModuleNotFoundError(f'blocked by the test: {name}', name=name)
            return None


    sys.meta_path.insert(0, BlockMM())
''')

CHECK_NO_MM = textwrap.dedent('''
    loaded = sorted(m for m, v in sys.modules.items() if v is not None and is_openmmlab(m))
    assert not loaded, loaded
    print('ok')
''')

CASES = {
    'sn_mm.ops': '''
        import torch
        import sn_mm.ops
        from sn_mm.ops import SwitchableNorm
        layer = SwitchableNorm(4)
        x = torch.randn(2, 4, 3, 3, requires_grad=True)
        y = layer(x)
        assert y.shape == (2, 4, 3, 3)
        y.square().sum().backward()
        assert torch.isfinite(x.grad).all() and layer.mean_weight.grad is not None
    ''',
    'sn_mm.deploy': '''
        import torch
        from torch import nn
        import sn_mm.deploy
        from sn_mm.deploy import to_fixed_norms
        from sn_mm.deploy.fixed_norms import FixedMixtureNorm
        from sn_mm.ops import SwitchableNorm
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4)).eval()
        with torch.no_grad():
            model[1].mean_weight.copy_(torch.tensor([0.0, 9.0, 0.0]))
            model[1].var_weight.copy_(torch.tensor([9.0, 0.0, 0.0]))
        conversion = to_fixed_norms(model, forward=lambda m: m(torch.randn(2, 3, 6, 6)))
        assert isinstance(conversion.model[1], FixedMixtureNorm), conversion.model
        assert conversion.layers[0].max_deviation < 1e-5, conversion.layers
    ''',
}


def run_blocked(body: str) -> subprocess.CompletedProcess:
    code = BLOCK_MM + textwrap.dedent(body) + CHECK_NO_MM
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('module', sorted(CASES))
def test_imports_and_runs_without_any_mm_package(module):
    proc = run_blocked(CASES[module])
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]


def test_the_block_really_blocks():
    """The same harness makes ``import sn_mm.deploy.mm`` fail (it needs mmengine)."""
    proc = run_blocked('import sn_mm.deploy.mm\n')
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('ModuleNotFoundError: ') and "'mmengine" in last, proc.stderr
