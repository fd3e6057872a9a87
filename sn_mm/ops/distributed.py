"""Differentiable collectives used by SyncSN (pure torch, any backend).

Only one primitive is needed: a summing all-reduce whose backward is again a
summing all-reduce. With the total loss defined as the sum of every rank's loss,
``d(sum_r L_r) / d(x_q) = sum_r dL_r / d(allreduce(x))`` for every rank ``q``, so
the backward of ``y = sum_r x_r`` is exactly ``all_reduce(grad_y)``. It is one
collective in forward and one in backward, on gloo, NCCL or MPI alike.

``all_gather_rows`` is built on it: each rank writes its row into its own slot of
a zero matrix and the matrix is summed, which gathers the rows in one collective
(and its backward, the all-reduce of the gradient matrix, hands every rank the
summed gradient of its own slot).
"""
from typing import Optional

import torch
import torch.distributed as dist
from torch.autograd import Function


def sync_world_size(process_group=None) -> int:
    """World size of ``process_group`` (default: WORLD), or 1 outside a distributed run."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group=process_group)


class _SumAllReduce(Function):
    """``y = sum over ranks of x``; backward is the same all-reduce of the gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, process_group) -> torch.Tensor:
        ctx.process_group = process_group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.process_group)
        return grad, None


def differentiable_all_reduce(tensor: torch.Tensor, process_group=None) -> torch.Tensor:
    """Sum ``tensor`` over the ranks of ``process_group`` with an exact gradient."""
    return _SumAllReduce.apply(tensor, process_group)


def all_gather_rows(row: torch.Tensor, process_group=None,
                    world_size: Optional[int] = None) -> torch.Tensor:
    """Gather one 1-D ``row`` per rank into a ``(world_size, len(row))`` matrix.

    Differentiable, and exactly one collective in forward and one in backward.
    """
    if world_size is None:
        world_size = sync_world_size(process_group)
    rank = dist.get_rank(group=process_group)
    slots = row.new_zeros((world_size, row.numel()))
    slots = slots.index_copy(0, torch.tensor([rank], device=row.device), row.reshape(1, -1))
    return differentiable_all_reduce(slots, process_group)
