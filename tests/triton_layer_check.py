"""Run by tests/test_triton_layers.py in a process with SN_MM_KERNELS=triton, TRITON_INTERPRET=1.

The public layers (SN, SSN, SyncSN outside a distributed run, a GN pool) then run the op
through the Triton kernels on CPU tensors; each check compares forward, every gradient and
the running statistics with the float64 torch reference, and counts kernel launches.
Prints one line per case and exits non-zero on the first mismatch.
"""
import copy
import sys

import torch

from sn_mm.ops import (SparseSwitchableNorm, SwitchableNorm, SyncSwitchableNorm, functional,
                       reference, triton_kernels)


def check(name, layer, shape, dtype=torch.float32, channels_last=False, training=True):
    assert functional.KERNELS == 'triton', functional.KERNELS
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = copy.deepcopy(layer).double().train(training)
    layer.train(training)
    x = torch.randn(shape) * 2 + 1
    grad = torch.randn(shape)
    xt = x.to(dtype).clone()
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    xt.requires_grad_()
    start = triton_kernels.LAUNCH_COUNT
    y = layer(xt)
    forward = triton_kernels.LAUNCH_COUNT - start
    y.backward(grad.to(dtype))
    backward = triton_kernels.LAUNCH_COUNT - start - forward

    # the float64 reference (plain autograd over sn_mm.ops.reference), same layer state
    xr = x.detach().double().requires_grad_()
    mean_w, var_w = ref.mixture_weights() if not ref._softmax_in_op else (
        ref.mean_weight, ref.var_weight)
    mode = (functional.BN_NONE if not ref.using_bn else
            functional.BN_BATCH if training else functional.BN_RUNNING)
    yr, _, _, bn_mean, bn_var, count = reference.switchable_norm(
        xr, ref.weight, ref.bias, mean_w, var_w, ref.running_mean, ref.running_var, ref.pool,
        ref.num_groups, mode, ref.eps, ref.in_variance == 'unbiased', 0, ref._softmax_in_op)
    yr.backward(grad.double())
    tol = 2e-4 if dtype == torch.float32 else 5e-2
    errors = {'y': (y.double() - yr).abs().max().item(),
              'x': (xt.grad.double() - xr.grad).abs().max().item()}
    for (pname, p), q in zip(layer.named_parameters(), ref.parameters()):
        if q.grad is not None:
            errors[pname] = (p.grad.double() - q.grad).abs().max().item()
    if training and layer.using_bn:
        ref._track(bn_mean, bn_var, count)
        errors['running_mean'] = (layer.running_mean.double() - ref.running_mean).abs().max().item()
        errors['running_var'] = (layer.running_var.double() - ref.running_var).abs().max().item()
    layout_kept = (y.is_contiguous(memory_format=torch.channels_last) if channels_last
                   else y.is_contiguous())
    worst = max(errors.values())
    print(f'{name}: launches forward {forward} backward {backward}, max error {worst:.2e}, '
          f'layout kept {layout_kept}')
    if worst > tol or forward > 3 or backward > 3 or not layout_kept:
        print(f'FAILED {name}: {errors}')
        sys.exit(1)


def _sync_worker(rank, init_file, out_dir):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        layer = SyncSwitchableNorm(6, momentum=0.3)
        x = torch.randn(5, 6, 4, 3) * 2 + 1
        grad = torch.randn(5, 6, 4, 3)
        part = slice(0, 2) if rank == 0 else slice(2, 5)  # unequal batches
        xi = x[part].clone().requires_grad_()
        layer(xi).backward(grad[part])
        torch.save(dict(x_grad=xi.grad, weight=layer.weight.grad, logits=layer.mean_weight.grad,
                        running_var=layer.running_var), f'{out_dir}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def check_sync():
    """SyncSN in 2 gloo processes through the Triton kernels equals SN on the union batch."""
    import tempfile

    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_sync_worker, args=(f'{tmp}/init', tmp), nprocs=2, join=True)
        ranks = [torch.load(f'{tmp}/rank{r}.pt') for r in range(2)]
    torch.manual_seed(0)
    layer = SwitchableNorm(6, momentum=0.3)
    x = (torch.randn(5, 6, 4, 3) * 2 + 1).requires_grad_()
    grad = torch.randn(5, 6, 4, 3)
    layer(x).backward(grad)
    errors = [(torch.cat([r['x_grad'] for r in ranks]) - x.grad).abs().max().item(),
              (sum(r['weight'] for r in ranks) - layer.weight.grad).abs().max().item(),
              (sum(r['logits'] for r in ranks) - layer.mean_weight.grad).abs().max().item(),
              (ranks[0]['running_var'] - layer.running_var).abs().max().item()]
    print(f'SyncSN 2 processes (2 + 3 samples): max error {max(errors):.2e}')
    if max(errors) > 1e-4:
        print(f'FAILED SyncSN: {errors}')
        sys.exit(1)


if __name__ == '__main__':
    check('SN train', SwitchableNorm(6), (3, 6, 5, 7))
    check('SN eval', SwitchableNorm(6), (3, 6, 5, 7), training=False)
    check('SN using_bn=False', SwitchableNorm(5, using_bn=False), (2, 5, 4, 4))
    check('SN GN pool', SwitchableNorm(8, branches=('IN', 'LN', 'BN', 'GN'), num_groups=4),
          (2, 8, 3, 5))
    check('SN channels_last bf16', SwitchableNorm(6), (2, 6, 4, 5), dtype=torch.bfloat16,
          channels_last=True)
    check('SN N=1, 1x1 maps', SwitchableNorm(4), (1, 4, 1, 1), training=False)
    check('SN RoI 7x7', SwitchableNorm(3), (5, 3, 7, 7))
    check('SSN (sparsestmax weights)', SparseSwitchableNorm(6), (2, 6, 4, 4))
    check('SyncSN outside a distributed run', SyncSwitchableNorm(6), (2, 6, 4, 4))
    check_sync()
    print('ALL OK')
