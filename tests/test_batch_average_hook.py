"""Batch-average statistics: exact pooled E[x^2] - E[x]^2 over the batches forwarded."""
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from torch import nn

import sn_mm  # noqa: F401
from sn_mm.engine.batch_average_hook import SNBatchAverageHook, batch_average
from sn_mm.checkpoint import safe_load
from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm
from tests.toy_runner import ToySNModel, make_loader, make_runner

TOL = dict(rtol=1e-4, atol=1e-5)


def expected_stats(calls, in_variance):
    """Pooled BN-branch statistics, straight from the definition, in float64.

    Every value of every call counts once: mean = E[x], var = E[x^2] - E[x]^2 where
    for ``'unbiased'`` layers each sample's x^2 contribution is its Bessel-corrected
    IN variance + IN mean^2 (what the SN forward's BN moments are built from), and
    ``'biased'`` layers get Bessel's correction over the pooled count.
    """
    sum_x = sum_x2 = 0.0
    count = 0
    for x in calls:
        flat = x.double().reshape(x.shape[0], x.shape[1], -1)
        length = flat.shape[2]
        if in_variance == 'biased':
            sum_x = sum_x + flat.sum((0, 2))
            sum_x2 = sum_x2 + flat.square().sum((0, 2))
        else:
            mean_in = flat.mean(2)
            var_in = flat.var(2, unbiased=True) if length > 1 else torch.zeros_like(mean_in)
            sum_x = sum_x + length * mean_in.sum(0)
            sum_x2 = sum_x2 + length * (var_in + mean_in.square()).sum(0)
        count += flat.shape[0] * length
    mean = sum_x / count
    var = sum_x2 / count - mean.square()
    if in_variance == 'biased':
        var = var * count / (count - 1)
    return mean.float(), var.float()


class Recorder:
    """Records the inputs every SN layer sees while it is in training mode."""

    def __init__(self, model):
        self.calls = {}
        self.handles = []
        for name, layer in model.named_modules():
            if isinstance(layer, SwitchableNorm):
                self.handles.append(layer.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name):
        def hook(layer, args):
            if layer.training:
                self.calls.setdefault(name, []).append(args[0].detach().clone())
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, SwitchableNorm)}


def _snapshot(model):
    return ({n: p.detach().clone() for n, p in model.named_parameters()},
            {n: b.detach().clone() for n, b in model.named_buffers()})


def test_toy_model_exact_pooled_statistics():
    model = ToySNModel()
    loader = make_loader(batch_size=5)  # 24 samples: batches of 5, 5, 5, 5, 4
    warm = iter(loader)
    model.train()
    for _ in range(2):  # some history in every buffer (SN moving average, BN, counters)
        model(**next(warm), mode='loss')
    model.eval()
    reference = copy.deepcopy(model)
    params, buffers = _snapshot(model)
    rng = torch.get_rng_state()

    updated = batch_average(model, loader, num_batches=4)

    assert sorted(updated) == ['sn1', 'sn2'] and not model.training
    assert all(not m.training for m in model.modules())  # flags restored
    assert torch.equal(torch.get_rng_state(), rng)
    # the same 4 batches through an untouched copy, in train mode, recorded
    recorder = Recorder(reference)
    reference.train()
    with torch.no_grad():
        for i, data in enumerate(loader):
            if i == 4:
                break
            reference(**data, mode='loss')
    recorder.remove()
    assert [len(c) for c in recorder.calls.values()] == [4, 4]
    for name, layer in _layers(model).items():
        mean, var = expected_stats(recorder.calls[name], layer.in_variance)
        torch.testing.assert_close(layer.running_mean, mean, **TOL)
        torch.testing.assert_close(layer.running_var, var, **TOL)
        assert updated[name].count == 4 * 5 * 64
        assert not torch.allclose(layer.running_var, buffers[f'{name}.running_var'])
    after_params, after_buffers = _snapshot(model)
    for name, value in params.items():
        assert torch.equal(after_params[name], value), name
    for name in ('bn.running_mean', 'bn.running_var', 'bn.num_batches_tracked'):
        assert torch.equal(after_buffers[name], buffers[name]), name


