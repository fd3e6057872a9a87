"""Checkpoints are read in one module, ``sn_mm.checkpoint`` (issue 17, item 5).

Its readers (analysis, the converter, export, deploy, ``Pretrained``, ``tools/test.py``)
do not unwrap, strip or ``torch.load`` checkpoints themselves; ``engine`` and ``analysis``
do not import each other in a cycle; ``convert_checkpoint.py print`` shows SSN shares
with sparsestmax (the old main showed softmax).
"""
import ast
import os.path as osp
from collections import OrderedDict

import pytest
import torch

import sn_mm
from sn_mm.checkpoint_convert import describe_sn
from sn_mm.ops import SparseSwitchableNorm, SwitchableNorm, sparsestmax
from tests.cli import run_tool

PACKAGE = osp.dirname(sn_mm.__file__)


def _imports(path):
    """Absolute names of every module imported by a file (function-local imports too)."""
    tree = ast.parse(open(path).read())
    package = 'sn_mm.' + osp.relpath(osp.dirname(path), PACKAGE).replace(osp.sep, '.')
    package = package.rstrip('.').replace('sn_mm..', 'sn_mm.')
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f'{module}.{alias.name}' for alias in node.names)
    return names


def _files(subpackage):
    import glob
    return sorted(glob.glob(osp.join(PACKAGE, subpackage, '*.py')))


def test_no_import_cycle_between_engine_and_analysis():
    analysis_to_engine = {f: n for f in _files('analysis')
                          for n in _imports(f) if n.startswith('sn_mm.engine')}
    pretrained = _imports(osp.join(PACKAGE, 'engine', 'pretrained.py'))
    assert not analysis_to_engine, analysis_to_engine
    assert not any(n.startswith('sn_mm.analysis') for n in pretrained)
    assert not any(n.startswith(('sn_mm.analysis', 'sn_mm.engine'))
                   for n in _imports(osp.join(PACKAGE, 'checkpoint.py')))


READERS = ['analysis/ratios.py', 'checkpoint_convert.py', 'apis/export.py', 'deploy/mm.py',
           'engine/pretrained.py']


@pytest.mark.parametrize('reader', READERS)
def test_readers_use_the_checkpoint_module(reader):
    path = osp.join(PACKAGE, reader)
    source = open(path).read()
    assert any(n.startswith('sn_mm.checkpoint') for n in _imports(path)), reader
    for own in ('torch.load(', 'safe_load(', "startswith('module.')", '_load_checkpoint('):
        assert own not in source, f'{reader} reads or unwraps checkpoints itself: {own}'
    assert not (set(_imports(path)) & {'sn_mm.engine.checkpoint'})


def _ssn_state(radius, fixed=False):
    layer = SparseSwitchableNorm(4)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([2.0, 0.5, -1.0]))
        layer.var_weight.copy_(torch.tensor([0.2, 0.1, 0.3]))
    layer.set_radius(radius)
    if fixed:
        layer.mean_fixed.fill_(True)
    return OrderedDict((f'layer1.0.sn1.{k}', v) for k, v in layer.state_dict().items())


@pytest.mark.parametrize('radius,fixed', [(0.0, False), (0.3, False), (0.6, True)])
def test_describe_sn_uses_sparsestmax_for_ssn_layers(radius, fixed):
    state = _ssn_state(radius, fixed)
    row, = describe_sn(state)
    logits = state['layer1.0.sn1.mean_weight'].double()
    expected = (torch.nn.functional.one_hot(logits.argmax(), 3).double() if fixed
                else sparsestmax(logits, radius))
    torch.testing.assert_close(torch.tensor(row['mean'], dtype=torch.float64), expected)
    torch.testing.assert_close(
        torch.tensor(row['var'], dtype=torch.float64),
        sparsestmax(state['layer1.0.sn1.var_weight'].double(), radius))
    if radius > 0:  # sparsestmax at a radius > 0 differs from softmax
        assert not torch.allclose(torch.tensor(row['mean'], dtype=torch.float64),
                                  torch.softmax(logits, 0))


def test_print_tool_shows_sparsestmax_shares_for_ssn(tmp_path):
    state = _ssn_state(0.6)
    state.update((f'layer1.0.sn2.{k}', v) for k, v in SwitchableNorm(4).state_dict().items())
    torch.save(dict(state_dict=state), tmp_path / 'ssn.pth')
    lines = run_tool('convert_checkpoint.py', '--print', tmp_path / 'ssn.pth',
                     stdout_only=True).splitlines()
    row = next(line for line in lines if line.startswith('layer1.0.sn1 '))
    numbers = [float(t) for t in row.replace('|', ' ').split() if '.' in t and t[0] != 'l']
    expected = torch.cat([sparsestmax(state['layer1.0.sn1.mean_weight'].double(), 0.6),
                          sparsestmax(state['layer1.0.sn1.var_weight'].double(), 0.6)])
    torch.testing.assert_close(torch.tensor(numbers, dtype=torch.float64), expected,
                               atol=6e-4, rtol=0)
