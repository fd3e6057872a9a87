r"""SN's forward and backward as fused Triton kernels: three launches each way.

This module is the GPU kernel set of the SN op. It is pure torch + Triton and is imported
lazily (``import sn_mm`` does not need Triton). The same kernels run on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1``, set *before* this module is imported), which
is how the tests check them value by value on machines without a GPU.

Math (the contract of ``SN_MATH``). ``x`` is ``(N, C, *spatial)`` viewed as ``(N, C, L)``,
``L`` = product of the spatial sizes. Per row ``(n, c)`` the instance moments
:math:`\mu_{nc}` and biased :math:`\sigma^2_{nc}`; :math:`u = f \sigma^2` with Bessel's
factor :math:`f = L/(L-1)` when ``unbiased`` and ``L > 1`` (else 1). The *pool* is an
ordered tuple of branches (the order of the importance weights), each pooling the
instance moments over a set :math:`S_k(n, c)`:

- ``IN``: :math:`\{(n, c)\}`; ``LN``: :math:`\{(n, c')\}_{c'}`; ``GN``: the channels of
  :math:`c`'s group (``num_groups`` contiguous blocks of ``C / num_groups`` channels);
- ``BN``: :math:`\{(n', c)\}_{n'}`, with moments that are ``given`` (running statistics, or
  SyncSN's union-batch moments from the ``sync_moments`` callback) or this ``batch``'s;

.. math::
    \mu_k = \mathrm{mean}_{S_k} \mu, \qquad
    v_k = \mathrm{mean}_{S_k} u + \mathrm{mean}_{S_k} (\mu - \mu_k)^2,

    \bar\mu = \textstyle\sum_k a_k \mu_k, \quad \bar v = \sum_k b_k v_k, \quad
    r = (\bar v + \epsilon)^{-1/2}, \quad \text{scale} = \gamma r, \quad
    \text{shift} = \beta - \bar\mu\,\text{scale}, \quad y = \text{scale}\,x + \text{shift}.

The importance weights ``a``, ``b`` are shared ``(K,)`` or per sample ``(N, K)``; with
``softmax=True`` they are logits and the kernels apply the softmax over ``K`` (and its
backward). Backward, with :math:`S = \sum_l g x`, :math:`T = \sum_l g`:
:math:`\partial\beta = \sum_n T`, :math:`D = S - \bar\mu T`, :math:`\partial\gamma = \sum_n D r`,
:math:`g_\mu = -\text{scale}\,T`, :math:`g_v = -\tfrac12 D\,\text{scale}\,r^2`,
:math:`\partial a_k = \sum g_\mu \mu_k`, :math:`\partial b_k = \sum g_v v_k` and, per branch,
:math:`G^\mu_k = \sum_{S_k} a_k g_\mu`, :math:`G^v_k = \sum_{S_k} b_k g_v`,

.. math::
    \partial\mu \mathrel{+}= \frac{G^\mu_k}{|S_k|} + \frac{2 G^v_k}{|S_k|}(\mu - \mu_k), \qquad
    \partial u \mathrel{+}= \frac{G^v_k}{|S_k|}, \qquad
    \partial x = \text{scale}\, g + \frac{2 f \partial u}{L} (x - \mu) + \frac{\partial\mu}{L}.

The BN term exists for ``batch`` moments (``|S| = N``) and for SyncSN (``G`` summed over the
ranks by the ``sync_grad`` callback, ``|S|`` = the union batch's samples), not for constants.

Launch plan (at most 3 kernels each way; allocations with ``torch.empty`` only, no other
ATen op on the device; :data:`LAUNCH_COUNT` counts the launches):

==========  =========================================================================
forward K1  :func:`_moments_kernel`: per-row moments, grid over (sample, channel tile,
            L chunk). Long rows are split into ``P`` chunks whose (mean, M2) partials
            are merged exactly (Chan et al.) by K2; SyncSN uses ``P = 1``.
sync        ``sync_moments(mean_in, u)`` (the caller's one collective)
forward K2  :func:`_mix_forward_kernel`: the whole ``(N, C)`` step in ONE program
            looping over tiles: merge of partials, BN batch moments, LN/GN moments
            (group moments merged into LN exactly), softmax, mixture, ``scale``/``shift``
forward K3  :func:`_affine_kernel`: ``y = scale x + shift``, grid over tiles
backward K1 :func:`_grad_sums_kernel`: ``(sum g (x - mu), sum g)`` per row (partials)
backward K2 :func:`_mix_backward_kernel`: the mixing backward in one program: parameter
            and importance-weight gradients (through the softmax), ``G^mu``, ``G^v`` of
            BN, and the per-row input-gradient coefficients
sync        ``sync_grad(G_mu, G_v)`` (the caller's one collective)
backward K3 :func:`_input_grad_kernel`: ``dx = scale g + k (x - mu) + c``, adding the BN
            term ``G / |S|`` per row (batch moments or SyncSN)
==========  =========================================================================

Dtypes: ``x`` (and ``grad_y``) float32, float16 or bfloat16, read as they are and
converted per tile; every statistic and coefficient is float32; ``y`` and ``grad_x`` are
written in ``x``'s dtype; parameter gradients in each parameter's dtype. (Triton's
interpreter rounds float32 to bfloat16 by truncation, the GPU to nearest: one bf16 ulp.)

Wiring (the op layer): a CUDA kernel of the SN op calls :func:`forward` and, in its
backward, :func:`backward` with what forward returned; SyncSN passes ``bn_mode='given'``
with ``sync_moments=lambda m, u: sync_batch_moments(m, u, L, group)`` and
``sync_grad=lambda gm, gv: sync_bn_grad(gm, gv, group)`` (:mod:`sn_mm.ops.mixing`), which
keeps its one collective each way. CPU tensors work only when ``TRITON_INTERPRET=1`` was set
before this module was imported (:data:`INTERPRET`); otherwise a clear error is raised.

Memory format: the kernels address ``x`` through its strides ``(sN, sC, sL)``, which
covers contiguous and channels_last (2D, 3D) inputs and any layout whose spatial
dimensions collapse to one stride; ``y`` and ``grad_x`` are ``empty_like(x)`` (the input's
memory format), so no layout copy is ever made. Other layouts get one ``contiguous()``.
"""
import math
import os
from typing import Callable, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .pool import NAMES
from .reference import bessel_factor

Tensor = torch.Tensor

#: True when the kernels were defined under Triton's CPU interpreter (``TRITON_INTERPRET=1``
#: at import time): they then run on CPU tensors.
INTERPRET = os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')

#: The branches these kernels implement: every row of the pool table (sn_mm.ops.pool).
BRANCHES = NAMES
BN_MODE_CODES = {'none': 0, 'given': 1, 'batch': 2}

#: Number of kernel launches made by this module since import (tests reset and read it).
LAUNCH_COUNT = 0
#: True while a kernel launch is in progress (lets a test tell the interpreter's own
#: tensor work apart from ATen work done by this module).
IN_LAUNCH = False

_TARGET_PROGRAMS = 512  # aim for this many programs in the row passes (about 4 per SM)
_MAX_CHUNKS = 64        # at most this many partials per row
_MIX_WARPS = 8
#: Arguments Triton must not specialize (on the value 1 or on divisibility by 16): the
#: batch size changes from call to call (RoI heads), and each specialization compiles anew.
_VARYING = ('N',)
_ROW_WARPS = 8  # row passes: 2048-value tiles, 8 values per thread (ptxas: no spills, sm_90)


