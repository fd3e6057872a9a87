"""End to end on freshly generated demo data, through the command-line tools.

- ``tools/train.py`` trains the SN demo config for a few iterations and saves a
  checkpoint; ``tools/test.py`` loads it (mmengine checkpoint, torch weights_only
  loading through sn_mm.checkpoint) and reports mmdet's COCO bbox and segm mAP.
- mmdet's own packaged ``tools/train.py`` runs the same config unchanged
  (``custom_imports`` makes it import sn_mm).
- The generator is deterministic and writes valid COCO (pycocotools loads it; every
  annotation's area/bbox agree with its mask).
"""
import ast
import glob
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

from sn_mm.datasets import coco_demo
from tests.e2e_util import tiny_demo_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SN_DEMO = osp.join(ROOT, 'configs', 'mask_rcnn_demo', 'mask-rcnn_r18_fpn_sn-all_coco-demo.py')


def run(cmd, timeout=420):
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get('OMP_WAIT_POLICY', 'PASSIVE'))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (
        f'{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')
    return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco_demo'))
    coco_demo.make_coco_demo(root, num_train=6, num_val=3, seed=3)
    return root


def test_generator_is_deterministic_and_valid_coco(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    coco_demo.make_coco_demo(a, num_train=12, num_val=2, seed=7, max_objects=6)
    coco_demo.make_coco_demo(b, num_train=12, num_val=2, seed=7, max_objects=6)

    def digest(root):
        h = hashlib.sha256()
        for p in sorted(glob.glob(osp.join(root, '**', '*.*'), recursive=True)):
            h.update(osp.relpath(p, root).encode())
            h.update(open(p, 'rb').read())
        return h.hexdigest()

    assert digest(a) == digest(b)
    coco_demo.make_coco_demo(b, num_train=12, num_val=2, seed=8, max_objects=6)
    assert digest(a) != digest(b)
    assert coco_demo.is_generated(a, num_train=12, num_val=2, seed=7, max_objects=6)
    assert not coco_demo.is_generated(a, num_train=12, num_val=2, seed=8, max_objects=6)

    coco = COCO(osp.join(a, 'annotations', 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(coco_demo.CLASSES)
    assert len(coco.getImgIds()) == 12
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 12
    kinds = {type(a['segmentation']).__name__ for a in anns}
    assert kinds == {'list', 'dict'}  # polygons (unoccluded) and RLE (occluded)
    for ann in anns:
        assert ann['iscrowd'] == 0 and 1 <= ann['category_id'] <= len(coco_demo.CLASSES)
        m = coco.annToMask(ann)
        assert m.sum() == ann['area'] >= coco_demo.MIN_VISIBLE_PIXELS
        ys, xs = np.nonzero(m)
        x, y, w, h = ann['bbox']
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    # visible masks of one image never overlap (occluded parts are removed)
    for img_id in coco.getImgIds():
        masks = [coco.annToMask(x) for x in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
        if masks:
            assert np.stack(masks).sum(0).max() <= 1
    img = coco.loadImgs(1)[0]
    assert osp.isfile(osp.join(a, 'train', img['file_name']))
    assert (img['width'], img['height']) == (256, 256)
    assert isinstance(mask_utils.decode(
        next(x for x in anns if isinstance(x['segmentation'], dict))['segmentation']),
        np.ndarray)


def test_generator_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match='num_train'):
        coco_demo.make_coco_demo(str(tmp_path), num_train=0)
    with pytest.raises(ValueError, match='min_size'):
        coco_demo.make_coco_demo(str(tmp_path), min_size=50, max_size=20)
    with pytest.raises(TypeError, match='num_trian'):
        coco_demo.make_coco_demo(str(tmp_path), num_trian=3)


def test_train_then_test_through_tools(tmp_path, tiny_data):
    cfg = tiny_demo_config(str(tmp_path / 'tiny_sn.py'), SN_DEMO, tiny_data, max_iters=3)
    work = tmp_path / 'work'
    out = run([sys.executable, 'tools/train.py', cfg, '--work-dir', str(work)])
    assert 'Iter(train) [3/3]' in out
    ckpt = work / 'iter_3.pth'
    assert ckpt.is_file()

    out = run([sys.executable, 'tools/test.py', cfg, str(ckpt),
               '--work-dir', str(tmp_path / 'test')])
    assert 'Load checkpoint from' in out
    line = next(x for x in out.splitlines() if x.startswith('Metrics: '))
    metrics = ast.literal_eval(line[len('Metrics: '):])
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert key in metrics and -1.0 <= metrics[key] <= 1.0, (key, metrics)
    # the metrics are also in the run's json log
    logs = glob.glob(str(tmp_path / 'test' / '*' / '*.json'))
    assert logs and 'coco/segm_mAP' in json.load(open(logs[0]))


def test_mmdet_packaged_train_script_runs_our_config(tmp_path, tiny_data):
    import mmdet
    script = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    assert osp.isfile(script)
    cfg = tiny_demo_config(str(tmp_path / 'tiny_sn.py'), SN_DEMO, tiny_data, max_iters=2)
    work = tmp_path / 'work'
    out = run([sys.executable, script, cfg, '--work-dir', str(work)])
    assert 'Iter(train) [2/2]' in out
    assert (work / 'iter_2.pth').is_file()
    # SN layers really were built (sn_mm imported through custom_imports)
    assert _ckpt_has_sn(work / 'iter_2.pth')


def _ckpt_has_sn(path) -> bool:
    from sn_mm.checkpoint import safe_load
    state = safe_load(str(path), map_location='cpu')['state_dict']
    return 'backbone.layer1.0.sn1.mean_weight' in state and 'neck.fpn_convs.0.sn.var_weight' in state


def test_demo_tool_generates_trains_evaluates(tmp_path):
    """tools/demo.py: data generation, training with progress/ETA logs, COCO metrics,
    and the final summary naming checkpoint, logs and metrics."""
    data, work = tmp_path / 'data', tmp_path / 'work'
    out = run([sys.executable, 'tools/demo.py', '--data-root', str(data), '--num-train', '4',
               '--num-val', '2', '--iters', '2', '--work-dir', str(work)])
    assert coco_demo.is_generated(str(data), num_train=4, num_val=2)
    assert 'generated' in out and 'eta:' in out and 'Iter(train) [2/2]' in out
    # the result beside the README's values (docs/demo_expected.json: for the demo's own
    # iterations, so a 2-iteration run is told that it is not comparable)
    assert ('[demo] the recorded mean +- std for mask-rcnn_r18_fpn_sn-all_coco-demo are for'
            in out or '[demo] no recorded mean +- std for mask-rcnn_r18_fpn_sn-all_coco-demo'
            in out)
    summary = json.load(open(work / 'metrics.json'))
    assert summary['iterations'] == 2 and summary['train_seconds_per_iteration'] > 0
    assert summary['train_cpu_seconds_per_iteration'] > 0
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert -1.0 <= summary['metrics'][key] <= 1.0
    shares = summary['sn_shares_in_ln_bn']
    assert set(shares) == {'backbone', 'neck + heads'}
    assert sum(shares['backbone']['mean']) == pytest.approx(1.0, abs=1e-3)
    for label in ('checkpoint:', 'logs:', 'metrics:'):
        line = next(x for x in out.splitlines() if x.startswith(f'[demo] {label}'))
        assert osp.exists(line.split(label, 1)[1].strip()), line
    assert (work / 'iter_2.pth').is_file()


@pytest.mark.slow
def test_compare_tool_runs_seeds_and_resumes(tmp_path):
    """tools/compare_norms_det.py over 2 rows x 2 seeds, then again: nothing retrained."""
    args = [sys.executable, 'tools/compare_norms_det.py', '--rows', 'sn', 'bn', '--seeds', '0',
            '1', '--iters', '1', '--work-dir', str(tmp_path / 'cmp'), '--data-root',
            str(tmp_path / 'data'), '--num-train', '4', '--num-val', '2',
            '--write-expected', str(tmp_path / 'expected.json')]
    out = run(args, timeout=900)
    assert '[compare] 1/4 row sn (SN / SN), seed 0: running' in out
    assert '[compare] 2/4 row sn (SN / SN), seed 1: running; ETA for the whole comparison' in out
    table = (tmp_path / 'cmp' / 'table.md').read_text()
    assert '| SN / SN |' in table and '| BN / BN |' in table and '(reference)' in table
    assert 'Seeds [0, 1] (the same for every row)' in table
    data = json.load(open(tmp_path / 'cmp' / 'results.json'))
    assert [e['seeds'] for e in data['summary']] == [[0, 1], [0, 1]]
    assert data['summary'][1]['diff']['coco/bbox_mAP']['n'] == 2
    expected = json.load(open(tmp_path / 'expected.json'))['entries']
    assert set(expected) == {'mask-rcnn_r18_fpn_sn-all_coco-demo',
                             'mask-rcnn_r18_fpn_bn-all_coco-demo'}
    again = run(args, timeout=900)
    assert again.count('finished earlier, reusing') == 4 and 'Iter(train)' not in again


def test_ssn_demo_config_runs_through_the_demo_runner(tmp_path):
    """The SSN demo configs run through the demo runner and, since they keep SNRatioHook next
    to SSNRadiusHook, draw the per-layer figure and the share trajectories (the runner
    skips the trajectories of a config that logs none instead of failing after training)."""
    from sn_mm.apis.det_demo import run_det_demo
    ssn = osp.join(ROOT, 'configs', 'mask_rcnn_demo', 'mask-rcnn_r18_fpn_ssn-all_coco-demo.py')
    summary = run_det_demo(ssn, str(tmp_path / 'work'), str(tmp_path / 'data'), num_train=4,
                           num_val=2, iters=2, log=lambda line: None)
    assert summary['iterations'] == 2 and summary['sn_layers']
    assert [osp.basename(f) for f in summary['figures']] == ['sn_ratios.png',
                                                              'sn_trajectories.png']



def test_sw_and_en_demo_configs_run_through_the_demo_runner(tmp_path):
    """The SW and EN demo configs (rows 'sw' and 'en' of tools/compare_norms_det.py) train
    and evaluate through the demo runner on generated demo data; their models have no SN
    layer, so the summary lists none and the runner draws no SN figure (SNRatioHook, kept
    with skip_without_sn=True, logs nothing). Fewer test-time detections keep it short."""
    from sn_mm.apis.det_demo import run_det_demo
    from sn_mm.apis.norm_tables import det_config
    from sn_mm.checkpoint import read_checkpoint
    fast_val = {'model.test_cfg.rpn.max_per_img': 50, 'model.test_cfg.rcnn.max_per_img': 10}
    keys = {'sw': 'backbone.layer4.1.sw2.sw_mean_weight',
            'en': 'backbone.layer4.1.en2.ratio_weight'}
    for norm, key in keys.items():
        config = det_config(norm, osp.join(ROOT, 'configs', 'mask_rcnn_demo'))
        summary = run_det_demo(config, str(tmp_path / norm), str(tmp_path / 'data'),
                               num_train=4, num_val=1, iters=2, cfg_options=fast_val,
                               log=lambda line: None)
        assert summary['iterations'] == 2 and summary['sn_layers'] == []
        assert not summary['figures'] and all(np.isfinite(summary['losses']))
        assert 0.0 <= summary['metrics']['coco/bbox_mAP'] <= 1.0
        state = read_checkpoint(summary['checkpoint'])['state_dict']
        assert key in state, f'{norm}: no {key} in the checkpoint'
