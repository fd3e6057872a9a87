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
import functools
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


# ------------------------------------------------------------- fail-fast checks
# Ranks that disagree on a SyncSN layer's channel count, dtype, BN branch or train/eval
# mode would pair mismatched collectives (gloo aborts in C++: "Received data size doesn't
# match") or wait for a peer that never joins (a hang until the group's timeout). Before
# a layer's first synchronized forward (and again only when its signature changes),
# every rank compares its signature with its peers' through the process group's
# key-value store, not a collective: the steady state keeps exactly one all-reduce in
# forward and one in backward, and a failed check leaves the collective stream untouched.
# A layer in eval mode inside a distributed run only announces itself (one store write,
# no waiting), so a training peer reports "rank r runs it in eval mode" within seconds.

#: After this many seconds without a peer's signature, a peer that announced eval mode for
#: the layer (and has not trained it) is reported as an eval/train mismatch.
MODE_GRACE_S = 5.0
_POLL_S = 0.25

_check_counter = [0]


class SyncSNMismatchError(RuntimeError):
    """Ranks disagree on a SyncSN layer (channels, dtype, BN branch, train/eval mode)."""


def _describe(layer) -> str:
    name = getattr(layer, '_sn_name', None)
    kind = {'SyncSwitchableNorm': 'SyncSN', 'SyncSparseSwitchableNorm': 'SyncSSN'}.get(
        type(layer).__name__, type(layer).__name__)
    where = f' {name!r}' if name else ''
    return f'{kind} layer{where} (#{layer._sync_index} in forward order, ' \
           f'num_features={layer.num_features})'


def name_sync_layers(model) -> None:
    """Record each synchronized SN layer's name in ``model`` for the check's messages."""
    for name, module in model.named_modules():
        if hasattr(module, 'process_group'):
            module._sn_name = name


def _store_and_ranks(process_group):
    store = dist.distributed_c10d._get_default_store()
    ranks = (list(range(dist.get_world_size())) if process_group is None
             else dist.get_process_group_ranks(process_group))
    return store, ranks


def _signature(layer, x, mode) -> str:
    return (f'mode={mode} channels={x.shape[1]} dtype={str(x.dtype).replace("torch.", "")} '
            f'using_bn={layer.using_bn}')


def _parse(value) -> dict:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return dict(part.split('=', 1) for part in text.split())


def _mismatch(layer, me, mine, others) -> SyncSNMismatchError:
    others = {r: v.decode() if isinstance(v, bytes) else v for r, v in others.items()}
    rows = [f'rank {r}: {s}' for r, s in sorted({me: mine, **others}.items())]
    ours, fields = _parse(mine), []
    for r, s in others.items():
        theirs = _parse(s)
        fields += [k for k in ours if theirs.get(k) != ours[k] and k not in fields]
    what = ', '.join({'mode': 'train/eval mode', 'channels': 'channel count',
                      'dtype': 'dtype', 'using_bn': 'using_bn'}[k] for k in fields)
    return SyncSNMismatchError(
        f'{_describe(layer)}: ranks disagree on its {what}, so its synchronized BN moments '
        f'cannot be computed ({"; ".join(rows)}). Every rank must run the same model, in the '
        'same mode (model.train() on all ranks), with inputs of the same channel count and '
        'dtype.')


def sync_signature(layer, x: torch.Tensor):
    """What :func:`check_sync_layer` compares, as a tuple (cheap to test in a forward)."""
    return (layer.training, x.shape[1], x.dtype, layer.using_bn)


_eval_wait_spent = [False]


def _eval_check(layer, store, ranks, me, base, signature) -> None:
    """A layer evaluated before this rank ever trained it: wait (up to MODE_GRACE_S, and
    only until the first time that expires in this process) until every peer announced
    the layer, in eval or train mode; a peer training it is a mismatch."""
    import time
    peers = [r for r in ranks if r != me]
    start = time.monotonic()
    while True:
        training = [r for r in peers if store.check([f'{base}/train/0/{r}'])]
        if training:
            layer._sync_signature = None
            raise _mismatch(layer, me, signature,
                            {r: store.get(f'{base}/train/0/{r}') for r in training})
        if all(store.check([f'{base}/eval/{r}']) for r in peers):
            return
        if _eval_wait_spent[0] or time.monotonic() - start > MODE_GRACE_S:
            _eval_wait_spent[0] = True
            return
        time.sleep(_POLL_S)


def _not_compiled(fn):
    """``torch.compiler.disable(fn)``, applied at the first call: decorating at import would
    import torch._dynamo (and with it triton) with ``import sn_mm``."""
    disabled = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)
    return call


@_not_compiled
def check_sync_layer(layer, x: torch.Tensor) -> None:
    """Compare ``layer``'s signature (mode, channels, dtype, BN branch) across the ranks of
    its process group; raise :class:`SyncSNMismatchError` on every rank that sees a
    disagreement, or when a peer does not arrive within the group's timeout. Once per
    layer and signature; no collective (see the comment above)."""
    mode = 'train' if layer.training else 'eval'
    signature = _signature(layer, x, mode)
    checked = layer.__dict__.setdefault('_sync_checked', {})
    layer._sync_signature = sync_signature(layer, x)
    if signature in checked:
        return
    if getattr(layer, '_sync_index', None) is None:
        layer._sync_index = _check_counter[0]
        _check_counter[0] += 1
    store, ranks = _store_and_ranks(layer.process_group)
    me = dist.get_rank()
    base = f'sn_mm/syncsn/g{group_handle(layer.process_group)}/layer{layer._sync_index}'
    if mode == 'eval':
        checked[signature] = True
        store.set(f'{base}/eval/{me}', signature)
        if not any(s.startswith('mode=train') for s in checked):
            _eval_check(layer, store, ranks, me, base, signature)
        return
    generation = sum(1 for s in checked if s.startswith('mode=train'))
    checked_now = f'{base}/train/{generation}'
    store.set(f'{checked_now}/{me}', signature)
    layer._sync_signature = None  # set again once the check passed
    peers = [r for r in ranks if r != me]
    timeout = store.timeout.total_seconds()
    import time
    from datetime import timedelta
    start = time.monotonic()
    waiting = list(peers)
    while waiting:
        try:
            store.wait([f'{checked_now}/{r}' for r in waiting], timedelta(seconds=_POLL_S))
            waiting = []
        except Exception:  # not all there yet
            waiting = [r for r in waiting if not store.check([f'{checked_now}/{r}'])]
            elapsed = time.monotonic() - start
            evaluating = [r for r in waiting if store.check([f'{base}/eval/{r}'])]
            if evaluating and elapsed > MODE_GRACE_S:
                raise _mismatch(layer, me, signature,
                                {r: store.get(f'{base}/eval/{r}') for r in evaluating}) from None
            if waiting and elapsed > timeout:
                raise SyncSNMismatchError(
                    f'{_describe(layer)}: rank(s) {waiting} did not reach this layer within '
                    f'{timeout:.0f} s (the process group timeout). They run another model '
                    'or another forward path, or they stopped; see docs/checkpoints.md '
                    '("Bounding hangs").') from None
    others = {r: store.get(f'{checked_now}/{r}') for r in peers}
    if any((v.decode() if isinstance(v, bytes) else v) != signature for v in others.values()):
        raise _mismatch(layer, me, signature, {r: v.decode() if isinstance(v, bytes) else v
                                               for r, v in others.items()})
    checked[signature] = True
    layer._sync_signature = sync_signature(layer, x)


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
