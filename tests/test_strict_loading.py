"""The wrong checkpoint is an error, not a random model (issue 20, item 3).

On the old main a BN checkpoint, or one of another width, given to ``init_cfg=Pretrained``
of an SN backbone loaded 0 (or some) of its tensors, logged a warning and trained from
random weights; ``tools/test.py`` evaluated a random model and exited 0.
"""
import re

import pytest
import torch
from mmengine.registry import DefaultScope

import sn_mm  # noqa: F401  'Pretrained' -> SNPretrainedInit
from sn_mm.checkpoint import CheckpointCoverageError, check_coverage, coverage
from sn_mm.engine.pretrained import SNPretrainedInit
from sn_mm.ops import SparseSwitchableNorm, SwitchableNorm
from tests.official_sn import official_sn_checkpoint, torchvision_bn_state_dict


def build_resnet18(checkpoint=None, norm='SN', **init):
    cfg = dict(type='ResNet', depth=18, norm_cfg=dict(type=norm), norm_eval=False)
    if checkpoint is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=str(checkpoint), **init)
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg)


class Tiny(torch.nn.Module):
    def __init__(self, width=4, norm=SwitchableNorm):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3)
        self.norm = norm(width)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('strict')
    torch.save(dict(state_dict=torchvision_bn_state_dict(18)), root / 'bn.pth')
    torch.save(official_sn_checkpoint(18, seed=3), root / 'sn.pth')
    torch.save(dict(state_dict=Tiny(8).state_dict()), root / 'tiny8.pth')
    torch.save(dict(state_dict=Tiny(4).state_dict()), root / 'tiny4.pth')
    return root


def test_bn_checkpoint_into_sn_backbone_is_an_error_listing_the_missing(files):
    model = build_resnet18(files / 'bn.pth')
    with pytest.raises(CheckpointCoverageError) as info:
        model.init_weights()
    message = str(info.value)
    assert message.startswith(f'{files / "bn.pth"} does not cover the ResNet')
    assert re.search(r'it holds \d+ of its \d+ tensors', message)
    assert 'missing (' in message and 'sn1.mean_weight' in message
    assert "partial=True" in message


def test_other_width_is_an_error_listing_the_mismatch(files):
    with pytest.raises(CheckpointCoverageError,
                       match=r'shape mismatch \(\d+\): conv\.weight: checkpoint \(8, 3, 3, 3\) '
                             r'vs model \(4, 3, 3, 3\)'):
        SNPretrainedInit(checkpoint=str(files / 'tiny8.pth'))(Tiny(4))


def test_nothing_is_copied_before_the_error(files):
    model = Tiny(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointCoverageError):
        SNPretrainedInit(checkpoint=str(files / 'tiny8.pth'))(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_full_sn_checkpoint_loads_every_tensor(files):
    model = build_resnet18(files / 'sn.pth')
    model.init_weights()
    official = official_sn_checkpoint(18, seed=3)['state_dict']
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, official['module.' + key].reshape(value.shape),
                                   rtol=0, atol=0)


def test_partial_is_explicit_and_loads_what_matches(files):
    model = build_resnet18(files / 'bn.pth', partial=True)
    model.init_weights()  # mmengine's behaviour: load what matches, log the rest
    bn = torchvision_bn_state_dict(18)
    torch.testing.assert_close(model.conv1.weight.detach(), bn['conv1.weight'], rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"partial must be a bool .*'yes'"):
        SNPretrainedInit(checkpoint=str(files / 'bn.pth'), partial='yes')


def test_models_without_sn_keep_mmengine_behaviour(files):
    model = build_resnet18(files / 'sn.pth', norm='BN')  # a mismatch: logged, not raised
    model.init_weights()


def test_sn_checkpoint_into_ssn_needs_no_radius(files):
    SNPretrainedInit(checkpoint=str(files / 'tiny4.pth'))(Tiny(4, SparseSwitchableNorm))
    with pytest.raises(CheckpointCoverageError, match='norm.weight'):
        state = Tiny(4, SparseSwitchableNorm).state_dict()
        del state['norm.weight']
        torch.save(state, files / 'ssn_missing.pth')
        SNPretrainedInit(checkpoint=str(files / 'ssn_missing.pth'))(
            Tiny(4, SparseSwitchableNorm))


def test_coverage_ignores_counters_and_extra_keys():
    model = {'a.weight': torch.zeros(2), 'bn.num_batches_tracked': torch.tensor(0)}
    assert coverage(model, {'a.weight': torch.ones(2), 'fc.weight': torch.ones(3)}) == ([], [])
    assert coverage(model, {}) == (['a.weight'], [])
    assert check_coverage(model, {'a.weight': torch.ones(2)}, 'f.pth') == 2


# --------------------------------------------------------------- tools/test.py
def test_tools_test_refuses_a_checkpoint_that_does_not_cover_the_model(tmp_path):
    """The real tool on the SN detection demo config, with a BN Mask R-CNN-like file: exit
    status 2 and the list, before any evaluation. ``--allow-partial`` goes past the check."""
    from tests.cli import ROOT, run_tool
    config = f'{ROOT}/configs/mask_rcnn_demo/mask-rcnn_r18_fpn_sn-all_coco-demo.py'
    bn = tmp_path / 'bn_backbone.pth'
    torch.save(dict(state_dict={f'backbone.{k}': v
                                for k, v in torchvision_bn_state_dict(18).items()}), bn)
    out = run_tool('test.py', config, bn, '--work-dir', tmp_path / 'wd', expect_rc=2)
    assert f'error: {bn} does not cover the model of {config}' in out
    assert 'backbone.sn1.mean_weight' in out and 'pass --allow-partial' in out
    assert 'Traceback' not in out
