"""The collectives SyncSN uses (pure torch, any backend: gloo, NCCL, MPI).

SyncSN needs exactly two collectives per layer and training iteration, both a summing
all-reduce:

- forward: :func:`all_gather_rows` gathers every rank's ``(count, values, mean, M2)``
  row in one all-reduce (each rank writes its row into its own slot of a zero matrix
  and the matrices are summed);
- backward: the ``2C`` gradients w.r.t. the shared BN moments are summed with
  :func:`all_reduce_sum`. With the total loss defined as the sum of every rank's loss,
  ``d(sum_r L_r) / d(shared)`` is the sum of every rank's contribution, which is what
  each rank then propagates into its own samples (see ``sn_mm.ops.mixing``).

Autograd never sees these calls: SN's backward is written out by hand, and both run
inside the ``sn_mm::switchable_norm`` ops (so ``torch.compile`` treats a SyncSN layer
as one opaque node). Custom ops take no process-group objects, so a group travels as an
integer handle (:func:`group_handle`): 0 means "no synchronization", 1 is WORLD.
"""
from typing import Dict, List, Optional

import torch
import torch.distributed as dist


_GROUPS: List[object] = [None, None]  # handle -> group; 1 is WORLD (None)
_HANDLES: Dict[int, int] = {}


def group_handle(process_group=None) -> int:
    """The integer handle of ``process_group`` (``None``: WORLD, handle 1)."""
    if process_group is None:
        return 1
    handle = _HANDLES.get(id(process_group))
    if handle is None or _GROUPS[handle] is not process_group:
        _GROUPS.append(process_group)
        handle = _HANDLES[id(process_group)] = len(_GROUPS) - 1
    return handle


def process_group_of(handle: int):
    """The group behind a handle from :func:`group_handle`."""
    if handle < 1 or handle >= len(_GROUPS):
        raise ValueError(f'unknown process-group handle {handle!r}; expected 1 (WORLD) '
                         f'or a handle from group_handle() (< {len(_GROUPS)})')
    return _GROUPS[handle]


def sync_world_size(process_group=None) -> int:
    """World size of ``process_group`` (default: WORLD), or 1 outside a distributed run."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group=process_group)


def all_reduce_sum(tensor: torch.Tensor, process_group=None) -> torch.Tensor:
    """A contiguous copy of ``tensor`` summed over the ranks of ``process_group``."""
    out = tensor.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
    return out


def all_gather_rows(row: torch.Tensor, process_group=None,
                    world_size: Optional[int] = None) -> torch.Tensor:
    """Gather one 1-D ``row`` per rank into a ``(world_size, len(row))`` matrix (one collective)."""
    if world_size is None:
        world_size = sync_world_size(process_group)
    rank = dist.get_rank(group=process_group)
    slots = row.new_zeros((world_size, row.numel()))
    slots[rank] = row.reshape(-1)
    dist.all_reduce(slots, op=dist.ReduceOp.SUM, group=process_group)
    return slots


class _AllGatherRows(torch.autograd.Function):
    """:func:`all_gather_rows` with autograd: the backward sums the gradients of every rank."""

    @staticmethod
    def forward(ctx, row, process_group, world_size):
        ctx.process_group = process_group
        ctx.rank = dist.get_rank(group=process_group)
        ctx.shape = row.shape
        return all_gather_rows(row, process_group, world_size)

    @staticmethod
    def backward(ctx, grad_rows):
        # d(sum_r L_r)/d(row of this rank) = sum over ranks of their gradient at this slot
        total = all_reduce_sum(grad_rows, ctx.process_group)
        return total[ctx.rank].reshape(ctx.shape), None, None


def all_gather_rows_autograd(row: torch.Tensor, process_group=None) -> torch.Tensor:
    """:func:`all_gather_rows` that autograd differentiates (used by SyncSW).

    Forward: one summing all-reduce of the ``(world_size, len(row))`` slot matrix. Backward:
    one summing all-reduce of its gradient; this rank's row receives the sum over ranks of
    the gradient at its slot, i.e. the gradient of the sum of every rank's loss. Every rank
    must call backward through it (a rank with an empty batch too).
    """
    return _AllGatherRows.apply(row, process_group, sync_world_size(process_group))
