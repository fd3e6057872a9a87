"""SyncSN: 2 gloo processes against single-process SN on the union batch."""

import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm, convert_sync_sn, revert_sync_sn
from tests.dist_util import assert_equals_union_batch, rank_slice, run_ranks

C, H, W = 6, 5, 4
PARAM_NAMES = ('weight', 'bias', 'mean_weight', 'var_weight')
BUFFER_NAMES = ('running_mean', 'running_var')


def _make_layer(cls, in_variance, seed=0, branches=None):
    groups = 3 if branches and 'GN' in branches else None
    layer = cls(C, momentum=0.3, in_variance=in_variance, branches=branches,
                num_groups=groups).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def _union_data(batches, seed=1):
    gen = torch.Generator().manual_seed(seed)
    total = sum(batches)
    x = torch.randn(total, C, H, W, generator=gen, dtype=torch.float64) * 2 + 1
    grad_out = torch.randn(total, C, H, W, generator=gen, dtype=torch.float64)
    return x, grad_out


def _rank(rank, world_size, batches, in_variance, compiled=False, branches=None):
    calls = {'all_reduce': 0, 'other': 0}
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls['all_reduce'] += 1
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    try:
        layer = _make_layer(SyncSwitchableNorm, in_variance, branches=branches)
        x, grad_out = _union_data(batches)
        part = rank_slice(batches, rank)
        x_local = x[part].clone().requires_grad_()
        # aot_eager: dynamo + AOTAutograd (fake kernels, the op's registered autograd)
        # without inductor's code generation
        run = torch.compile(layer, backend='aot_eager') if compiled else layer
        y = run(x_local)
        forward_calls = calls['all_reduce']
        (y * grad_out[part]).sum().backward()
        backward_calls = calls['all_reduce'] - forward_calls
        # A second forward in eval mode must not communicate at all.
        layer.eval()
        layer(x_local.detach()[:1] if batches[rank] else x[:1])
        eval_calls = calls['all_reduce'] - forward_calls - backward_calls
        breaks = None
        if compiled:  # where dynamo breaks the graph in a distributed training forward
            import copy
            probe = copy.deepcopy(layer).train()
            explanation = torch._dynamo.explain(probe)(x_local.detach())
            breaks = [str(r.reason) for r in explanation.break_reasons]
        return dict(breaks=breaks, y=y.detach(), x_grad=x_local.grad,
                    grads={n: getattr(layer, n).grad for n in PARAM_NAMES},
                    buffers={n: getattr(layer, n) for n in BUFFER_NAMES},
                    forward_calls=forward_calls, backward_calls=backward_calls,
                    eval_calls=eval_calls)
    finally:
        dist.all_reduce = real_all_reduce


@pytest.mark.parametrize('batches,in_variance,branches', [
    ((3, 5), 'unbiased', None),
    ((0, 4), 'biased', None),
    ((4, 0), 'unbiased', None),
    ((2, 3), 'unbiased', ('IN', 'LN', 'BN', 'GN')),
])
def test_sync_sn_equals_sn_on_union_batch(tmp_path, batches, in_variance, branches):
    _check_against_union_batch(tmp_path, batches, in_variance, compiled=False,
                               branches=branches)


def test_compiled_sync_sn_equals_sn_on_union_batch(tmp_path):
    """torch.compile of SyncSN in a 2-process run: same results, the collectives inside the op."""
    results = _check_against_union_batch(tmp_path, (3, 2), 'unbiased', compiled=True)
    for r in results:  # the collectives run inside the op: dynamo sees one node, no break
        assert r['breaks'] == [], r['breaks']


def _check_against_union_batch(tmp_path, batches, in_variance, compiled, branches=None):
    ranks = run_ranks(_rank, tmp_path, batches, in_variance, compiled, branches,
                      timeout_s=300 if compiled else 60, deadline_s=600 if compiled else 120)
    assert all(r['ok'] for r in ranks), ranks
    results = [r['value'] for r in ranks]
    assert_equals_union_batch(results, _make_layer(SwitchableNorm, in_variance, branches=branches),
                              *_union_data(batches), PARAM_NAMES, BUFFER_NAMES)
    for r in results:
        # Exactly one collective per layer in forward and one in backward, none in eval.
        assert (r['forward_calls'], r['backward_calls'], r['eval_calls']) == (1, 1, 0)
    return results


def test_sync_sn_without_process_group_is_sn():
    torch.manual_seed(0)
    sync, plain = _make_layer(SyncSwitchableNorm, 'unbiased'), _make_layer(SwitchableNorm,
                                                                           'unbiased')
    x = torch.randn(3, C, H, W, dtype=torch.float64)
    assert_close(sync(x), plain(x), rtol=0, atol=0)
    assert_close(sync.running_var, plain.running_var, rtol=0, atol=0)


def test_convert_and_revert_carry_every_tensor():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, C, 1), SwitchableNorm(C, momentum=0.05),
                                torch.nn.Sequential(SwitchableNorm(C, using_bn=False)))
    model(torch.randn(2, 3, 4, 4))  # non-trivial running statistics
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[1].weight

    synced = convert_sync_sn(model)
    assert type(synced[1]) is SyncSwitchableNorm and type(synced[2][0]) is SyncSwitchableNorm
    assert synced[1].momentum == 0.05 and synced[2][0].using_bn is False
    assert synced[1].weight is weight and not synced[1].training
    assert before.keys() == synced.state_dict().keys()
    for k, v in synced.state_dict().items():
        assert torch.equal(v, before[k]), k

    reverted = revert_sync_sn(synced)
    assert type(reverted[1]) is SwitchableNorm and type(reverted[2][0]) is SwitchableNorm
    for k, v in reverted.state_dict().items():
        assert torch.equal(v, before[k]), k
