"""SNRatioHook on a real mmengine Runner: scalars land in the visualizer's scalars.json and
the message hub, per layer, per stage and overall, at the configured iterations."""
import glob
import json
import os

import pytest
from mmengine.registry import HOOKS
from torch import nn

import sn_mm  # noqa: F401  (registers SNRatioHook: sn_mm/registry.py)
from sn_mm.analysis import ratios_from_checkpoint
from sn_mm.engine.sn_ratio_hook import SNRatioHook, ratio_scalars
from tests.toy_runner import TinySNNet, make_ratio_runner


def _read_scalars(work_dir, prefix='sn_ratio'):
    files = glob.glob(os.path.join(str(work_dir), '*', 'vis_data', 'scalars.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [line for line in lines if any(k.startswith(prefix) for k in line)]


def test_hook_is_registered_in_root_hooks():
    assert HOOKS.get('SNRatioHook') is SNRatioHook


def test_hook_logs_scalars_on_a_real_runner(tmp_path):
    runner = make_ratio_runner(tmp_path, dict(type='SNRatioHook', interval=2),
                               checkpoint=dict(type='CheckpointHook', interval=5, by_epoch=False))
    runner.train()
    logged = _read_scalars(tmp_path)
    assert [line['step'] for line in logged] == [0, 2, 4, 5]  # start, every 2, last

    first, last = logged[0], logged[-1]
    assert first['sn_ratio/sn1/mean_BN'] == pytest.approx(1 / 3, abs=1e-6)
    assert first['sn_ratio/layer2.0.sn1/var_IN'] == pytest.approx(0.5, abs=1e-6)
    assert 'sn_ratio/layer2.0.sn1/mean_BN' not in first  # 2-logit layer: no BN share
    model = runner.model
    for name, layer in (('sn1', model.sn1), ('layer1.0.sn1', model.layer1[0].sn1),
                        ('layer2.0.sn1', model.layer2[0].sn1)):
        mean, var = layer.importance()
        for k, branch in enumerate(('IN', 'LN', 'BN')[:mean.numel()]):
            assert last[f'sn_ratio/{name}/mean_{branch}'] == pytest.approx(float(mean[k]), abs=1e-6)
            assert last[f'sn_ratio/{name}/var_{branch}'] == pytest.approx(float(var[k]), abs=1e-6)
    # the logits did learn, so the logged values moved away from the uniform start
    assert abs(last['sn_ratio/sn1/mean_BN'] - 1 / 3) > 1e-4

    # stage and overall averages (unweighted over the layers of the stage)
    assert last['sn_ratio_avg/stem/mean_IN'] == pytest.approx(last['sn_ratio/sn1/mean_IN'])
    assert last['sn_ratio_avg/layer2/var_BN'] == 0.0
    overall = sum(last[f'sn_ratio/{n}/mean_IN'] for n in ('sn1', 'layer1.0.sn1', 'layer2.0.sn1'))
    assert last['sn_ratio_avg/all/mean_IN'] == pytest.approx(overall / 3, abs=1e-6)

    # the runner's own checkpoint, read back by the analysis tools, gives the same shares
    saved = {l.name: l for l in ratios_from_checkpoint(str(tmp_path / 'iter_5.pth'))}
    assert set(saved) == {'sn1', 'layer1.0.sn1', 'layer2.0.sn1'}
    assert saved['layer1.0.sn1'].var[1] == pytest.approx(last['sn_ratio/layer1.0.sn1/var_LN'],
                                                         abs=1e-6)
    assert saved['layer2.0.sn1'].mean[0] == pytest.approx(
        last['sn_ratio/layer2.0.sn1/mean_IN'], abs=1e-6)

    # the message hub holds the latest values
    hub = runner.message_hub
    assert hub.get_scalar('sn_ratio/layer1.0.sn1/var_LN').current() == pytest.approx(
        last['sn_ratio/layer1.0.sn1/var_LN'])
    assert hub.get_scalar('sn_ratio_avg/all/mean_BN').current() == pytest.approx(
        last['sn_ratio_avg/all/mean_BN'])


def test_hook_options(tmp_path):
    runner = make_ratio_runner(tmp_path, dict(type='SNRatioHook', interval=3, per_layer=False,
                                              log_start=False, prefix='snr'), max_iters=3)
    runner.train()
    logged = _read_scalars(tmp_path, prefix='snr')
    assert [line['step'] for line in logged] == [3]
    keys = set(logged[0]) - {'step'}
    assert keys and all(k.startswith('snr_avg/') for k in keys)
    assert {k.split('/')[1] for k in keys} == {'stem', 'layer1', 'layer2', 'all'}


def test_ratio_scalars_and_bad_arguments():
    scalars = ratio_scalars(TinySNNet(), per_stage=False)
    assert len([k for k in scalars if k.startswith('sn_ratio/')]) == 6 + 6 + 4
    assert set(k for k in scalars if k.startswith('sn_ratio_avg/')) == {
        f'sn_ratio_avg/all/{kind}_{b}' for kind in ('mean', 'var') for b in ('IN', 'LN', 'BN')}
    with pytest.raises(ValueError, match='interval must be a positive int, got 0'):
        SNRatioHook(interval=0)
    with pytest.raises(ValueError, match='prefix'):
        SNRatioHook(prefix='')


class _TinyBNNet(TinySNNet):
    """TinySNNet with every SN replaced by BatchNorm2d (a BN config sharing the hook)."""

    def __init__(self):
        super().__init__()
        for parent in [self, self.layer1[0], self.layer2[0]]:
            parent.sn1 = nn.BatchNorm2d(4)


@pytest.mark.parametrize('skip', [True, False])
def test_model_without_sn_is_skipped_only_when_asked(tmp_path, skip):
    runner = make_ratio_runner(
        tmp_path, dict(type='SNRatioHook', interval=1, skip_without_sn=skip), max_iters=2,
        model=_TinyBNNet(), lr=0.1)
    if not skip:
        with pytest.raises(ValueError, match='no SwitchableNorm layer found'):
            runner.train()
        return
    runner.train()
    files = glob.glob(os.path.join(str(tmp_path), '*', 'vis_data', 'scalars.json'))
    lines = [json.loads(line) for f in files for line in open(f) if line.strip()]
    assert not any(k.startswith('sn_ratio') for line in lines for k in line)


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
DEMO_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, 'mask_rcnn_demo', '*.py'))
                      + glob.glob(os.path.join(CONFIGS, 'seg_demo', '*.py')))


@pytest.mark.parametrize('path', DEMO_CONFIGS, ids=os.path.basename)
def test_every_demo_config_logs_the_share_trajectories(path):
    """README: every demo logs the share trajectories (configs that replace ``custom_hooks``,
    like the SSN ones, must keep SNRatioHook)."""
    from mmengine.config import Config
    hooks = [h['type'] for h in Config.fromfile(path).get('custom_hooks', [])]
    assert 'SNRatioHook' in hooks, hooks
