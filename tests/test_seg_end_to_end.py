"""End to end on freshly generated demo data of both layouts: tools/make_seg_demo.py ->
mmseg's CityscapesDataset / ADE20KDataset -> the segmentation demo's training (a few
iterations, validation) -> evaluation of the saved checkpoint, whose mIoU must equal the
validation mIoU (sn_mm.apis.seg_demo, what tools/demo_seg.py runs)."""
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

from sn_mm.apis import build_cfg, build_runner
from sn_mm.apis.demo_run import run_demo
from sn_mm.datasets.seg_demo import (ADE20K_DEMO_CLASSES, CITYSCAPES_CLASSES, IGNORE_INDEX,
                                     ensure_seg_demo, generate_sample, is_generated,
                                     make_seg_demo)
from tests.e2e_util import SEG_TINY, run_python

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = SEG_TINY
ITERS = 3


def test_generator_is_deterministic_and_in_the_real_label_spaces():
    for layout in ('cityscapes', 'ade20k'):
        img1, lab1 = generate_sample(layout, 'train', 3, seed=7, size=(64, 96))
        img2, lab2 = generate_sample(layout, 'train', 3, seed=7, size=(64, 96))
        assert np.array_equal(img1, img2) and np.array_equal(lab1, lab2)
        img3, _ = generate_sample(layout, 'val', 3, seed=7, size=(64, 96))
        assert img3.shape != img1.shape or not np.array_equal(img1, img3)
        assert img1.dtype == np.uint8 and img1.ndim == 3 and img1.shape[:2] == lab1.shape
    labels = np.concatenate([generate_sample('cityscapes', 'train', i)[1].ravel()
                             for i in range(30)])
    values = set(np.unique(labels).tolist())
    assert values <= set(range(19)) | {IGNORE_INDEX} and len(values - {IGNORE_INDEX}) == 19
    labels = np.concatenate([generate_sample('ade20k', 'train', i)[1].ravel() for i in range(30)])
    values = set(np.unique(labels).tolist())
    assert values == {0} | {k + 1 for k in ADE20K_DEMO_CLASSES.values()}
    with pytest.raises(ValueError, match="layout must be one of"):
        generate_sample('coco', 'train', 0)
    with pytest.raises(ValueError, match='num_train must be an int >= 1, got 0'):
        make_seg_demo('unused', 'ade20k', num_train=0)


def test_mmseg_datasets_read_both_layouts(tmp_path):
    from mmseg.datasets import ADE20KDataset, CityscapesDataset
    from mmseg.registry import DATASETS
    ade_classes = ADE20KDataset.METAINFO['classes']
    assert all(ade_classes[i] == name for name, i in ADE20K_DEMO_CLASSES.items())
    assert tuple(CityscapesDataset.METAINFO['classes']) == CITYSCAPES_CLASSES
    for layout, (split_train, split_val) in (('cityscapes', ('train', 'val')),
                                             ('ade20k', ('training', 'validation'))):
        root = str(tmp_path / layout)
        assert ensure_seg_demo(root, layout, **TINY[layout])
        assert is_generated(root, layout, **TINY[layout])
        assert not ensure_seg_demo(root, layout, **TINY[layout])  # cached
        cfg = Config.fromfile(osp.join(ROOT, 'configs', 'seg_demo',
                                       f'deeplabv3_r18-d8-sn_demo-{layout}.py'))
        with DefaultScope.overwrite_default_scope('mmseg'):
            for loader, count in (('train_dataloader', 4), ('val_dataloader', 2)):
                dataset = DATASETS.build(dict(cfg[loader].dataset, data_root=root))
                assert len(dataset) == count
                sample = dataset[0]
                seg = sample['data_samples'].gt_sem_seg.data
                values = set(seg.unique().tolist())
                if layout == 'cityscapes':
                    assert '_leftImg8bit.png' in sample['data_samples'].img_path
                    assert values <= set(range(19)) | {255}
                else:  # reduce_zero_label: file value k -> k-1, 0 -> 255
                    assert sample['data_samples'].img_path.endswith('.jpg')
                    assert values <= set(ADE20K_DEMO_CLASSES.values()) | {255}
                    assert sample['data_samples'].reduce_zero_label
        assert osp.isdir(osp.join(root, 'gtFine' if layout == 'cityscapes' else 'annotations',
                                  split_train))
        assert osp.isdir(osp.join(root, 'leftImg8bit' if layout == 'cityscapes' else 'images',
                                  split_val))


