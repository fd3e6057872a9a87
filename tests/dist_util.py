"""Run a function in N gloo processes (file:// rendezvous) with a hard deadline.

Not a test module: tests import :func:`run_ranks`. Each rank's return value, or the
type and message of the exception it raised, is saved and returned per rank, so a test
can assert what every rank saw; a run past ``deadline_s`` is killed and reported.
"""
import os
import pickle
import time
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp


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