def _launch(kernel, grid, *args, **meta) -> None:
    """Launch ``kernel`` on ``grid`` and count it (the only place kernels are launched)."""
    global LAUNCH_COUNT, IN_LAUNCH
    LAUNCH_COUNT += 1
    IN_LAUNCH = True
    try:
        kernel[grid](*args, **meta)
    finally:
        IN_LAUNCH = False


# ============================================================== jit helpers
@triton.jit
def _col(tile, kidx, k: tl.constexpr):
    """Column ``k`` of a ``[BLOCK_N, BLOCK_K]`` tile as a ``[BLOCK_N]`` vector."""
    return tl.sum(tl.where(kidx[None, :] == k, tile, 0.0), axis=1)


@triton.jit
def _mix_weights(ptr, rn, N, s_n, s_k, K: tl.constexpr, BLOCK_K: tl.constexpr,
                 SOFTMAX: tl.constexpr):
    """``[BLOCK_N, BLOCK_K]`` importance weights of samples ``rn`` (``s_n = 0``: shared)."""
    kidx = tl.arange(0, BLOCK_K)
    kmask = kidx < K
    w = tl.load(ptr + rn[:, None] * s_n + kidx[None, :] * s_k,
                mask=(rn < N)[:, None] & kmask[None, :], other=0.0).to(tl.float32)
    if SOFTMAX:
        w = tl.where(kmask[None, :], w, float('-inf'))
        w = w - tl.max(w, axis=1)[:, None]
        e = tl.where(kmask[None, :], tl.exp(w), 0.0)
        w = e / tl.sum(e, axis=1)[:, None]
    return w


