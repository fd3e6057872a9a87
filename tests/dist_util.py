"""Run a function in N gloo processes (file:// rendezvous) with a hard deadline.

Not a test module: tests import :func:`run_ranks`. Each rank's return value, or the
type and message of the exception it raised, is saved and returned per rank, so a test
can assert what every rank saw; a run past ``deadline_s`` is killed and reported.

The Sync layers' tests ("on every rank, its slice of a union batch; together, the plain
layer on the whole batch") share :func:`rank_slice_step` (a rank's forward and backward)
and :func:`assert_equals_union_batch` (the comparison with the plain layer).
"""
import os
import pickle
import time
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.testing import assert_close


def _entry(rank, world_size, init_file, out_dir, timeout_s, fn, args):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout_s))
    start = time.monotonic()
    try:
        result = dict(ok=True, value=fn(rank, world_size, *args))
    except Exception as err:  # reported to the test, per rank
        result = dict(ok=False, type=type(err).__name__, message=str(err))
    result['seconds'] = time.monotonic() - start
    with open(os.path.join(out_dir, f'rank{rank}.pkl'), 'wb') as f:
        pickle.dump(result, f)
    # no destroy_process_group: after a failed check a peer may be gone


def run_ranks(fn, tmp_path, *args, world_size=2, timeout_s=60, deadline_s=120):
    """``fn(rank, world_size, *args)`` on ``world_size`` processes; returns per-rank dicts
    ``{'ok', 'value' | 'type', 'message', 'seconds'}``. ``fn`` must be importable."""
    out_dir = str(tmp_path)
    context = mp.start_processes(_entry, args=(world_size, os.path.join(out_dir, 'init'), out_dir,
                                               timeout_s, fn, args),
                                 nprocs=world_size, join=False, start_method='spawn')
    end = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > end:
                raise TimeoutError(f'{world_size} ranks still running after {deadline_s} s')
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    results = []
    for rank in range(world_size):
        with open(os.path.join(out_dir, f'rank{rank}.pkl'), 'rb') as f:
            results.append(pickle.load(f))
    return results


def rank_slice(batches: Sequence[int], rank: int) -> slice:
    """Rank ``rank``'s rows of a union batch made of ``batches[0]``, ``batches[1]``, ... rows."""
    start = sum(batches[:rank])
    return slice(start, start + batches[rank])


def rank_slice_step(layer, x, grad_out, batches, rank, params, buffers) -> dict:
    """Forward ``layer`` on this rank's slice of the union batch ``x`` and backward
    ``(y * grad_out[slice]).sum()``; returns ``y``, ``x_grad``, the ``grads`` of
    ``params`` and the ``buffers`` (by name), what :func:`assert_equals_union_batch` reads."""
    part = rank_slice(batches, rank)
    x_local = x[part].clone().requires_grad_()
    y = layer(x_local)
    (y * grad_out[part]).sum().backward()
    return dict(y=y.detach(), x_grad=x_local.grad,
                grads={n: getattr(layer, n).grad for n in params},
                buffers={n: getattr(layer, n) for n in buffers})


def assert_equals_union_batch(results, reference, x, grad_out, params, buffers, tol=1e-10):
    """The ranks' ``results`` (:func:`rank_slice_step` dicts, or :func:`run_ranks` dicts
    holding one as ``value``) equal the plain layer ``reference`` on the union batch:
    outputs and input gradients concatenated over ranks, parameter gradients summed over
    ranks (what DDP's all-reduce sums), buffers on every rank."""
    if results and 'ok' in results[0]:
        assert all(r['ok'] for r in results), results
        results = [r['value'] for r in results]
    x = x.detach().clone().requires_grad_()
    y = reference(x)
    (y * grad_out).sum().backward()
    tol = dict(rtol=tol, atol=tol)
    assert_close(torch.cat([r['y'] for r in results]), y.detach(), **tol)
    assert_close(torch.cat([r['x_grad'] for r in results]), x.grad, **tol)
    for name in params:
        summed = sum(r['grads'][name] for r in results)
        assert_close(summed, getattr(reference, name).grad, **tol,
                     msg=lambda m: f'grad of {name}: {m}')
    for r in results:
        for name in buffers:
            assert_close(r['buffers'][name], getattr(reference, name), **tol,
                         msg=lambda m: f'buffer {name}: {m}')
