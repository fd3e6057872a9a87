"""SyncSN fails fast and says why when ranks disagree (issue 20, item 5).

On the old main, different channel counts or dtypes on two gloo ranks killed one rank
with SIGABRT inside gloo ("Received data size doesn't match") and gave the other
"Connection reset by peer"; one rank in eval mode and one in training hung until gloo's
30-minute timeout. Now every rank gets a :class:`SyncSNMismatchError` naming SyncSN, the
layer and the mismatch within seconds, and the steady state keeps one collective each way.
"""
import pytest
import torch
import torch.distributed as dist

from sn_mm.ops import SyncSparseSwitchableNorm, SyncSwitchableNorm
from sn_mm.ops.distributed import name_sync_layers
from tests.dist_util import run_ranks


def _layer_run(rank, world_size, channels, dtypes, modes, cls_name='SyncSwitchableNorm',
               steps=1):
    cls = {'SyncSwitchableNorm': SyncSwitchableNorm,
           'SyncSparseSwitchableNorm': SyncSparseSwitchableNorm}[cls_name]
    model = torch.nn.Sequential(torch.nn.Identity(), cls(channels[rank]).to(dtypes[rank]))
    name_sync_layers(model)
    model.train(modes[rank] == 'train')
    calls = {'n': 0}
    real = dist.all_reduce

    def counting(*args, **kwargs):
        calls['n'] += 1
        return real(*args, **kwargs)

    dist.all_reduce = counting
    try:
        counts = []
        for step in range(steps):
            before = calls['n']
            x = torch.randn(2, channels[rank], 3, 3, dtype=dtypes[rank], requires_grad=True)
            y = model(x)
            forward = calls['n'] - before
            y.sum().backward()
            counts.append((forward, calls['n'] - before - forward))
        return counts
    finally:
        dist.all_reduce = real


@pytest.mark.parametrize('cls_name', ['SyncSwitchableNorm', 'SyncSparseSwitchableNorm'])
def test_channel_count_mismatch_is_an_error_on_every_rank(tmp_path, cls_name):
    results = run_ranks(_layer_run, tmp_path, (4, 6), (torch.float32,) * 2, ('train',) * 2,
                        cls_name)
    kind = 'SyncSN' if cls_name == 'SyncSwitchableNorm' else 'SyncSSN'
    for rank, r in enumerate(results):
        assert not r['ok'] and r['type'] == 'SyncSNMismatchError', r
        assert r['message'].startswith(f"{kind} layer '1' (#0 in forward order, "
                                       f"num_features={(4, 6)[rank]})")
        assert 'ranks disagree on its channel count' in r['message']
        assert 'rank 0: mode=train channels=4' in r['message']
        assert 'rank 1: mode=train channels=6' in r['message']


def test_dtype_mismatch_is_an_error_on_every_rank(tmp_path):
    results = run_ranks(_layer_run, tmp_path, (4, 4), (torch.float32, torch.float64),
                        ('train',) * 2)
    for r in results:
        assert not r['ok'] and r['type'] == 'SyncSNMismatchError', r
        assert 'ranks disagree on its dtype' in r['message']
        assert 'dtype=float32' in r['message'] and 'dtype=float64' in r['message']


def test_eval_on_one_rank_and_train_on_the_other_fails_within_seconds(tmp_path):
    results = run_ranks(_layer_run, tmp_path, (4, 4), (torch.float32,) * 2, ('eval', 'train'),
                        timeout_s=600, deadline_s=90)
    for r in results:
        assert not r['ok'] and r['type'] == 'SyncSNMismatchError', r
        assert 'ranks disagree on its train/eval mode' in r['message']
        assert 'rank 0: mode=eval' in r['message'] and 'rank 1: mode=train' in r['message']
        assert r['seconds'] < 30


def test_agreeing_ranks_keep_one_collective_each_way(tmp_path):
    results = run_ranks(_layer_run, tmp_path, (4, 4), (torch.float32,) * 2, ('train',) * 2,
                        'SyncSwitchableNorm', 3)
    for r in results:
        assert r['ok'], r
        assert r['value'] == [(1, 1)] * 3


def test_all_ranks_in_eval_mode_do_not_communicate(tmp_path):
    results = run_ranks(_layer_run, tmp_path, (4, 4), (torch.float32,) * 2, ('eval', 'eval'))
    for r in results:
        assert r['ok'] and r['value'] == [(0, 0)], r


def _absent_rank(rank, world_size):
    if rank == 1:
        return 'did not run the layer'
    return _layer_run(rank, world_size, (4, 4), (torch.float32,) * 2, ('train',) * 2)


def test_a_rank_that_never_arrives_is_reported_at_the_group_timeout(tmp_path):
    results = run_ranks(_absent_rank, tmp_path, timeout_s=4, deadline_s=60)
    assert results[1]['ok']
    assert not results[0]['ok'] and results[0]['type'] == 'SyncSNMismatchError'
    assert 'rank(s) [1] did not reach this layer within 4 s' in results[0]['message']