@triton.jit
def _pooled_moments(mean_ptr, var_ptr, gnm_ptr, gnv_ptr, rn, N, C, G, CPG, factor,
                    STORE_GN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """LN moments ``[BLOCK_N]`` of samples ``rn``; GN moments stored to ``(N, G)`` scratch.

    One pass over each group's channels: every tile's own mean and M2 (in registers) are
    merged into the group's (Chan et al.), and the groups into LN the same way, so there
    is no ``E[x^2] - E[x]^2`` and LN needs no pass of its own.
    """
    nm = rn < N
    offs_c = tl.arange(0, BLOCK_C)
    ln_mean = tl.zeros([BLOCK_N], dtype=tl.float32)
    ln_m2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    ln_su = tl.zeros([BLOCK_N], dtype=tl.float32)
    for g in range(G):
        gmean = tl.zeros([BLOCK_N], dtype=tl.float32)
        sd = tl.zeros([BLOCK_N], dtype=tl.float32)
        su = tl.zeros([BLOCK_N], dtype=tl.float32)
        for c0 in range(0, CPG, BLOCK_C):
            rc = g * CPG + c0 + offs_c
            mask = nm[:, None] & ((c0 + offs_c) < CPG)[None, :]
            off = rn[:, None] * C + rc[None, :]
            m = tl.load(mean_ptr + off, mask=mask, other=0.0)
            v = tl.load(var_ptr + off, mask=mask, other=0.0)
            nb = tl.minimum(CPG - c0, BLOCK_C) * 1.0
            na = c0 * 1.0
            bmean = tl.sum(m, axis=1) / nb
            d = tl.where(mask, m - bmean[:, None], 0.0)
            delta = bmean - gmean
            gmean += delta * (nb / (na + nb))
            sd += tl.sum(d * d, axis=1) + delta * delta * (na * nb / (na + nb))
            su += tl.sum(v, axis=1) * factor
        if STORE_GN:
            tl.store(gnm_ptr + rn * G + g, gmean, mask=nm)
            tl.store(gnv_ptr + rn * G + g, (su + sd) / CPG, mask=nm)
        before = (g * CPG) * 1.0
        tot = before + CPG
        delta = gmean - ln_mean
        ln_mean += delta * (CPG / tot)
        ln_m2 += sd + delta * delta * (before * CPG / tot)
        ln_su += su
    return ln_mean, (ln_su + ln_m2) / C


@triton.jit
def _mixture(m, u, rn, rc, nm, cm, ln_mean, ln_var, gn_mean, gn_var, bnm_ptr, bnv_ptr, A, B,
             kidx, I_IN: tl.constexpr, I_LN: tl.constexpr, I_BN: tl.constexpr,
             I_GN: tl.constexpr):
    """Mixed mean and variance ``[BLOCK_N, BLOCK_C]`` of a tile (branch moments as given)."""
    mean = tl.zeros(m.shape, dtype=tl.float32)
    var = tl.zeros(m.shape, dtype=tl.float32)
    if I_IN >= 0:
        mean += _col(A, kidx, I_IN)[:, None] * m
        var += _col(B, kidx, I_IN)[:, None] * u
    if I_LN >= 0:
        mean += (_col(A, kidx, I_LN) * ln_mean)[:, None]
        var += (_col(B, kidx, I_LN) * ln_var)[:, None]
    if I_GN >= 0:
        mean += (_col(A, kidx, I_GN) * gn_mean)[:, None]
        var += (_col(B, kidx, I_GN) * gn_var)[:, None]
    if I_BN >= 0:
        bm = tl.load(bnm_ptr + rc, mask=cm, other=0.0)
        bv = tl.load(bnv_ptr + rc, mask=cm, other=0.0)
        mean += _col(A, kidx, I_BN)[:, None] * bm[None, :]
        var += _col(B, kidx, I_BN)[:, None] * bv[None, :]
    return mean, var


@triton.jit
def _sample_block(n0, a_ptr, s_an, s_ak, b_ptr, s_bn, s_bk, mean_ptr, var_ptr, gnm_ptr,
                  gnv_ptr, N, C, G, CPG, factor, K: tl.constexpr, SOFTMAX: tl.constexpr,
                  POOLED: tl.constexpr, STORE_GN: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """What both mixing kernels start a block of samples ``n0 .. n0 + BLOCK_N`` with: the
    rows ``rn`` and their mask, the mean and variance weights ``A``, ``B``
    ``[BLOCK_N, BLOCK_K]``, and (``POOLED``: an LN or GN branch) the LN moments, GN's
    stored to scratch (:func:`_pooled_moments`); zeros without either branch."""
    rn = n0 + tl.arange(0, BLOCK_N)
    A = _mix_weights(a_ptr, rn, N, s_an, s_ak, K, BLOCK_K, SOFTMAX)
    B = _mix_weights(b_ptr, rn, N, s_bn, s_bk, K, BLOCK_K, SOFTMAX)
    if POOLED:
        ln_mean, ln_var = _pooled_moments(mean_ptr, var_ptr, gnm_ptr, gnv_ptr, rn, N, C, G,
                                          CPG, factor, STORE_GN, BLOCK_N, BLOCK_C)
        tl.debug_barrier()
    else:
        ln_mean = tl.zeros([BLOCK_N], dtype=tl.float32)
        ln_var = tl.zeros([BLOCK_N], dtype=tl.float32)
    return rn, rn < N, A, B, ln_mean, ln_var


@triton.jit
def _group_moments(gnm_ptr, gnv_ptr, rn, nm, G, g, HAS_GN: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """GN moments ``[BLOCK_N]`` of group ``g`` for samples ``rn`` (zeros without GN)."""
    if HAS_GN:
        gn_mean = tl.load(gnm_ptr + rn * G + g, mask=nm, other=0.0)
        gn_var = tl.load(gnv_ptr + rn * G + g, mask=nm, other=0.0)
    else:
        gn_mean = tl.zeros([BLOCK_N], dtype=tl.float32)
        gn_var = tl.zeros([BLOCK_N], dtype=tl.float32)
    return gn_mean, gn_var


@triton.jit
def _tile_scale(mean_ptr, var_ptr, w_ptr, s_w, bnm_ptr, bnv_ptr, rn, nm, g, c0, C, CPG,
                factor, eps, ln_mean, ln_var, gn_mean, gn_var, A, B, I_IN: tl.constexpr,
                I_LN: tl.constexpr, I_BN: tl.constexpr, I_GN: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """The tile of channels ``c0 .. c0 + BLOCK_C`` of group ``g`` for samples ``rn``, as both
    mixing kernels see it: channels ``rc``, masks, offsets ``off`` into ``(N, C)``, the IN
    moments ``m``, ``u = factor * var``, the mixed ``mean``, ``r = 1 / sqrt(var + eps)``
    and ``scale = weight * r``."""
    offs_c = tl.arange(0, BLOCK_C)
    rc = g * CPG + c0 + offs_c
    cm = (c0 + offs_c) < CPG
    mask = nm[:, None] & cm[None, :]
    off = rn[:, None] * C + rc[None, :]
    m = tl.load(mean_ptr + off, mask=mask, other=0.0)
    u = tl.load(var_ptr + off, mask=mask, other=0.0) * factor
    mean, var = _mixture(m, u, rn, rc, nm, cm, ln_mean, ln_var, gn_mean, gn_var, bnm_ptr,
                         bnv_ptr, A, B, tl.arange(0, BLOCK_K), I_IN, I_LN, I_BN, I_GN)
    r = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + rc * s_w, mask=cm, other=0.0).to(tl.float32)
    return rc, cm, mask, off, m, u, mean, r, w[None, :] * r


# ============================================================== forward kernels
@triton.jit(do_not_specialize=_VARYING)
def _moments_kernel(x_ptr, mean_ptr, var_ptr, u_ptr, N, C, L, chunk, s_n, s_c, s_l, factor,
                    WRITE_U: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """K1: mean and biased variance of chunk ``p`` of each row, for a tile of channels.

    Blockwise Chan merge: each ``[BLOCK_C, BLOCK_L]`` block's own mean and M2 (two passes
    in registers) are merged into the running ones, so no ``E[x^2] - E[x]^2``.
    Writes ``(P, N, C)`` partials (with ``P = 1``: the moments themselves, and ``u``).
    """
    pid = tl.program_id(0)
    p = tl.program_id(1)
    num_cb = tl.cdiv(C, BLOCK_C)
    n = pid // num_cb
    rc = (pid % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = rc < C
    base = x_ptr + n.to(tl.int64) * s_n + rc.to(tl.int64)[:, None] * s_c
    start = p * chunk
    end = tl.minimum(start + chunk, L)
    offs_l = tl.arange(0, BLOCK_L)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for l0 in range(start, end, BLOCK_L):
        rl = l0 + offs_l
        mask = cm[:, None] & (rl < end)[None, :]
        xv = tl.load(base + rl.to(tl.int64)[None, :] * s_l, mask=mask, other=0.0).to(tl.float32)
        nb = tl.minimum(end - l0, BLOCK_L).to(tl.float32)
        na = (l0 - start).to(tl.float32)
        bmean = tl.sum(xv, axis=1) / nb
        dev = tl.where(mask, xv - bmean[:, None], 0.0)
        tot = na + nb
        delta = bmean - mean
        mean += delta * (nb / tot)
        m2 += tl.sum(dev * dev, axis=1) + delta * delta * (na * nb / tot)
    var = m2 / (end - start).to(tl.float32)
    out = (p * N + n).to(tl.int64) * C + rc
    tl.store(mean_ptr + out, mean, mask=cm)
    tl.store(var_ptr + out, var, mask=cm)
    if WRITE_U:
        tl.store(u_ptr + out, var * factor, mask=cm)


@triton.jit
def _merge_partials(mean_ptr, var_ptr, pmean_ptr, pvar_ptr, N, C, L, P, chunk,
                    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Exact merge of the ``P`` chunk moments of each row into ``(N, C)`` moments."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + offs_n
        for c0 in range(0, C, BLOCK_C):
            rc = c0 + offs_c
            mask = (rn < N)[:, None] & (rc < C)[None, :]
            off = rn[:, None] * C + rc[None, :]
            mean = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
            m2 = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
            for p in range(P):
                na = (p * chunk) * 1.0
                nb = tl.minimum(L - p * chunk, chunk) * 1.0
                pm = tl.load(pmean_ptr + p * N * C + off, mask=mask, other=0.0)
                pv = tl.load(pvar_ptr + p * N * C + off, mask=mask, other=0.0)
                tot = na + nb
                delta = pm - mean
                mean += delta * (nb / tot)
                m2 += pv * nb + delta * delta * (na * nb / tot)
            tl.store(mean_ptr + off, mean, mask=mask)
            tl.store(var_ptr + off, m2 / L, mask=mask)


@triton.jit(do_not_specialize=_VARYING)
def _mix_forward_kernel(
        mean_ptr, var_ptr, pmean_ptr, pvar_ptr,
        w_ptr, bias_ptr, s_w, s_bias, a_ptr, s_an, s_ak, b_ptr, s_bn, s_bk,
        bnm_in_ptr, bnv_in_ptr, s_bnm, s_bnv,
        scale_ptr, shift_ptr, bnm_ptr, bnv_ptr, count_ptr, gnm_ptr, gnv_ptr,
        N, C, L, P, chunk, G, CPG, factor, eps,
        K: tl.constexpr, I_IN: tl.constexpr, I_LN: tl.constexpr, I_BN: tl.constexpr,
        I_GN: tl.constexpr, BN_MODE: tl.constexpr, SOFTMAX: tl.constexpr, MERGE: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """K2 (one program): the whole ``(N, C)`` mixing step, looping over tiles.

    1. merge the chunk partials of K1 (``MERGE``); 2. BN moments: batch (one pass over the
    samples, tiles merged exactly), or a float32 copy of the given ones, and ``count = [N, N L]`` or zeros;
    3. per block of samples: LN/GN moments, then per tile the mixture, ``scale``, ``shift``.
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    if MERGE:
        _merge_partials(mean_ptr, var_ptr, pmean_ptr, pvar_ptr, N, C, L, P, chunk, BLOCK_N,
                        BLOCK_C)
        tl.debug_barrier()
    two = tl.arange(0, 2)
    if BN_MODE == 2:
        for c0 in range(0, C, BLOCK_C):
            rc = c0 + offs_c
            cm = rc < C
            # one pass over the samples, tiles merged exactly (Chan et al.)
            bmean = tl.zeros([BLOCK_C], dtype=tl.float32)
            m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
            su = tl.zeros([BLOCK_C], dtype=tl.float32)
            for n0 in range(0, N, BLOCK_N):
                rn = n0 + offs_n
                mask = (rn < N)[:, None] & cm[None, :]
                off = rn[:, None] * C + rc[None, :]
                m = tl.load(mean_ptr + off, mask=mask, other=0.0)
                v = tl.load(var_ptr + off, mask=mask, other=0.0)
                nb = tl.minimum(N - n0, BLOCK_N) * 1.0
                na = n0 * 1.0
                tmean = tl.sum(m, axis=0) / nb
                d = tl.where(mask, m - tmean[None, :], 0.0)
                delta = tmean - bmean
                bmean += delta * (nb / (na + nb))
                m2 += tl.sum(d * d, axis=0) + delta * delta * (na * nb / (na + nb))
                su += tl.sum(v, axis=0) * factor
            tl.store(bnm_ptr + rc, bmean, mask=cm)
            tl.store(bnv_ptr + rc, (su + m2) / N, mask=cm)
        tl.store(count_ptr + two, tl.where(two == 0, N * 1.0, (N * 1.0) * L))
    else:
        tl.store(count_ptr + two, tl.zeros([2], dtype=tl.float32))
        if BN_MODE == 1:
            for c0 in range(0, C, BLOCK_C):
                rc = c0 + offs_c
                cm = rc < C
                tl.store(bnm_ptr + rc, tl.load(bnm_in_ptr + rc * s_bnm, mask=cm).to(tl.float32),
                         mask=cm)
                tl.store(bnv_ptr + rc, tl.load(bnv_in_ptr + rc * s_bnv, mask=cm).to(tl.float32),
                         mask=cm)
    tl.debug_barrier()
    for n0 in range(0, N, BLOCK_N):
        rn, nm, A, B, ln_mean, ln_var = _sample_block(
            n0, a_ptr, s_an, s_ak, b_ptr, s_bn, s_bk, mean_ptr, var_ptr, gnm_ptr, gnv_ptr, N, C,
            G, CPG, factor, K, SOFTMAX, I_LN >= 0 or I_GN >= 0, I_GN >= 0, BLOCK_N, BLOCK_C,
            BLOCK_K)
        for g in range(G):
            gn_mean, gn_var = _group_moments(gnm_ptr, gnv_ptr, rn, nm, G, g, I_GN >= 0, BLOCK_N)
            for c0 in range(0, CPG, BLOCK_C):
                rc, cm, mask, off, m, u, mean, r, scale = _tile_scale(
                    mean_ptr, var_ptr, w_ptr, s_w, bnm_ptr, bnv_ptr, rn, nm, g, c0, C, CPG,
                    factor, eps, ln_mean, ln_var, gn_mean, gn_var, A, B, I_IN, I_LN, I_BN, I_GN,
                    BLOCK_C, BLOCK_K)
                beta = tl.load(bias_ptr + rc * s_bias, mask=cm, other=0.0).to(tl.float32)
                tl.store(scale_ptr + off, scale, mask=mask)
                tl.store(shift_ptr + off, beta[None, :] - mean * scale, mask=mask)
        tl.debug_barrier()


@triton.jit
def _pointwise_tile(C, L, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """The ``[BLOCK_C, BLOCK_L]`` tile of this program in the pointwise kernels (grid: one
    program per sample, channel block and position block): channels ``rc``, their mask,
    the tile's mask, offsets ``coef`` into ``(N, C)`` coefficients, and the int64 sample,
    channel ``[BLOCK_C, 1]`` and position ``[1, BLOCK_L]`` indices for strided addresses."""
    pid = tl.program_id(0)
    num_cb = tl.cdiv(C, BLOCK_C)
    num_lb = tl.cdiv(L, BLOCK_L)
    lb = pid % num_lb
    row = pid // num_lb
    n = row // num_cb
    rc = (row % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    rl = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    cm = rc < C
    mask = cm[:, None] & (rl < L)[None, :]
    return (rc, cm, mask, n * C + rc, n.to(tl.int64), rc.to(tl.int64)[:, None],
            rl.to(tl.int64)[None, :])


@triton.jit(do_not_specialize=_VARYING)
def _affine_kernel(x_ptr, y_ptr, scale_ptr, shift_ptr, N, C, L, s_n, s_c, s_l, t_n, t_c, t_l,
                   BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """K3: ``y = scale[n, c] x + shift[n, c]`` on one ``[BLOCK_C, BLOCK_L]`` tile."""
    rc, cm, mask, coef, n64, rc64, rl64 = _pointwise_tile(C, L, BLOCK_C, BLOCK_L)
    scale = tl.load(scale_ptr + coef, mask=cm, other=0.0)
    shift = tl.load(shift_ptr + coef, mask=cm, other=0.0)
    x = tl.load(x_ptr + n64 * s_n + rc64 * s_c + rl64 * s_l, mask=mask, other=0.0)
    y = x.to(tl.float32) * scale[:, None] + shift[:, None]
    tl.store(y_ptr + n64 * t_n + rc64 * t_c + rl64 * t_l, y.to(y_ptr.dtype.element_ty), mask=mask)


# ============================================================== backward kernels
@triton.jit(do_not_specialize=_VARYING)
def _grad_sums_kernel(g_ptr, x_ptr, mean_ptr, s_ptr, t_ptr, N, C, L, chunk,
                      q_n, q_c, q_l, s_n, s_c, s_l,
                      BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """K1: ``sum g (x - mean_in)`` and ``sum g`` over chunk ``p`` of each row, ``(P, N, C)``."""
    pid = tl.program_id(0)
    p = tl.program_id(1)
    num_cb = tl.cdiv(C, BLOCK_C)
    n = pid // num_cb
    rc = (pid % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = rc < C
    mu = tl.load(mean_ptr + n * C + rc, mask=cm, other=0.0)
    n64 = n.to(tl.int64)
    rc64 = rc.to(tl.int64)[:, None]
    start = p * chunk
    end = tl.minimum(start + chunk, L)
    offs_l = tl.arange(0, BLOCK_L)
    dot = tl.zeros([BLOCK_C], dtype=tl.float32)
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    for l0 in range(start, end, BLOCK_L):
        rl64 = (l0 + offs_l).to(tl.int64)[None, :]
        mask = cm[:, None] & ((l0 + offs_l) < end)[None, :]
        g = tl.load(g_ptr + n64 * q_n + rc64 * q_c + rl64 * q_l, mask=mask,
                    other=0.0).to(tl.float32)
        x = tl.load(x_ptr + n64 * s_n + rc64 * s_c + rl64 * s_l, mask=mask,
                    other=0.0).to(tl.float32)
        dot += tl.sum(g * tl.where(mask, x - mu[:, None], 0.0), axis=1)
        total += tl.sum(g, axis=1)
    out = (p * N + n).to(tl.int64) * C + rc
    tl.store(s_ptr + out, dot, mask=cm)
    tl.store(t_ptr + out, total, mask=cm)


@triton.jit
def _weight_grads(ga_ptr, s_gn, s_gk, A, dA, rn, N, dacc, K: tl.constexpr,
                  BLOCK_K: tl.constexpr, SOFTMAX: tl.constexpr, SHARED: tl.constexpr):
    """Per-sample weights: store ``d logits`` (through the softmax) of samples ``rn``.

    Shared weights: return ``dacc`` plus this block's ``dA`` summed over the samples.
    """
    kidx = tl.arange(0, BLOCK_K)
    if SHARED:
        dacc += tl.sum(dA, axis=0)
    else:
        grad = dA
        if SOFTMAX:
            grad = A * (dA - tl.sum(A * dA, axis=1)[:, None])
        tl.store(ga_ptr + rn[:, None] * s_gn + kidx[None, :] * s_gk, grad,
                 mask=(rn < N)[:, None] & (kidx < K)[None, :])
    return dacc


@triton.jit
def _shared_weight_grad(ga_ptr, s_gk, a_ptr, s_ak, dacc, K: tl.constexpr,
                        BLOCK_K: tl.constexpr, SOFTMAX: tl.constexpr):
    """Store the gradient of shared ``(K,)`` weights from the summed ``d weights``."""
    kidx = tl.arange(0, BLOCK_K)
    kmask = kidx < K
    grad = dacc
    if SOFTMAX:
        w = tl.load(a_ptr + kidx * s_ak, mask=kmask, other=0.0).to(tl.float32)
        w = tl.where(kmask, w, float('-inf'))
        e = tl.where(kmask, tl.exp(w - tl.max(w, axis=0)), 0.0)
        p = e / tl.sum(e, axis=0)
        grad = p * (dacc - tl.sum(p * dacc, axis=0))
    tl.store(ga_ptr + kidx * s_gk, grad, mask=kmask)


@triton.jit
def _onehot(kidx, k: tl.constexpr, vec):
    return tl.where(kidx[None, :] == k, vec[:, None], 0.0)


@triton.jit(do_not_specialize=_VARYING)
def _mix_backward_kernel(
        ps_ptr, pt_ptr, mean_ptr, var_ptr, w_ptr, s_w, a_ptr, s_an, s_ak, b_ptr, s_bn, s_bk,
        bnm_ptr, bnv_ptr,
        scale_ptr, k_ptr, c_ptr, gw_ptr, gbias_ptr, ga_ptr, s_gan, s_gak, gb_ptr, s_gbn, s_gbk,
        gmu_ptr, gv_ptr, dw_ptr, dbias_ptr, gnm_ptr, gnv_ptr, gsm_ptr, gsv_ptr,
        N, C, L, P, G, CPG, factor, eps,
        K: tl.constexpr, I_IN: tl.constexpr, I_LN: tl.constexpr, I_BN: tl.constexpr,
        I_GN: tl.constexpr, SOFTMAX: tl.constexpr, SHARED_A: tl.constexpr,
        SHARED_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
        BLOCK_K: tl.constexpr):
    """K2 (one program): backward of the mixing step, looping over tiles.

    Per block of samples: (A) LN/GN moments; (B) per tile ``g_mu``, ``g_v`` (kept in the
    ``k``/``c`` outputs meanwhile), the sums over samples (``dgamma``, ``dbeta``, BN's
    ``G^mu``, ``G^v``) in float32 accumulators, the sums over channels and groups, and
    ``d a``, ``d b``; (C) per tile ``d mu``, ``d u`` and the input-gradient coefficients
    ``k = 2 f du / L``, ``c = d mu / L``. Then the weight and parameter gradients.
    """
    offs_c = tl.arange(0, BLOCK_C)
    kidx = tl.arange(0, BLOCK_K)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + offs_c
        cm = rc < C
        zero = tl.zeros([BLOCK_C], dtype=tl.float32)
        tl.store(dw_ptr + rc, zero, mask=cm)
        tl.store(dbias_ptr + rc, zero, mask=cm)
        tl.store(gmu_ptr + rc, zero, mask=cm)
        tl.store(gv_ptr + rc, zero, mask=cm)
    tl.debug_barrier()
    dacc_a = tl.zeros([BLOCK_K], dtype=tl.float32)
    dacc_b = tl.zeros([BLOCK_K], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn, nm, A, B, ln_mean, ln_var = _sample_block(
            n0, a_ptr, s_an, s_ak, b_ptr, s_bn, s_bk, mean_ptr, var_ptr, gnm_ptr, gnv_ptr, N, C,
            G, CPG, factor, K, SOFTMAX, I_LN >= 0 or I_GN >= 0, I_GN >= 0, BLOCK_N, BLOCK_C,
            BLOCK_K)
        # (B) g_mu, g_v and the sums over samples, channels and groups
        sgm_ln = tl.zeros([BLOCK_N], dtype=tl.float32)
        sgv_ln = tl.zeros([BLOCK_N], dtype=tl.float32)
        dA = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        dB = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for g in range(G):
            gn_mean, gn_var = _group_moments(gnm_ptr, gnv_ptr, rn, nm, G, g, I_GN >= 0, BLOCK_N)
            sgm = tl.zeros([BLOCK_N], dtype=tl.float32)
            sgv = tl.zeros([BLOCK_N], dtype=tl.float32)
            for c0 in range(0, CPG, BLOCK_C):
                rc, cm, mask, off, m, u, mean, r, scale = _tile_scale(
                    mean_ptr, var_ptr, w_ptr, s_w, bnm_ptr, bnv_ptr, rn, nm, g, c0, C, CPG,
                    factor, eps, ln_mean, ln_var, gn_mean, gn_var, A, B, I_IN, I_LN, I_BN, I_GN,
                    BLOCK_C, BLOCK_K)
                s_sum = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
                t_sum = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
                for p in range(P):
                    s_sum += tl.load(ps_ptr + p * N * C + off, mask=mask, other=0.0)
                    t_sum += tl.load(pt_ptr + p * N * C + off, mask=mask, other=0.0)
                d = s_sum + (m - mean) * t_sum
                gm = tl.where(mask, -scale * t_sum, 0.0)
                gv = tl.where(mask, -0.5 * d * scale * r * r, 0.0)
                dr = tl.where(mask, d * r, 0.0)
                tl.store(dw_ptr + rc, tl.load(dw_ptr + rc, mask=cm, other=0.0)
                         + tl.sum(dr, axis=0), mask=cm)
                tl.store(dbias_ptr + rc, tl.load(dbias_ptr + rc, mask=cm, other=0.0)
                         + tl.sum(t_sum, axis=0), mask=cm)
                if I_IN >= 0:
                    dA += _onehot(kidx, I_IN, tl.sum(gm * m, axis=1))
                    dB += _onehot(kidx, I_IN, tl.sum(gv * u, axis=1))
                if I_BN >= 0:
                    bm = tl.load(bnm_ptr + rc, mask=cm, other=0.0)
                    bv = tl.load(bnv_ptr + rc, mask=cm, other=0.0)
                    dA += _onehot(kidx, I_BN, tl.sum(gm * bm[None, :], axis=1))
                    dB += _onehot(kidx, I_BN, tl.sum(gv * bv[None, :], axis=1))
                    a_bn = _col(A, kidx, I_BN)
                    b_bn = _col(B, kidx, I_BN)
                    tl.store(gmu_ptr + rc, tl.load(gmu_ptr + rc, mask=cm, other=0.0)
                             + tl.sum(a_bn[:, None] * gm, axis=0), mask=cm)
                    tl.store(gv_ptr + rc, tl.load(gv_ptr + rc, mask=cm, other=0.0)
                             + tl.sum(b_bn[:, None] * gv, axis=0), mask=cm)
                sgm += tl.sum(gm, axis=1)
                sgv += tl.sum(gv, axis=1)
                tl.store(scale_ptr + off, scale, mask=mask)
                tl.store(k_ptr + off, gm, mask=mask)
                tl.store(c_ptr + off, gv, mask=mask)
            if I_GN >= 0:
                tl.store(gsm_ptr + rn * G + g, sgm, mask=nm)
                tl.store(gsv_ptr + rn * G + g, sgv, mask=nm)
                dA += _onehot(kidx, I_GN, gn_mean * sgm)
                dB += _onehot(kidx, I_GN, gn_var * sgv)
            sgm_ln += sgm
            sgv_ln += sgv
        if I_LN >= 0:
            dA += _onehot(kidx, I_LN, ln_mean * sgm_ln)
            dB += _onehot(kidx, I_LN, ln_var * sgv_ln)
        tl.debug_barrier()
        # (C) d mu_in, d u and the input-gradient coefficients
        for g in range(G):
            if I_GN >= 0:
                gn_mean = tl.load(gnm_ptr + rn * G + g, mask=nm, other=0.0)
                sgm_g = tl.load(gsm_ptr + rn * G + g, mask=nm, other=0.0)
                sgv_g = tl.load(gsv_ptr + rn * G + g, mask=nm, other=0.0)
            for c0 in range(0, CPG, BLOCK_C):
                rc = g * CPG + c0 + offs_c
                cm = (c0 + offs_c) < CPG
                mask = nm[:, None] & cm[None, :]
                off = rn[:, None] * C + rc[None, :]
                m = tl.load(mean_ptr + off, mask=mask, other=0.0)
                gm = tl.load(k_ptr + off, mask=mask, other=0.0)
                gv = tl.load(c_ptr + off, mask=mask, other=0.0)
                dmu = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
                du = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
                if I_IN >= 0:
                    dmu += _col(A, kidx, I_IN)[:, None] * gm
                    du += _col(B, kidx, I_IN)[:, None] * gv
                if I_LN >= 0:
                    gmu_ln = _col(A, kidx, I_LN) * sgm_ln / C
                    gv_ln = _col(B, kidx, I_LN) * sgv_ln / C
                    dmu += gmu_ln[:, None] + 2.0 * gv_ln[:, None] * (m - ln_mean[:, None])
                    du += gv_ln[:, None]
                if I_GN >= 0:
                    gmu_gn = _col(A, kidx, I_GN) * sgm_g / CPG
                    gv_gn = _col(B, kidx, I_GN) * sgv_g / CPG
                    dmu += gmu_gn[:, None] + 2.0 * gv_gn[:, None] * (m - gn_mean[:, None])
                    du += gv_gn[:, None]
                tl.store(k_ptr + off, du * (2.0 * factor / L), mask=mask)
                tl.store(c_ptr + off, dmu / L, mask=mask)
        dacc_a = _weight_grads(ga_ptr, s_gan, s_gak, A, dA, rn, N, dacc_a, K, BLOCK_K, SOFTMAX,
                               SHARED_A)
        dacc_b = _weight_grads(gb_ptr, s_gbn, s_gbk, B, dB, rn, N, dacc_b, K, BLOCK_K, SOFTMAX,
                               SHARED_B)
        tl.debug_barrier()
    if SHARED_A:
        _shared_weight_grad(ga_ptr, s_gak, a_ptr, s_ak, dacc_a, K, BLOCK_K, SOFTMAX)
    if SHARED_B:
        _shared_weight_grad(gb_ptr, s_gbk, b_ptr, s_bk, dacc_b, K, BLOCK_K, SOFTMAX)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + offs_c
        cm = rc < C
        tl.store(gw_ptr + rc, tl.load(dw_ptr + rc, mask=cm, other=0.0).to(gw_ptr.dtype.element_ty),
                 mask=cm)
        tl.store(gbias_ptr + rc,
                 tl.load(dbias_ptr + rc, mask=cm, other=0.0).to(gbias_ptr.dtype.element_ty),
                 mask=cm)


@triton.jit(do_not_specialize=_VARYING)
def _input_grad_kernel(g_ptr, x_ptr, dx_ptr, mean_ptr, scale_ptr, k_ptr, c_ptr, gmu_ptr, gv_ptr,
                       bnm_ptr, count_ptr, N, C, L, factor,
                       q_n, q_c, q_l, s_n, s_c, s_l, t_n, t_c, t_l,
                       ADD_BN: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """K3: ``dx = scale g + k (x - mu) + c`` on one tile, with BN's ``G / |S|`` term if ``ADD_BN``."""
    rc, cm, mask, coef, n64, rc64, rl64 = _pointwise_tile(C, L, BLOCK_C, BLOCK_L)
    mu = tl.load(mean_ptr + coef, mask=cm, other=0.0)
    scale = tl.load(scale_ptr + coef, mask=cm, other=0.0)
    kk = tl.load(k_ptr + coef, mask=cm, other=0.0)
    cc = tl.load(c_ptr + coef, mask=cm, other=0.0)
    if ADD_BN:
        count = tl.load(count_ptr)
        gmu = tl.load(gmu_ptr + rc, mask=cm, other=0.0) / count
        gvar = tl.load(gv_ptr + rc, mask=cm, other=0.0) / count
        bm = tl.load(bnm_ptr + rc, mask=cm, other=0.0)
        kk += gvar * (2.0 * factor / L)
        cc += (gmu + 2.0 * gvar * (mu - bm)) / L
    g = tl.load(g_ptr + n64 * q_n + rc64 * q_c + rl64 * q_l, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + n64 * s_n + rc64 * s_c + rl64 * s_l, mask=mask, other=0.0).to(tl.float32)
    dx = scale[:, None] * g + kk[:, None] * (x - mu[:, None]) + cc[:, None]
    tl.store(dx_ptr + n64 * t_n + rc64 * t_c + rl64 * t_l, dx.to(dx_ptr.dtype.element_ty),
             mask=mask)


# ============================================================== host side
def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _strides3(t: Tensor) -> Optional[Tuple[int, int, int]]:
    """``(sN, sC, sL)`` of ``t`` viewed as ``(N, C, L)``, or None if the spatial dims don't collapse."""
    dims = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != inner * size:
            return None
    return t.stride(0), t.stride(1), (dims[-1][1] if dims else 1)


def _as_rows(t: Tensor) -> Tuple[Tensor, Tuple[int, int, int]]:
    strides = _strides3(t)
    if strides is None:  # a layout no single spatial stride describes: one copy
        t = t.contiguous()
        strides = _strides3(t)
    return t, strides


def _row_blocks(C: int, L: int, s_c: int, s_l: int) -> Tuple[int, int]:
    """``(BLOCK_C, BLOCK_L)`` of the row passes: lanes along the unit-stride dimension."""
    if s_c == 1 and s_l != 1 and L > 1:  # channels_last: channels are contiguous
        block_c = min(_pow2(C), 64)
        return block_c, max(1, min(_pow2(L), 2048 // block_c))
    block_l = min(_pow2(L), 1024)
    return max(1, min(_pow2(C), 2048 // block_l)), block_l


def _chunks(N: int, C: int, L: int, block_c: int, block_l: int, split: bool) -> Tuple[int, int]:
    """``(P, chunk)``: split rows into ``P`` chunks of ``chunk`` values (a multiple of BLOCK_L)."""
    programs = max(1, N * triton.cdiv(C, block_c))
    blocks = triton.cdiv(L, block_l)
    parts = min(blocks, max(1, triton.cdiv(_TARGET_PROGRAMS, programs)), _MAX_CHUNKS) if split else 1
    chunk = triton.cdiv(blocks, parts) * block_l
    return triton.cdiv(L, chunk), chunk


def _mix_blocks(N: int, cpg: int, K: int) -> Tuple[int, int, int]:
    block_c = min(_pow2(cpg), 256)
    return max(1, min(_pow2(N), 2048 // block_c)), block_c, max(2, _pow2(K))


def _pool_indices(pool: Sequence[str], channels: int, num_groups: int, bn_mode: str):
    pool = tuple(pool)
    if not pool or any(p not in BRANCHES for p in pool) or len(set(pool)) != len(pool):
        raise ValueError(f'pool must be a non-empty tuple of distinct branches from {BRANCHES}, '
                         f'got {pool!r}')
    if bn_mode not in BN_MODE_CODES:
        raise ValueError(f'bn_mode must be one of {tuple(BN_MODE_CODES)}, got {bn_mode!r}')
    if ('BN' in pool) != (bn_mode != 'none'):
        raise ValueError(f"bn_mode={bn_mode!r} does not fit pool {pool!r}: use 'none' exactly "
                         "when the pool has no 'BN' branch")
    groups = 1
    if 'GN' in pool:
        if not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
            raise ValueError(f'num_groups must be a positive divisor of the {channels} channels '
                             f'for a GN branch, got {num_groups!r}')
        groups = num_groups
    idx = {name: (pool.index(name) if name in pool else -1) for name in BRANCHES}
    return pool, idx, groups


def _check_weights(name: str, t: Tensor, N: int, K: int, device) -> bool:
    """True if ``t`` is shared ``(K,)``, False if per sample ``(N, K)``."""
    if t.shape == (K,):
        shared = True
    elif t.shape == (N, K):
        shared = False
    else:
        raise ValueError(f'{name} must have shape ({K},) (shared) or ({N}, {K}) (per sample) '
                         f'for a pool of {K} branches, got {tuple(t.shape)}')
    if t.device != device or not t.is_floating_point():
        raise ValueError(f'{name} must be a floating-point tensor on {device}, got {t.dtype} on '
                         f'{t.device}')
    return shared


def _check_vector(name: str, t: Tensor, C: int, device) -> None:
    if t is None or t.shape != (C,) or t.device != device or not t.is_floating_point():
        got = None if t is None else f'{tuple(t.shape)} {t.dtype} on {t.device}'
        raise ValueError(f'{name} must be a floating-point ({C},) tensor on {device}, got {got}')


def _check_input(x: Tensor) -> Tuple[int, int, int]:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f'the Triton SN kernels take float32, float16 or bfloat16 inputs, got '
                        f'{x.dtype} (float64 uses the ATen path)')
    if x.dim() < 2 or x.shape[1] == 0 or any(s == 0 for s in x.shape[2:]):
        raise ValueError(f'x must be (N, C, *spatial) with C >= 1 and non-empty spatial sizes, '
                         f'got shape {tuple(x.shape)}')
    if x.device.type == 'cpu' and not INTERPRET:
        raise RuntimeError('the Triton SN kernels run CPU tensors only under Triton\'s '
                           'interpreter: set TRITON_INTERPRET=1 before importing '
                           'sn_mm.ops.triton_kernels (or pass CUDA tensors)')
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def forward(x: Tensor, weight: Tensor, bias: Tensor, a: Tensor, b: Tensor,
            bn_mean: Optional[Tensor], bn_var: Optional[Tensor], pool: Sequence[str],
            num_groups: int, bn_mode: str, eps: float, unbiased: bool, softmax: bool,
            sync_moments: Optional[Callable] = None):
    """SN forward in three launches. Returns ``(y, mean_in, var_in, bn_mean, bn_var, bn_count)``.

    ``mean_in``/``var_in``: ``(N, C)`` float32 instance moments (biased variance);
    ``bn_mean``/``bn_var``: the ``(C,)`` float32 BN moments used (``(0,)`` without BN);
    ``bn_count``: ``[samples, values]`` they average over (zeros unless batch moments, or
    what ``sync_moments`` returned). ``bn_mode='given'`` reads ``bn_mean``/``bn_var``, or,
    with ``sync_moments(mean_in, u) -> (bn_mean, bn_var, count)`` (SyncSN's collective),
    takes them from the callback, called between K1 and K2.
    """
    N, C, L = _check_input(x)
    pool, idx, groups = _pool_indices(pool, C, num_groups, bn_mode)
    K = len(pool)
    dev = x.device
    shared_a = _check_weights('a', a, N, K, dev)
    shared_b = _check_weights('b', b, N, K, dev)
    _check_vector('weight', weight, C, dev)
    _check_vector('bias', bias, C, dev)
    if sync_moments is not None and bn_mode != 'given':
        raise ValueError(f"sync_moments needs bn_mode='given' (the union-batch moments are "
                         f"given to the mixing kernel), got bn_mode={bn_mode!r}")
    if bn_mode == 'given' and sync_moments is None:
        _check_vector('bn_mean', bn_mean, C, dev)
        _check_vector('bn_var', bn_var, C, dev)
    if bn_mode == 'batch' and N * L <= 1:
        raise ValueError(f'batch moments need more than 1 value per channel, got input shape '
                         f'{tuple(x.shape)}')
    mode = BN_MODE_CODES[bn_mode]
    factor = bessel_factor(L, unbiased)
    x, (s_n, s_c, s_l) = _as_rows(x)
    f32 = dict(dtype=torch.float32, device=dev)
    mean_in = torch.empty((N, C), **f32)
    var_in = torch.empty((N, C), **f32)
    block_c, block_l = _row_blocks(C, L, s_c, s_l)
    parts, chunk = _chunks(N, C, L, block_c, block_l, split=sync_moments is None)
    u = torch.empty((N, C), **f32) if sync_moments is not None else mean_in
    if parts > 1:
        pmean = torch.empty((parts, N, C), **f32)
        pvar = torch.empty((parts, N, C), **f32)
    else:
        pmean, pvar = mean_in, var_in
    if N:
        _launch(_moments_kernel, (N * triton.cdiv(C, block_c), parts), x, pmean, pvar, u,
                N, C, L, chunk, s_n, s_c, s_l, factor, WRITE_U=sync_moments is not None,
                BLOCK_C=block_c, BLOCK_L=block_l, num_warps=_ROW_WARPS)
    count = torch.empty(2, **f32)
    if sync_moments is not None:
        bn_mean, bn_var, count = sync_moments(mean_in, u)
        _check_vector('bn_mean from sync_moments', bn_mean, C, dev)
        _check_vector('bn_var from sync_moments', bn_var, C, dev)
    nbn = C if mode else 0
    bnm_out = torch.empty(nbn, **f32)
    bnv_out = torch.empty(nbn, **f32)
    cpg = C // groups
    gn_size = N * groups if idx['GN'] >= 0 else 0
    gnm = torch.empty(gn_size, **f32)
    gnv = torch.empty(gn_size, **f32)
    scale = torch.empty((N, C), **f32)
    shift = torch.empty((N, C), **f32)
    count_out = torch.empty(2, **f32) if sync_moments is not None else count
    block_n, block_cm, block_k = _mix_blocks(N, cpg, K)
    given_m = bn_mean if mode == 1 else bnm_out
    given_v = bn_var if mode == 1 else bnv_out
    _launch(_mix_forward_kernel, (1,), mean_in, var_in, pmean, pvar,
            weight, bias, weight.stride(0), bias.stride(0),
            a, 0 if shared_a else a.stride(0), a.stride(-1),
            b, 0 if shared_b else b.stride(0), b.stride(-1),
            given_m, given_v, given_m.stride(0) if nbn else 1, given_v.stride(0) if nbn else 1,
            scale, shift, bnm_out, bnv_out, count_out, gnm, gnv,
            N, C, L, parts, chunk, groups, cpg, factor, eps,
            K=K, I_IN=idx['IN'], I_LN=idx['LN'], I_BN=idx['BN'], I_GN=idx['GN'], BN_MODE=mode,
            SOFTMAX=bool(softmax), MERGE=parts > 1, BLOCK_N=block_n, BLOCK_C=block_cm,
            BLOCK_K=block_k, num_warps=_MIX_WARPS)
    y = torch.empty_like(x)  # x's memory format (channels_last stays channels_last)
    t_n, t_c, t_l = _strides3(y)
    if y.numel():
        _launch(_affine_kernel, (N * triton.cdiv(C, block_c) * triton.cdiv(L, block_l),),
                x, y, scale, shift, N, C, L, s_n, s_c, s_l, t_n, t_c, t_l,
                BLOCK_C=block_c, BLOCK_L=block_l, num_warps=_ROW_WARPS)
    return y, mean_in, var_in, bnm_out, bnv_out, count


def backward(grad_y: Tensor, x: Tensor, mean_in: Tensor, var_in: Tensor, weight: Tensor,
             a: Tensor, b: Tensor, bn_mean: Optional[Tensor], bn_var: Optional[Tensor],
             bn_count: Optional[Tensor], pool: Sequence[str], num_groups: int, bn_mode: str,
             eps: float, unbiased: bool, softmax: bool, input_grad: bool,
             sync_grad: Optional[Callable] = None):
    """SN backward in three launches. Returns ``(grad_x, grad_weight, grad_bias, grad_a, grad_b)``.

    ``bn_mean``/``bn_var``/``bn_count``: what :func:`forward` returned (for SyncSN the
    union-batch moments and counts, with ``bn_mode='given'`` and ``sync_grad(G_mu, G_v)``
    returning their sums over the ranks; called between K2 and K3). ``grad_x`` is an empty
    tensor when ``input_grad`` is False; the gradient of ``bias`` has ``weight``'s dtype.
    """
    N, C, L = _check_input(x)
    pool, idx, groups = _pool_indices(pool, C, num_groups, bn_mode)
    K = len(pool)
    dev = x.device
    shared_a = _check_weights('a', a, N, K, dev)
    shared_b = _check_weights('b', b, N, K, dev)
    _check_vector('weight', weight, C, dev)
    if grad_y.shape != x.shape or grad_y.device != dev:
        raise ValueError(f'grad_y must have x\'s shape {tuple(x.shape)} on {dev}, got '
                         f'{tuple(grad_y.shape)} on {grad_y.device}')
    for name, t in (('mean_in', mean_in), ('var_in', var_in)):
        if t.shape != (N, C) or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f'{name} must be the contiguous float32 ({N}, {C}) tensor forward '
                             f'returned, got {tuple(t.shape)} {t.dtype}')
    mode = BN_MODE_CODES[bn_mode]
    if mode:
        for name, t in (('bn_mean', bn_mean), ('bn_var', bn_var)):
            if t is None or t.shape != (C,) or t.dtype != torch.float32 or not t.is_contiguous():
                raise ValueError(f'{name} must be the contiguous float32 ({C},) tensor forward '
                                 f'returned, got {None if t is None else tuple(t.shape)}')
    add_bn = mode == 2 or sync_grad is not None
    if sync_grad is not None and bn_mode != 'given':
        raise ValueError(f"sync_grad needs bn_mode='given' (SyncSN), got {bn_mode!r}")
    if add_bn and (bn_count is None or bn_count.shape != (2,) or bn_count.dtype != torch.float32):
        raise ValueError('bn_count must be the float32 [samples, values] tensor forward returned')
    factor = bessel_factor(L, unbiased)
    x, (s_n, s_c, s_l) = _as_rows(x)
    if grad_y.dtype != x.dtype and grad_y.dtype not in (torch.float32, torch.float16,
                                                         torch.bfloat16):
        raise TypeError(f'grad_y must be float32, float16 or bfloat16, got {grad_y.dtype}')
    grad_y, (q_n, q_c, q_l) = _as_rows(grad_y)
    f32 = dict(dtype=torch.float32, device=dev)
    block_c, block_l = _row_blocks(C, L, s_c, s_l)
    parts, chunk = _chunks(N, C, L, block_c, block_l, split=True)
    psum = torch.empty((parts, N, C), **f32)
    ptot = torch.empty((parts, N, C), **f32)
    if N:
        _launch(_grad_sums_kernel, (N * triton.cdiv(C, block_c), parts), grad_y, x, mean_in,
                psum, ptot, N, C, L, chunk, q_n, q_c, q_l, s_n, s_c, s_l,
                BLOCK_C=block_c, BLOCK_L=block_l, num_warps=_ROW_WARPS)
    cpg = C // groups
    gn_size = N * groups if idx['GN'] >= 0 else 0
    scratch = [torch.empty(gn_size, **f32) for _ in range(4)]
    scale = torch.empty((N, C), **f32)
    kcoef = torch.empty((N, C), **f32)
    ccoef = torch.empty((N, C), **f32)
    acc = [torch.empty(C, **f32) for _ in range(4)]  # G_mu, G_v, dgamma, dbeta
    grad_weight = torch.empty(C, dtype=weight.dtype, device=dev)
    grad_bias = torch.empty(C, dtype=weight.dtype, device=dev)
    grad_a = torch.empty(a.shape, dtype=a.dtype, device=dev)
    grad_b = torch.empty(b.shape, dtype=b.dtype, device=dev)
    bnm = bn_mean if mode else mean_in
    bnv = bn_var if mode else var_in
    block_n, block_cm, block_k = _mix_blocks(N, cpg, K)
    _launch(_mix_backward_kernel, (1,), psum, ptot, mean_in, var_in, weight, weight.stride(0),
            a, 0 if shared_a else a.stride(0), a.stride(-1),
            b, 0 if shared_b else b.stride(0), b.stride(-1), bnm, bnv,
            scale, kcoef, ccoef, grad_weight, grad_bias,
            grad_a, 0 if shared_a else grad_a.stride(0), grad_a.stride(-1),
            grad_b, 0 if shared_b else grad_b.stride(0), grad_b.stride(-1),
            acc[0], acc[1], acc[2], acc[3], *scratch,
            N, C, L, parts, groups, cpg, factor, eps,
            K=K, I_IN=idx['IN'], I_LN=idx['LN'], I_BN=idx['BN'], I_GN=idx['GN'],
            SOFTMAX=bool(softmax), SHARED_A=shared_a, SHARED_B=shared_b,
            BLOCK_N=block_n, BLOCK_C=block_cm, BLOCK_K=block_k, num_warps=_MIX_WARPS)
    g_mu, g_v = acc[0], acc[1]
    if sync_grad is not None:
        g_mu, g_v = sync_grad(acc[0], acc[1])
        _check_vector('G_mu from sync_grad', g_mu, C, dev)
        _check_vector('G_v from sync_grad', g_v, C, dev)
    if not input_grad:
        return x.new_empty(0), grad_weight, grad_bias, grad_a, grad_b
    grad_x = torch.empty_like(x)
    t_n, t_c, t_l = _strides3(grad_x)
    if grad_x.numel():
        _launch(_input_grad_kernel, (N * triton.cdiv(C, block_c) * triton.cdiv(L, block_l),),
                grad_y, x, grad_x, mean_in, scale, kcoef, ccoef, g_mu, g_v, bnm,
                bn_count if add_bn else mean_in, N, C, L, factor,
                q_n, q_c, q_l, s_n, s_c, s_l, t_n, t_c, t_l,
                ADD_BN=add_bn, BLOCK_C=block_c, BLOCK_L=block_l, num_warps=_ROW_WARPS)
    return grad_x, grad_weight, grad_bias, grad_a, grad_b


__all__ = ['BRANCHES', 'INTERPRET', 'LAUNCH_COUNT', 'backward', 'forward']
