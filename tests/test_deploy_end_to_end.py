"""Train an SSN demo model for a few iterations (radius 0 -> 1), convert it with
tools/deploy_sn.py, and evaluate both with tools/test.py: same metrics, same predictions."""
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch

from sn_mm.datasets import coco_demo
from sn_mm.checkpoint import safe_load
from tests.e2e_util import tiny_demo_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SSN_DET = osp.join(ROOT, 'configs', 'mask_rcnn_demo', 'mask-rcnn_r18_fpn_ssn-all_coco-demo.py')
SSN_SEG = osp.join('configs', 'seg_demo', 'deeplabv3_r18-d8-ssn_demo-cityscapes.py')
# the radius reaches 1 at iteration 2 of 3: every layer one-hot and frozen at the end
HOOK = "custom_hooks = [dict(type='SSNRadiusHook', end=2, log_interval=1)]"


def run(args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args[:2]} failed ({proc.returncode}):\n{out[-5000:]}'
    return out


def metrics_of(out):
    """The ``Metrics: {...}`` line of tools/test.py (compared as text: every digit)."""
    line = next(x for x in out.splitlines() if x.startswith('Metrics: '))
    assert 'mAP' in line or 'mIoU' in line, line
    return line


def deploy_and_check(cfg, ckpt, tmp_path, extra=()):
    deployed = str(tmp_path / 'deployed.pth')
    out = run(['tools/deploy_sn.py', cfg, ckpt, '--out', deployed, *extra])
    assert 'GroupNorm' in out and 'max |converted - original|' in out
    state = safe_load(deployed, map_location='cpu')
    assert not any(k.endswith(('mean_weight', 'radius')) for k in state['state_dict'])
    layers = state['meta']['sn_mm_fixed_norms']['layers']
    assert layers and all(max(r['mean']) == 1 and max(r['var']) == 1 for r in layers)  # one-hot
    assert all(r['max_deviation'] is None or r['max_deviation'] < 1e-4 for r in layers)
    return deployed, osp.splitext(deployed)[0] + '.py'


def _predictions(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


@pytest.mark.slow
def test_mask_rcnn_ssn_train_deploy_test(tmp_path):
    data = str(tmp_path / 'data')
    coco_demo.make_coco_demo(data, num_train=6, num_val=3, seed=3)
    cfg = tiny_demo_config(str(tmp_path / 'tiny_ssn.py'), SSN_DET, data, max_iters=3,
                           extra=HOOK)
    out = run(['tools/train.py', cfg, '--work-dir', str(tmp_path / 'work')])
    assert 'Iter(train) [3/3]' in out
    ckpt = str(tmp_path / 'work' / 'iter_3.pth')
    deployed, deployed_cfg = deploy_and_check(cfg, ckpt, tmp_path)

    before = run(['tools/test.py', cfg, ckpt, '--work-dir', str(tmp_path / 't0'),
                  '--out', str(tmp_path / 'p0.pkl')])
    after = run(['tools/test.py', deployed_cfg, deployed, '--work-dir', str(tmp_path / 't1'),
                 '--out', str(tmp_path / 'p1.pkl')])
    assert metrics_of(after) == metrics_of(before)
    p0, p1 = _predictions(tmp_path / 'p0.pkl'), _predictions(tmp_path / 'p1.pkl')
    assert len(p0) == len(p1) == 3
    for a, b in zip(p0, p1):
        a, b = a['pred_instances'], b['pred_instances']
        assert len(a['scores']) == len(b['scores']) > 0
        torch.testing.assert_close(b['bboxes'], a['bboxes'], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(b['scores'], a['scores'], atol=1e-5, rtol=1e-4)


def _loader_options(data_root):
    opts = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [f'{loader}.dataset.data_root={data_root}', f'{loader}.num_workers=0',
                 f'{loader}.persistent_workers=False']
    return opts


@pytest.mark.slow
def test_deeplabv3_ssn_train_deploy_test(tmp_path):
    data = str(tmp_path / 'data')
    run(['tools/make_seg_demo.py', '--layout', 'cityscapes', '--root', data, '--num-train', '4',
         '--num-val', '2', '--size', '64', '128'])
    data_root = osp.join(data, 'cityscapes')
    cfg = str(tmp_path / 'tiny_ssn_seg.py')
    with open(cfg, 'w') as f:
        f.write(f'_base_ = {osp.join(ROOT, SSN_SEG)!r}\n{HOOK}\n')
    options = _loader_options(data_root) + [
        'train_dataloader.batch_size=2', 'train_cfg.max_iters=3', 'train_cfg.val_interval=3',
        'default_hooks.checkpoint.interval=3', 'default_hooks.logger.interval=1',
        'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
        'model.data_preprocessor.size=(64,64)']
    run(['tools/train.py', cfg, '--work-dir', str(tmp_path / 'work'), '--cfg-options', *options])
    ckpt = str(tmp_path / 'work' / 'iter_3.pth')
    loaders = _loader_options(data_root)
    deployed, deployed_cfg = deploy_and_check(cfg, ckpt, tmp_path,
                                              ['--cfg-options', *loaders])
    before = run(['tools/test.py', cfg, ckpt, '--work-dir', str(tmp_path / 't0'),
                  '--out', str(tmp_path / 'p0.pkl'), '--cfg-options', *loaders])
    after = run(['tools/test.py', deployed_cfg, deployed, '--work-dir', str(tmp_path / 't1'),
                 '--out', str(tmp_path / 'p1.pkl')])
    assert metrics_of(after) == metrics_of(before)
    p0, p1 = _predictions(tmp_path / 'p0.pkl'), _predictions(tmp_path / 'p1.pkl')
    assert len(p0) == len(p1) == 2
    for a, b in zip(p0, p1):
        torch.testing.assert_close(b['seg_logits']['data'], a['seg_logits']['data'],
                                   atol=1e-4, rtol=1e-4)
        assert torch.equal(b['pred_sem_seg']['data'], a['pred_sem_seg']['data'])
