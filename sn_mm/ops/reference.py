r"""The SN math in torch ops: the one reference every path but the CPU kernel runs.

``csrc/sn_cpu.cpp`` computes the same in hand-written loops (CPU, eager). This module is
the other implementation, differentiable by autograd, and serves everything else: the op's
kernel on devices without a hand-written one (and its backward, by autograd), installs
without the compiled extension, ``torch.compile`` (inductor fuses it with its neighbours),
``torch.export``/ONNX, the fixed mixtures of deployment, and the tests' comparisons.

For an input viewed as ``(N, C, L)`` (``L`` = product of the spatial sizes):

1. instance moments per row, :math:`\mu_{in}` and the biased :math:`v_{in}`, and the IN
   variance as SN uses it, :math:`u = f v_{in}` with Bessel's factor
   :math:`f = L / (L - 1)` in ``'unbiased'`` mode (1 in ``'biased'`` mode or when ``L = 1``);
2. the moments of each normalizer of the pool, pooled from :math:`(\mu_{in}, u)` over the
   sets of :mod:`sn_mm.ops.pool`: :math:`\mu_k = \mathrm{mean}_S \mu_{in}`,
   :math:`v_k = \mathrm{mean}_S u + \mathrm{mean}_S (\mu_{in} - \mu_k)^2`;
3. the mixture with importance weights ``a`` (means) and ``b`` (variances), shared ``(K,)``
   or per sample ``(N, K)``:

   .. math::
       \mu = \sum_k a_k \mu_k, \quad \sigma^2 = \sum_k b_k v_k, \quad
       r = (\sigma^2 + \epsilon)^{-1/2}, \quad
       \text{scale} = \gamma r, \quad \text{shift} = \beta - \mu\,\text{scale};

4. ``y = scale * x + shift`` per ``(n, c)``, in ``x``'s dtype and memory format.

The BN branch (``bn_mode``): none; the running statistics (eval); this batch's moments
(training); or SyncSN's moments of the union batch of every rank
(:func:`sn_mm.ops.distributed.sync_batch_moments`, one collective each way).
"""
import math
from typing import Optional, Sequence, Tuple

import torch

from . import pool as pool_table

Tensor = torch.Tensor

#: ``bn_mode``: how the BN branch gets its moments (the same integers in the C++ kernel).
BN_NONE, BN_RUNNING, BN_BATCH, BN_SYNC = 0, 1, 2, 3
BN_MODES = (BN_NONE, BN_RUNNING, BN_BATCH, BN_SYNC)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def bessel_factor(length: int, unbiased: bool) -> float:
    """``L / (L - 1)`` in ``'unbiased'`` mode, else 1 (also for ``L = 1``, where it is undefined)."""
    return length / (length - 1) if unbiased and length > 1 else 1.0


def instance_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(mean_in, var_in)``: per-(n, c) mean and *biased* variance, ``(N, C)``, accumulation dtype."""
    n, c = x.shape[0], x.shape[1]
    acc = accumulation_dtype(x.dtype)
    if x.numel() == 0:
        zeros = x.new_zeros((n, c), dtype=acc)
        return zeros, zeros.clone()
    dims = tuple(range(2, x.dim()))
    xa = x.to(acc)
    if torch.compiler.is_compiling():  # inductor lowers var_mean to one Welford reduction
        var, mean = torch.var_mean(xa, dims, correction=0)
        return mean, var
    mean = xa.mean(dims, keepdim=True)  # eager: two passes, exact centring
    var = (xa - mean).square().mean(dims)
    return mean.reshape(n, c), var


def batch_moments(mean_in: Tensor, u: Tensor) -> Tuple[Tensor, Tensor]:
    """The BN moments of one batch, ``(C,)``, from its ``(N, C)`` instance moments (``N >= 1``)."""
    mean_bn = mean_in.mean(0)
    return mean_bn, u.mean(0) + (mean_in - mean_bn).square().mean(0)


def channel_pool(mean_in: Tensor, u: Tensor, groups: int) -> Tuple[Tensor, Tensor]:
    """Moments pooled over ``groups`` contiguous channel groups of each sample, as ``(N, C)``."""
    n, c = mean_in.shape
    m = mean_in.reshape(n, groups, c // groups)
    mean = m.mean(-1, keepdim=True)
    var = u.reshape(m.shape).mean(-1, keepdim=True) + (m - mean).square().mean(-1, keepdim=True)
    return mean.expand(m.shape).reshape(n, c), var.expand(m.shape).reshape(n, c)


def branch_moments(name: str, mean_in: Tensor, u: Tensor, num_groups: int,
                   bn_mean: Optional[Tensor], bn_var: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """``(mu_k, v_k)`` of one normalizer of :mod:`sn_mm.ops.pool`, broadcastable to ``(N, C)``."""
    if name == 'IN':
        return mean_in, u
    if name == 'LN':
        return channel_pool(mean_in, u, 1)
    if name == 'GN':
        return channel_pool(mean_in, u, num_groups)
    if name == 'BN':
        return bn_mean, bn_var
    raise ValueError(f'unknown normalizer {name!r}; expected one of {pool_table.NAMES}')


def mix(mean_in: Tensor, u: Tensor, weight: Tensor, bias: Tensor, a: Tensor, b: Tensor,
        pool: Sequence[str], num_groups: int, bn_mean: Optional[Tensor],
        bn_var: Optional[Tensor], eps: float) -> Tuple[Tensor, Tensor]:
    """SN's ``(N, C)`` step: ``(scale, shift)`` of the affine map ``y = scale x + shift``."""
    if len(pool) == 0:
        raise ValueError('the pool of normalizers is empty')
    if a.dim() == 1:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    mean = var = None
    for k, name in enumerate(pool):
        mu_k, v_k = branch_moments(name, mean_in, u, num_groups, bn_mean, bn_var)
        term_mean, term_var = a[:, k:k + 1] * mu_k, b[:, k:k + 1] * v_k
        mean = term_mean if mean is None else mean + term_mean
        var = term_var if var is None else var + term_var
    scale = weight * torch.rsqrt(var + eps)
    return scale, bias - mean * scale


