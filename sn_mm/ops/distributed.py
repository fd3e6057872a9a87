"""The collectives SyncSN uses (pure torch, any backend: gloo, NCCL, MPI).

SyncSN needs exactly two collectives per layer and training iteration, both a summing
all-reduce:

- forward: :func:`all_gather_rows` gathers every rank's ``(count, values, mean, M2)``
  row in one all-reduce (each rank writes its row into its own slot of a zero matrix
  and the matrices are summed);
- backward: the ``2C`` gradients w.r.t. the shared BN moments are summed with
  :func:`all_reduce_sum`. With the total loss defined as the sum of every rank's loss,
  ``d(sum_r L_r) / d(shared)`` is the sum of every rank's contribution, which is what
  each rank then propagates into its own samples (:func:`add_bn_grad`).

Both are ops themselves (``sn_mm::sync_batch_moments``, ``sn_mm::sync_bn_grad``), which
the kernels of ``sn_mm::switchable_norm`` call (the C++ kernel through the dispatcher), so
``torch.compile`` treats a SyncSN layer as one opaque node. The reference path
(:mod:`sn_mm.ops.reference`) runs the same two through
:func:`sync_batch_moments_autograd`. Custom ops take no process-group objects, so a group
travels as an integer handle (:func:`group_handle`): 0 means "no synchronization", 1 is
WORLD.
"""
from typing import Dict, List, Optional, Tuple

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


# --------------------------------------------------------------- the SyncSN statistics
Tensor = torch.Tensor


@torch.library.custom_op('sn_mm::sync_batch_moments', mutates_args=())
def sync_batch_moments(mean_in: Tensor, u: Tensor, length: int, group: int
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """BN moments of the union batch of every rank of ``group`` (one collective).

    Each rank contributes its sample count, value count, mean and
    ``M2 = sum_n (u + (mean_in - m_r)^2)`` per channel, gathered in one all-reduce and
    merged exactly (Chan et al.): no ``E[x^2] - E[x]^2`` cancellation, every sample
    weighted equally, ranks with 0 samples included. Returns ``(mean, var, counts)``
    with ``counts = [samples, values]`` over all ranks.
    """
    batch, channels = mean_in.shape
    local_mean = mean_in.sum(0) / max(batch, 1)
    local_m2 = (u + (mean_in - local_mean).square()).sum(0)
    counts = mean_in.new_tensor([float(batch), float(batch * length)])
    rows = all_gather_rows(torch.cat([counts, local_mean, local_m2]), process_group_of(group))
    samples = rows[:, 0]
    totals = rows[:, :2].sum(0)
    if float(totals[1]) <= 1:
        raise ValueError(
            'Expected more than 1 value per channel when training the BN branch of '
            f'SyncSwitchableNorm, got {int(totals[1])} over all ranks (local input of '
            f'{batch} samples x {length} positions)')
    means, m2s = rows[:, 2:2 + channels], rows[:, 2 + channels:]
    weights = samples.unsqueeze(1)
    total = totals[0]
    mean_bn = (weights * means).sum(0) / total
    var_bn = (m2s.sum(0) + (weights * (means - mean_bn).square()).sum(0)) / total
    return mean_bn, var_bn, totals


@sync_batch_moments.register_fake
def _(mean_in, u, length, group):
    channels = mean_in.shape[1]
    return mean_in.new_empty(channels), mean_in.new_empty(channels), mean_in.new_empty(2)


@torch.library.custom_op('sn_mm::sync_bn_grad', mutates_args=())
def sync_bn_grad(g_mean_bn: Tensor, g_var_bn: Tensor, group: int) -> Tuple[Tensor, Tensor]:
    """``(G_mu, G_v)``, the gradients w.r.t. the shared BN moments, summed over every rank (one collective)."""
    summed = all_reduce_sum(torch.cat([g_mean_bn, g_var_bn]), process_group_of(group))
    channels = g_mean_bn.numel()
    return summed[:channels].clone(), summed[channels:].clone()


@sync_bn_grad.register_fake
def _(g_mean_bn, g_var_bn, group):
    return g_mean_bn.new_empty(g_mean_bn.shape), g_var_bn.new_empty(g_var_bn.shape)


def add_bn_grad(grad_mean_in: Tensor, grad_u: Tensor, mean_in: Tensor, bn_mean: Tensor,
                g_mean_bn: Tensor, g_var_bn: Tensor, count) -> None:
    """Add the union-batch terms ``G_mu / M + 2 G_v / M (mu_in - mu_bn)`` and ``G_v / M`` in place."""
    total_var = g_var_bn * (2.0 / count)
    grad_mean_in.add_(g_mean_bn / count).addcmul_(mean_in - bn_mean, total_var)
    grad_u.add_(total_var * 0.5)


class _SyncBatchMoments(torch.autograd.Function):
    """The union-batch BN moments as a differentiable function of this rank's IN moments."""

    @staticmethod
    def forward(ctx, mean_in, u, length, group, given):
        if given is None:
            bn_mean, bn_var, count = sync_batch_moments(mean_in.detach(), u.detach(), length,
                                                        group)
        else:
            bn_mean, bn_var, count = given
        ctx.save_for_backward(mean_in, bn_mean, count)
        ctx.group = group
        ctx.mark_non_differentiable(count)
        return bn_mean, bn_var, count

    @staticmethod
    def backward(ctx, grad_mean, grad_var, _):
        mean_in, bn_mean, count = ctx.saved_tensors
        zeros = bn_mean.new_zeros(bn_mean.shape)
        g_mean, g_var = sync_bn_grad(zeros if grad_mean is None else grad_mean,
                                     zeros if grad_var is None else grad_var, ctx.group)
        grad_mean_in = mean_in.new_zeros(mean_in.shape)
        grad_u = mean_in.new_zeros(mean_in.shape)
        add_bn_grad(grad_mean_in, grad_u, mean_in, bn_mean, g_mean, g_var, count[0])
        return grad_mean_in, grad_u, None, None, None


def sync_batch_moments_autograd(mean_in: Tensor, u: Tensor, length: int, group: int,
                                given: Optional[Tuple[Tensor, Tensor, Tensor]] = None):
    """:func:`sync_batch_moments` with its backward (:func:`sync_bn_grad`), for autograd.

    ``given``: the ``(mean, var, counts)`` of an earlier call, replayed without the forward
    collective (the backward collective still runs).
    """
    return _SyncBatchMoments.apply(mean_in, u, length, group, given)