def test_bad_arguments():
    with pytest.raises(ValueError, match='num_batches must be a positive int, got 0'):
        batch_average(ToySNModel(), make_loader(), 0)
    with pytest.raises(ValueError, match='num_batches must be a positive int'):
        SNBatchAverageHook(num_batches=2.5)
    with pytest.raises(ValueError, match='no batch'):
        batch_average(ToySNModel(), [], 3)


class _Probe(Hook):
    """Snapshots the model right before SNBatchAverageHook's last pass."""
    priority = 'VERY_HIGH'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.is_last_train_iter(runner):
            self.params, self.buffers = _snapshot(runner.model)


def test_hook_in_runner_before_validation_and_checkpoint(tmp_path):
    probe = _Probe()
    model = ToySNModel(using_moving_average=False)  # relies on the batch-average pass
    runner = make_runner(tmp_path, model=model, custom_hooks=[
        dict(type='SNBatchAverageHook', num_batches=2), probe])
    hooks = [type(h).__name__ for h in runner.hooks]
    assert hooks.index('SNBatchAverageHook') < hooks.index('CheckpointHook')
    runner.train()
    # Final statistics = pooled statistics of the first 2 training batches through the
    # final parameters (iteration 6 is the last one: the hook ran after its update).
    reference = copy.deepcopy(model)
    recorder = Recorder(reference)
    reference.train()
    with torch.no_grad():
        for i, data in enumerate(make_loader()):
            if i == 2:
                break
            reference(**data, mode='loss')
    recorder.remove()
    for name, layer in _layers(model).items():
        mean, var = expected_stats(recorder.calls[name], layer.in_variance)
        torch.testing.assert_close(layer.running_mean, mean, **TOL)
        torch.testing.assert_close(layer.running_var, var, **TOL)
    params, buffers = _snapshot(model)
    for name, value in probe.params.items():
        assert torch.equal(params[name], value), name
    for name in ('bn.running_mean', 'bn.running_var', 'bn.num_batches_tracked'):
        assert torch.equal(buffers[name], probe.buffers[name]), name
    state = safe_load(str(tmp_path / 'iter_6.pth'))['state_dict']
    torch.testing.assert_close(state['sn2.running_var'], model.sn2.running_var, rtol=0, atol=0)


def _det_model():
    from mmdet.registry import MODELS
    sn = dict(type='SN')
    cfg = dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               pad_size_divisor=32),
        backbone=dict(type='ResNet', depth=18, out_indices=(1, 2, 3), frozen_stages=1,
                      norm_cfg=sn, norm_eval=False, style='pytorch'),
        neck=dict(type='FPN', in_channels=[128, 256, 512], out_channels=32, start_level=0,
                  add_extra_convs='on_input', num_outs=3),
        bbox_head=dict(
            type='RetinaHead', num_classes=3, in_channels=32, stacked_convs=1,
            feat_channels=32, norm_cfg=sn,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                  scales_per_octave=1, ratios=[1.0], strides=[8, 16, 32]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                            target_stds=[1.0] * 4),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                          loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                                     min_pos_iou=0, ignore_iof_thr=-1),
                       sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1,
                       debug=False),
        test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.05,
                      nms=dict(type='nms', iou_threshold=0.5), max_per_img=10))
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg)


def _det_batches(num, size=64):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(num):
        samples = []
        for _ in range(2):
            sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                                 scale_factor=(1.0, 1.0)))
            sample.gt_instances = InstanceData(bboxes=torch.tensor([[8.0, 8.0, 40.0, 44.0]]),
                                               labels=torch.tensor([1]))
            samples.append(sample)
        inputs = [torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
                  for _ in range(2)]
        batches.append(dict(inputs=inputs, data_samples=samples))
    return batches