def per_row(t: Tensor, like: Tensor) -> Tensor:
    """``(N, C)`` coefficients broadcastable against ``(N, C, *spatial)`` ``like``, in its dtype."""
    return t.to(like.dtype).reshape(t.shape + (1,) * (like.dim() - 2))


def switchable_norm(x: Tensor, weight: Tensor, bias: Tensor, mean_weights: Tensor,
                    var_weights: Tensor, running_mean: Optional[Tensor],
                    running_var: Optional[Tensor], pool: Sequence[str] = pool_table.DEFAULT_POOL,
                    num_groups: int = 1, bn_mode: int = BN_BATCH, eps: float = 1e-5,
                    unbiased: bool = True, group: int = 0, softmax: bool = False,
                    given_bn: Optional[Tuple[Tensor, Tensor, Tensor]] = None
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """SN in torch ops. Returns ``(y, mean_in, var_in, bn_mean, bn_var, bn_count)``, like the op.

    Differentiable by autograd in every argument but the running statistics. ``bn_mean``,
    ``bn_var`` are the BN moments used (empty without BN), ``bn_count`` the
    ``[samples, values]`` they average over (zeros unless batch moments); the moments are
    returned detached. ``given_bn``: SyncSN's ``(bn_mean, bn_var, count)`` of an earlier
    forward, replayed without a new forward collective (the op's backward on devices
    without a hand-written kernel).
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f'bn_mode must be one of {BN_MODES} (none, running, batch, sync), '
                         f'got {bn_mode!r}')
    n, c = x.shape[0], x.shape[1]
    length = math.prod(x.shape[2:])
    acc = accumulation_dtype(x.dtype)
    mean_in, var_in = instance_moments(x)
    u = var_in * bessel_factor(length, unbiased)
    a, b = mean_weights.to(acc), var_weights.to(acc)
    if softmax:
        a, b = torch.softmax(a, -1), torch.softmax(b, -1)
    count = mean_in.new_zeros(2)
    bn_mean = bn_var = None
    if bn_mode == BN_RUNNING:
        bn_mean, bn_var = running_mean.to(acc), running_var.to(acc)
    elif bn_mode == BN_BATCH:
        if n == 0:
            raise ValueError('batch statistics (bn_mode=BN_BATCH) of an empty batch')
        bn_mean, bn_var = batch_moments(mean_in, u)
        count = mean_in.new_tensor([float(n), float(n * length)])
    elif bn_mode == BN_SYNC:
        from .distributed import sync_batch_moments_autograd
        bn_mean, bn_var, count = sync_batch_moments_autograd(mean_in, u, length, group, given_bn)
    scale, shift = mix(mean_in, u, weight.to(acc), bias.to(acc), a, b, pool, num_groups,
                       bn_mean, bn_var, eps)
    xa = x.to(acc)
    y = (xa * per_row(scale, xa) + per_row(shift, xa)).to(x.dtype)
    if bn_mean is None:
        bn_mean = bn_var = mean_in.new_zeros(0)
    return (y, mean_in.detach(), var_in.detach(), bn_mean.detach(), bn_var.detach(),
            count.detach())
