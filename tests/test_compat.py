"""sn_mm.compat: what ``import sn_mm`` replaces in mmengine, and that it is inert where the
installed versions do not need it."""
import pytest
from mmengine.model.weight_init import PretrainedInit
from mmengine.registry import WEIGHT_INITIALIZERS
from mmengine.runner.checkpoint import CheckpointLoader

import sn_mm  # noqa: F401  (applies compat.install())
from sn_mm import compat
from sn_mm import checkpoint as safe_ckpt
from sn_mm.engine.pretrained import SNPretrainedInit


@pytest.fixture
def saved_registries():
    """Put back mmengine's scheme table and 'Pretrained' entry after the test."""
    schemes = dict(CheckpointLoader._schemes)
    pretrained = WEIGHT_INITIALIZERS.get('Pretrained')
    yield
    CheckpointLoader._schemes.clear()
    CheckpointLoader._schemes.update(schemes)
    WEIGHT_INITIALIZERS.register_module(name='Pretrained', module=pretrained, force=True)


def test_version_rule():
    assert not compat.needs_safe_loaders('2.5.1')
    assert not compat.needs_safe_loaders('1.13.1+cu117')
    assert compat.needs_safe_loaders('2.6.0')
    assert compat.needs_safe_loaders('2.13.0+cpu')
    assert compat.needs_safe_loaders('3.0.0a0')
    with pytest.raises(ValueError, match="cannot read a torch version from 'nightly'"):
        compat.needs_safe_loaders('nightly')


def test_installed_on_this_torch():
    """The running torch (the tested 2.13) needs both overrides; import sn_mm applied them."""
    assert compat.needs_safe_loaders()
    assert set(CheckpointLoader._schemes.values()) <= {loader for _, loader in safe_ckpt.SCHEMES}
    assert WEIGHT_INITIALIZERS.get('Pretrained') is SNPretrainedInit


def test_inert_on_torch_without_the_weights_only_default(saved_registries):
    """torch < 2.6: mmengine's own loaders stay in place; only 'Pretrained' is replaced."""
    mmengine_loaders = {prefix: object() for prefix in CheckpointLoader._schemes}
    CheckpointLoader._schemes.clear()
    CheckpointLoader._schemes.update(mmengine_loaders)
    WEIGHT_INITIALIZERS.register_module(name='Pretrained', module=PretrainedInit, force=True)

    assert compat.install(torch_version='2.5.1') == ["WEIGHT_INITIALIZERS['Pretrained']"]
    assert CheckpointLoader._schemes == mmengine_loaders
    assert WEIGHT_INITIALIZERS.get('Pretrained') is SNPretrainedInit

    assert compat.install(torch_version='2.6.0') == list(compat.OVERRIDES)
    assert all(CheckpointLoader._schemes[p] is not v for p, v in mmengine_loaders.items())