def _seg_model():
    from mmseg.registry import MODELS
    sn = dict(type='SN')
    cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(48, 48)),
        backbone=dict(type='ResNetV1c', depth=18, num_stages=4, out_indices=(0, 1, 2, 3),
                      dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=sn,
                      norm_eval=False, contract_dilation=True),
        decode_head=dict(type='FCNHead', in_channels=512, in_index=3, channels=16,
                         num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=3,
                         norm_cfg=sn, align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                          loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(cfg)


def _seg_batches(num, size=48):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(num):
        samples, inputs = [], []
        for _ in range(2):
            sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                                 pad_shape=(size, size)))
            sample.gt_sem_seg = PixelData(
                data=torch.randint(0, 3, (1, size, size), generator=gen))
            samples.append(sample)
            inputs.append(torch.randint(0, 256, (3, size, size), generator=gen,
                                        dtype=torch.uint8))
        batches.append(dict(inputs=inputs, data_samples=samples))
    return batches


@pytest.mark.parametrize('task', ['detection', 'segmentation'])
def test_detection_and_segmentation_models(task):
    model = _det_model() if task == 'detection' else _seg_model()
    batches = _det_batches(2) if task == 'detection' else _seg_batches(2)
    layers = _layers(model)
    params, buffers = _snapshot(model)
    recorder = Recorder(model)
    updated = batch_average(model, batches, num_batches=2)
    recorder.remove()
    frozen = {n for n in layers if task == 'detection'
              and (n == 'backbone.sn1' or n.startswith('backbone.layer1.'))}
    assert set(updated) == set(layers) - frozen and len(updated) > 10
    if task == 'detection':  # the shared head SN pooled over all FPN levels of both batches
        assert len(recorder.calls['bbox_head.cls_convs.0.sn']) == 2 * 3
    for name, layer in layers.items():
        if name in frozen:
            assert name not in recorder.calls
            assert torch.equal(layer.running_mean, buffers[f'{name}.running_mean'])
            continue
        mean, var = expected_stats(recorder.calls[name], layer.in_variance)
        torch.testing.assert_close(layer.running_mean, mean, **TOL, msg=name)
        torch.testing.assert_close(layer.running_var, var, **TOL, msg=name)
    after_params, after_buffers = _snapshot(model)
    for name, value in params.items():
        assert torch.equal(after_params[name], value), name
    for name, value in buffers.items():
        if not any(name == f'{n}.{b}' for n in updated for b in ('running_mean', 'running_var')):
            assert torch.equal(after_buffers[name], value), name


class _TinyNet(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.sn = cls(4, in_variance='biased')

    def forward(self, inputs, mode='loss'):
        return self.sn(inputs)


def _rank_batches(rank):
    """Rank 0: two batches of 3 samples; rank 1: two batches of 1 sample (unequal)."""
    gen = torch.Generator().manual_seed(10 + rank)
    size = 3 if rank == 0 else 1
    return [dict(inputs=torch.randn(size, 4, 3, 5, generator=gen) * (rank + 1) + rank)
            for _ in range(2)]


def _ddp_worker(rank, init_file, out_dir):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=2)
    try:
        for cls in (SwitchableNorm, SyncSwitchableNorm):
            torch.manual_seed(0)
            model = _TinyNet(cls)
            updated = batch_average(model, _rank_batches(rank), num_batches=2)
            torch.save(dict(mean=model.sn.running_mean, var=model.sn.running_var,
                            count=updated['sn'].count),
                       os.path.join(out_dir, f'{cls.__name__}_{rank}.pth'))
    finally:
        dist.destroy_process_group()


def test_distributed_pools_cover_all_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=2)
    calls = _rank_batches(0) + _rank_batches(1)
    mean, var = expected_stats([c['inputs'] for c in calls], 'biased')
    for name in ('SwitchableNorm', 'SyncSwitchableNorm'):
        for rank in (0, 1):
            out = torch.load(tmp_path / f'{name}_{rank}.pth', weights_only=True)
            assert out['count'] == (3 + 3 + 1 + 1) * 15, (name, rank)
            torch.testing.assert_close(out['mean'], mean, **TOL)
            torch.testing.assert_close(out['var'], var, **TOL)
