"""Distributed launch on CPU-only torch (torchrun with the gloo backend).

mmengine 0.10.7's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` and its Runner
wraps the model in DDP with ``device_ids=[LOCAL_RANK]``; both fail on a CPU-only torch.
``setup_cpu_distributed`` (used by ``tools/train.py`` and ``tools/test.py``) starts the
process group with gloo itself — the Runner then skips its own ``init_dist`` — and makes
DDP wrap the CPU module (``device_ids=None``). On machines with CUDA it does nothing.

``env_cfg.dist_cfg.timeout`` (seconds, as mmengine's ``init_dist`` reads it) is passed to
``init_process_group``: it bounds every collective and SyncSN's cross-rank check, so a
rank that never arrives ends the run after that many seconds instead of gloo's default
30 minutes (docs/checkpoints.md, "Bounding hangs").
"""
from datetime import timedelta

import torch
import torch.distributed as dist
from mmengine.config import Config


def setup_cpu_distributed(cfg: Config) -> bool:
    """Init a gloo group for ``launcher='pytorch'`` without CUDA. Returns True if it did."""
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        # env:// (RANK, WORLD_SIZE, MASTER_ADDR/PORT: torchrun)
        dist.init_process_group('gloo', **_timeout_kwargs(cfg))
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
    wrapper.setdefault('device_ids', None)
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    return True


def _timeout_kwargs(cfg: Config) -> dict:
    """``{'timeout': timedelta}`` from ``env_cfg.dist_cfg.timeout`` (seconds), or ``{}``."""
    dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
    timeout = dist_cfg.get('timeout')
    if timeout is None:
        return {}
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f'env_cfg.dist_cfg.timeout must be a positive number of seconds, '
                         f'got {timeout!r}')
    return dict(timeout=timedelta(seconds=timeout))