@pytest.mark.parametrize('config', ['deeplabv3_r18-d8-sn_demo-cityscapes.py',
                                    'deeplabv3plus_r18-d8-sn_demo-ade20k.py'])
def test_train_then_test_the_checkpoint(config, tmp_path):
    layout = 'cityscapes' if 'cityscapes' in config else 'ade20k'
    data_root = str(tmp_path / 'data' / layout)
    tiny = TINY[layout]
    run_python(['tools/make_seg_demo.py', '--layout', layout, '--root', str(tmp_path / 'data'),
                '--num-train', str(tiny['num_train']), '--num-val', str(tiny['num_val']),
                '--size', *map(str, tiny['size'])])
    assert is_generated(data_root, layout, **tiny)
    options = {}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options.update({f'{loader}.dataset.data_root': data_root, f'{loader}.num_workers': 0,
                        f'{loader}.persistent_workers': False})
    options.update({'train_dataloader.batch_size': 2, 'train_cfg.max_iters': ITERS,
                    'train_cfg.val_interval': ITERS, 'default_hooks.checkpoint.interval': ITERS,
                    'default_hooks.logger.interval': 1,
                    'train_dataloader.dataset.pipeline.3.crop_size': (64, 64),
                    'model.data_preprocessor.size': (64, 64)})
    path = osp.join('configs', 'seg_demo', config)
    result = run_demo(path, str(tmp_path / 'work'), options, figures=False)
    assert result['iterations'] == ITERS and osp.isfile(result['checkpoint'])
    assert result['checkpoint'].endswith(f'iter_{ITERS}.pth')
    assert 0 < result['sec_per_iter'] < 60 and len(result['losses']) == ITERS
    val = {k: result['metrics'][k] for k in ('aAcc', 'mIoU', 'mAcc')}
    assert 0.0 <= val['mIoU'] <= 100.0 and 0.0 < val['aAcc'] <= 100.0
    # The validation at the end of training is the checkpoint's result: evaluating the
    # saved checkpoint with a fresh runner gives the same numbers.
    cfg = build_cfg(path, work_dir=str(tmp_path / 'test'), cfg_options=options,
                    load_from=result['checkpoint'])
    test = build_runner(cfg, unique_names=True).test()
    assert {k: float(test[k]) for k in val} == val


def test_run_seg_demo_reports_beside_the_expected_values(tmp_path):
    """What tools/demo_seg.py runs: data, training, the report with the recorded values."""
    from sn_mm.apis.expected import update_expected
    from sn_mm.apis.seg_demo import format_results, run_seg_demo
    options = {'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
               'train_dataloader.persistent_workers': False, 'val_dataloader.num_workers': 0,
               'val_dataloader.persistent_workers': False,
               'train_dataloader.dataset.pipeline.3.crop_size': (64, 64),
               'model.data_preprocessor.size': (64, 64)}
    results = run_seg_demo(osp.join(ROOT, 'configs', 'seg_demo'), layouts=('cityscapes',),
                           data_root=str(tmp_path / 'data'), work_root=str(tmp_path / 'work'),
                           iters=2, seed=1, cfg_options=options, log=lambda line: None,
                           **TINY['cityscapes'])
    (result,) = results.values()
    assert result['iterations'] == 2 and result['seed'] == 1
    key = 'deeplabv3_r18-d8-sn_demo-cityscapes'
    path = str(tmp_path / 'expected.json')
    mean = result['metrics']['mIoU']
    update_expected(path, {key: dict(iterations=2, seeds=[0, 1, 2], measured='today',
                                     metrics={'mIoU': dict(mean=mean, std=1.0,
                                                           values=[mean - 1, mean, mean + 1])})})
    from sn_mm.apis.expected import load_expected
    text = format_results(results, load_expected(path))
    assert f'mIoU {mean:.1f} vs {mean:.1f} +- 1.0: typical (within mean +- 2 std)' in text
