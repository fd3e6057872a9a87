r"""Exemplar Normalization (EN) layers, pure torch.

Exemplar Normalization (Zhang, Peng, Wu, Li, Luo, CVPR 2020, arXiv:2003.08761) is SN with
*sample-dependent* importance ratios: every sample ``n`` gets its own mixture
:math:`\lambda_n` of the normalizers, produced by a small ratio network from that sample's
statistics. The paper's layer (its Eqn. 3, with :math:`\gamma, \beta` per channel):

.. math::
    y_{ncl} = \gamma_c \sum_k \lambda_{nk}\,
              \frac{x_{ncl} - \mu_{k}[n, c]}{\sqrt{v_{k}[n, c] + \epsilon}} + \beta_c,
    \qquad \sum_k \lambda_{nk} = 1, \quad k \in \{\mathrm{IN}, \mathrm{LN}, \mathrm{BN}\}.

For one ``(n, c)`` row every branch term is an affine map of ``x``, so the mixture is one
affine map, computed without ``K`` full-size normalizations:

.. math::
    \text{scale}_{nc} = \gamma_c \sum_k \lambda_{nk} r_k, \qquad
    \text{shift}_{nc} = \beta_c - \gamma_c \sum_k \lambda_{nk} \mu_k r_k, \qquad
    r_k = (v_k + \epsilon)^{-1/2}.

``mixture='statistics'`` is the SN-style alternative (SN's Eqn. with per-sample weights,
the ``(N, K)`` weights of the core op contract ``SN_MATH.md``): two ratio heads,
:math:`a_n` for the means and :math:`b_n` for the variances,
``mean = sum_k a_k mu_k``, ``var = sum_k b_k v_k``, ``scale = gamma (var + eps)^-1/2``,
``shift = beta - mean * scale``. Both are the same one-hot limits (IN, LN, BN).

Statistics (one pass over ``x``), exactly SN's (:mod:`sn_mm.ops.switchable_norm`): the
instance moments ``mean_in``, ``var_in`` per ``(n, c)``; ``u = f var_in`` with Bessel's
factor ``f = L/(L-1)`` in ``'unbiased'`` mode (official SN) and 1 in ``'biased'`` mode or
for ``L == 1``; every branch pools them (IN: the row; LN: the sample's channels; BN: the
batch) as ``mu_k = mean(mean_in)``, ``v_k = mean(u) + mean((mean_in - mu_k)^2)``. BN uses
the running statistics in eval mode, the union batch of all ranks for SyncEN.

Ratio network (the paper: descriptors from each normalizer's statistics, a small
network with few parameters, a softmax over the normalizers; choices the paper's text
leaves open, or that we could not read, are ours, listed in ``docs/en.md``):

1. *descriptors* ``d[n, k, c] = (mean_in - mu_k) * r_k``: the spatial average of the
   ``k``-th normalized map :math:`\hat x_k`, from ``(N, C)`` statistics only (no full-size
   normalization). The IN descriptor is identically 0 (an instance-normalized map has
   mean 0); it is kept so every branch has a row;
2. *reduction*: a grouped 1-D convolution over the channel axis, one filter of length
   ``r = min(reduction, C)`` and stride ``r`` per normalizer (``groups=K``, no bias; the
   channel axis is zero-padded to a multiple of ``r``), initialised to ``1/r`` (average
   pooling of ``r`` neighbouring channels): ``z[n, k, :]`` of length ``ceil(C / r)``;
3. *relation*: the ``K x K`` Gram matrix of the normalizers, ``R = z z^T / len(z)``;
4. *ratio generation*: a linear layer ``K^2 -> H K`` (``H = 1`` head for
   ``'outputs'``, 2 for ``'statistics'``: means then variances), no activation, then a
   softmax over ``K`` per head. Weight and bias start at 0: every sample starts at the
   uniform ``1/K`` mixture, SN's initial mixture.

Parameters: ``weight``, ``bias`` (C,); ``reduce_weight`` (K, 1, r); ``ratio_weight``
(H K, K^2); ``ratio_bias`` (H K). Buffers: ``running_mean``, ``running_var`` (C,) when
``using_bn``; same momentum convention as SN
(``running = (1 - momentum) * running + momentum * batch``).

EN cannot be folded into a fixed layer for deployment: its ratios depend on the input.
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import exemplar_step, norm_eval, options
from .layer_base import BNRunningStats, SyncLayer
from .distributed import all_reduce_sum, sync_world_size

__all__ = ['ExemplarNorm', 'SyncExemplarNorm', 'BranchMoments', 'instance_moments',
           'branch_moments', 'mix_per_sample', 'MIXTURES']

MIXTURES = ('outputs', 'statistics')
Tensor = torch.Tensor


class BranchMoments(NamedTuple):
    """Per-branch moments, each ``(N, K, C)`` in the accumulation dtype, pool order."""

    mu: Tensor
    v: Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (SN's statistics dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def instance_moments(x: Tensor, unbiased: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """``(mean_in, var_in, u)``, each ``(N, C)`` in the accumulation dtype (one pass).

    ``var_in`` is biased; ``u = f var_in`` with ``f = L/(L-1)`` if ``unbiased`` and
    ``L > 1``, else 1. Low-precision inputs are read in float32.
    """
    acc = accumulation_dtype(x.dtype)
    dims = tuple(range(2, x.dim()))
    if x.shape[0] == 0:  # an empty batch (e.g. 0 RoIs): empty moments (in the autograd
        empty = x.to(acc).sum(dims)  # graph: SyncEN's backward collective must run)
        return empty, empty, empty
    xs = x if x.dtype == acc else x.to(acc)
    var_in, mean_in = torch.var_mean(xs, dim=dims, correction=0)
    length = math.prod(x.shape[2:])
    f = length / (length - 1) if (unbiased and length > 1) else 1.0
    return mean_in, var_in, var_in * f if f != 1.0 else var_in


def _pooled(mean_in: Tensor, u: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    mu = mean_in.mean(dim, keepdim=True)
    v = u.mean(dim, keepdim=True) + (mean_in - mu).square().mean(dim, keepdim=True)
    return mu, v


def branch_moments(mean_in: Tensor, u: Tensor, bn: Optional[Tuple[Tensor, Tensor]]
                   ) -> BranchMoments:
    """IN, LN (and BN) moments as ``(N, K, C)``; ``bn`` = the BN ``(mu, v)`` of shape (C,)."""
    mu_ln, v_ln = _pooled(mean_in, u, 1)
    mus, vs = [mean_in, mu_ln.expand_as(mean_in)], [u, v_ln.expand_as(u)]
    if bn is not None:
        mus.append(bn[0].to(mean_in.dtype).expand_as(mean_in))
        vs.append(bn[1].to(u.dtype).expand_as(u))
    return BranchMoments(torch.stack(mus, 1), torch.stack(vs, 1))


# The mixing step as plain differentiable ops: the definition (compile, export, meta, and
# what the eager kernels are tested against). EN does not call SN's op: the op computes the
# instance moments itself, and EN's ratio network needs them before the weights exist; its
# eager path (_FusedExemplarNorm) runs SN's passes with EN's own (N, C) step in between.
def mix_per_sample(x: Tensor, moments: BranchMoments, mean_w: Tensor, var_w: Tensor,
                   weight: Tensor, bias: Tensor, eps: float, mixture: str) -> Tensor:
    r"""``y = scale[n, c] * x + shift[n, c]`` with per-sample weights ``(N, K)``.

    ``'statistics'``: ``mean = sum_k a_k mu_k``, ``var = sum_k b_k v_k``,
    ``scale = weight (var + eps)^-1/2``, ``shift = bias - mean * scale``
    (``a = mean_w``, ``b = var_w``).
    ``'outputs'``: ``scale = weight sum_k l_k r_k``, ``shift = bias - weight sum_k l_k mu_k r_k``
    with ``r_k = (v_k + eps)^-1/2`` and ``l = mean_w`` (``var_w`` must be the same tensor).

    One full-size pass (the affine map); the output has ``x``'s dtype and memory format.
    The layers' eager path (:class:`_FusedExemplarNorm`) runs the same two steps with a
    hand-written full-size backward.
    """
    scale, shift = mix_coefficients(moments, mean_w, var_w, weight, bias, eps, mixture)
    return apply_affine(x, scale, shift)


def mix_coefficients(moments: BranchMoments, mean_w: Tensor, var_w: Tensor, weight: Tensor,
                     bias: Tensor, eps: float, mixture: str) -> Tuple[Tensor, Tensor]:
    """The ``(N, C)`` step of :func:`mix_per_sample`: ``(scale, shift)``."""
    mu, v = moments
    w, b = weight.to(mu.dtype), bias.to(mu.dtype)
    if mixture == 'statistics':
        mean = torch.einsum('nk,nkc->nc', mean_w, mu)
        var = torch.einsum('nk,nkc->nc', var_w, v)
        scale = w * torch.rsqrt(var + eps)
        return scale, b - mean * scale
    if mixture == 'outputs':
        r = torch.rsqrt(v + eps)
        return (w * torch.einsum('nk,nkc->nc', mean_w, r),
                b - w * torch.einsum('nk,nkc->nc', mean_w, mu * r))
    raise ValueError(f'mixture must be one of {MIXTURES}, got {mixture!r}')


def apply_affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``scale[n, c] * x + shift[n, c]`` in one pass, in ``x``'s dtype and memory format."""
    view = scale.shape + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.to(x.dtype).view(view), x, scale.to(x.dtype).view(view))


def use_fused_path(x: Tensor) -> bool:
    """Eager calls take :class:`_FusedExemplarNorm`; ``torch.compile``, export, tracing
    and the meta device take the plain ops (:func:`mix_per_sample`), the same math."""
    return (x.device.type != 'meta'
            and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()
                     or torch.jit.is_tracing()))


def _cpu_passes(x: Tensor):
    """SN's compiled CPU passes (``sn_mm._ext``: ``channel_moments``, ``channel_affine``,
    ``channel_grad_sums``, ``channel_input_grad``) for a non-empty CPU ``x``, else None."""
    if x.device.type != 'cpu' or x.numel() == 0:
        return None
    return exemplar_step.EXTENSION


class _FusedExemplarNorm(torch.autograd.Function):
    """EN's eager path: SN's full-size passes around EN's own ``(N, C)`` step.

    Forward: the instance moments ``mean_in``, ``var_in`` (one pass), the ``(N, C)`` step
    (BN moments, ratio network, mixing coefficients: :mod:`sn_mm.ops.exemplar_step`, whose
    backward is written out), and the affine map ``y = scale x + shift`` (one pass).
    Backward: ``S = sum_l g x``, ``T = sum_l g`` (one pass), the step's backward from
    ``(S, T)``, and ``dx = scale g + k x + c`` (one pass) with ``k = 2 f du / L``,
    ``c = dmean_in / L - mean_in k`` (``f``: Bessel's factor). SyncEN in a distributed
    training run (its BN moments' collectives) and empty batches run the step as a small
    autograd graph over detached leaves instead (:meth:`ExemplarNorm._small_step`).

    On CPU the four passes are SN's compiled kernels (:func:`_cpu_passes`: contiguous or
    channels_last, float32 statistics for bfloat16/float16 inputs read without a copy), so
    EN's full-size work is SN's. Elsewhere (or without the extension) they are torch ops:
    exact two-pass moments (the centred copy becomes the output) for float32/64;
    float32 ``sum x``, ``sum x^2`` for bfloat16/float16. First-order only (double backward
    raises).
    """

    @staticmethod
    def forward(ctx, x, layer, *params):
        dims = tuple(range(2, x.dim()))
        n, c = x.shape[:2]
        length = math.prod(x.shape[2:])
        acc = accumulation_dtype(x.dtype)
        passes = _cpu_passes(x)
        y = None
        if passes is not None:
            mean_in, var_in = passes.channel_moments(x)
        elif x.dtype == acc:  # exact two-pass variance; the centred copy becomes the output
            mean = x.mean(dims, keepdim=True)
            y = x - mean
            var_in = torch.linalg.vector_norm(y, dim=dims).square_().div_(length)
            mean_in = mean.reshape(n, c)
        else:  # bf16/fp16: float32 sums of x and x^2 read straight from x (no copy)
            mean = x.mean(dims, keepdim=True, dtype=acc)
            sq = torch.linalg.vector_norm(x, dim=dims, dtype=acc).square_().div_(length)
            var_in = (sq - mean.reshape(sq.shape).square()).clamp_min_(0.0)
            mean_in = mean.reshape(n, c)
        f = length / (length - 1) if (layer.in_variance == 'unbiased' and length > 1) else 1.0
        step = graph = None
        if n > 0 and not layer._syncs_bn():  # the step with its hand-written backward
            u = var_in * f
            bn = layer._bn_moments(x, mean_in, u)  # tracks the running statistics
            scale, shift, step = exemplar_step.step_forward(
                mean_in, u, bn, layer.using_bn and layer.training, *params, layer.eps,
                layer._span, layer.mixture)
        else:  # SyncEN's union-batch moments (collectives in its autograd) or N = 0
            with torch.enable_grad():
                leaf_mean = mean_in.detach().requires_grad_()
                leaf_u = (var_in * f).detach().requires_grad_()
                leaves = [p.detach().requires_grad_() for p in params]
                scale, shift = layer._small_step(x, leaf_mean, leaf_u, *leaves)
            graph = (leaf_mean, leaf_u, leaves, scale, shift)
        view = (n, c) + (1,) * len(dims)
        sc = scale.detach()
        if passes is not None:
            y = passes.channel_affine(x, sc.contiguous(), shift.detach().contiguous())
        elif y is None:
            y = apply_affine(x, sc, shift.detach())
        else:
            torch.addcmul((shift.detach() + sc * mean_in).to(y.dtype).view(view), y,
                          sc.to(y.dtype).view(view), out=y)  # in place: y = scale d + shift'
        ctx.save_for_backward(x)
        ctx.step, ctx.graph = step, graph
        ctx.param_dtypes = tuple(p.dtype for p in params)
        ctx.coeffs = (mean_in.detach(), scale.detach(), f, length)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, = ctx.saved_tensors
        mean_in, scale, f, length = ctx.coeffs
        dims = tuple(range(2, x.dim()))
        view = scale.shape + (1,) * len(dims)
        passes = _cpu_passes(x)
        buf = None
        if passes is not None:
            dot, t_sum = passes.channel_grad_sums(g, x, mean_in.contiguous())
            s_sum = dot + mean_in * t_sum  # sum g x = sum g (x - mean) + mean sum g
        else:
            buf = torch.mul(g, x)
            s_sum = buf.sum(dims, dtype=scale.dtype)
            t_sum = g.sum(dims, dtype=scale.dtype)
        if ctx.step is not None:
            d_mean, d_u, param_grads = exemplar_step.step_backward(s_sum, t_sum, ctx.step)
        else:
            leaf_mean, leaf_u, leaves, scale_g, shift_g = ctx.graph
            grads = torch.autograd.grad((scale_g, shift_g), [leaf_mean, leaf_u] + leaves,
                                        (s_sum, t_sum), allow_unused=True,
                                        retain_graph=True)  # (N, C)-sized; backward may rerun
            d_mean = grads[0] if grads[0] is not None else torch.zeros_like(leaf_mean)
            d_u = grads[1] if grads[1] is not None else torch.zeros_like(leaf_u)
            param_grads = grads[2:]
        k = d_u * (2.0 * f / length)
        c = d_mean / length - mean_in * k
        if passes is not None:
            dx = passes.channel_input_grad(g, x, scale.contiguous(), k.contiguous(),
                                           c.contiguous())
        else:
            dx = torch.addcmul(c.to(g.dtype).view(view), x, k.to(g.dtype).view(view), out=buf)
            dx.addcmul_(g, scale.to(g.dtype).view(view))
        return (dx, None) + tuple(None if d is None else d.to(dt)
                                  for d, dt in zip(param_grads, ctx.param_dtypes))




class ExemplarNorm(BNRunningStats):
    """Exemplar Normalization over ``(N, C, *spatial)`` inputs (see the module docstring).

    Args:
        num_features: channels ``C``.
        eps: added to the variances.
        momentum: torch meaning (official SN decay ``d`` == ``1 - momentum``).
        using_moving_average: update the running statistics in training.
        using_bn: include the BN branch (pool [IN, LN, BN]; else [IN, LN]).
        last_gamma: initialise ``weight`` to 0.
        in_variance: ``'unbiased'`` (official SN) or ``'biased'`` (one-hot limits equal
            torch's InstanceNorm / LayerNorm / BatchNorm exactly).
        mixture: ``'outputs'`` (EN's Eqn. 3, default) or ``'statistics'`` (SN's mixture of
            means and variances with per-sample weights).
        reduction: channel reduction ``r`` of the ratio network (stride and length of its
            1-D filters), clipped to ``C``.
    """

    _abbr_ = 'en'
    _ARG_NAMES = BNRunningStats._ARG_NAMES + ', mixture, reduction'

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 using_moving_average: bool = True, using_bn: bool = True,
                 last_gamma: bool = False, in_variance: str = 'unbiased',
                 mixture: str = 'outputs', reduction: int = 16, device=None, dtype=None,
                 **unknown):
        super().__init__()
        self._reject_unknown(unknown)
        self._init_options(num_features, eps, momentum, using_moving_average, using_bn,
                           last_gamma, in_variance)
        self.mixture = options.check_choice(self, 'mixture', mixture, MIXTURES)
        self.reduction = options.check_positive_int(self, 'reduction', reduction)
        self.branches = ('IN', 'LN', 'BN') if self.using_bn else ('IN', 'LN')
        k = len(self.branches)
        self._span = min(reduction, num_features)
        heads = 2 if mixture == 'statistics' else 1

        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        self.reduce_weight = nn.Parameter(torch.empty(k, 1, self._span, **factory))
        self.ratio_weight = nn.Parameter(torch.empty(heads * k, k * k, **factory))
        self.ratio_bias = nn.Parameter(torch.empty(heads * k, **factory))
        self._register_running_stats(factory)
        self.reset_parameters()
        norm_eval.bind_owner(self)

    # ------------------------------------------------------------------ setup
    def reset_parameters(self) -> None:
        self._reset_affine()
        with torch.no_grad():
            self.reduce_weight.fill_(1.0 / self._span)
            self.ratio_weight.zero_()
            self.ratio_bias.zero_()

    def logit_parameters(self) -> Tuple[nn.Parameter, ...]:
        """The ratio network's parameters (what ``norm_eval`` freezes, like SN's logits)."""
        return (self.reduce_weight, self.ratio_weight, self.ratio_bias)

    def extra_repr(self) -> str:
        return f'{self._options_repr()}, mixture={self.mixture!r}, reduction={self.reduction}'

    def config(self) -> dict:
        """Constructor arguments (except ``num_features``) that rebuild this layer."""
        return dict(self._options(), mixture=self.mixture, reduction=self.reduction)

    def _adapt_state_dict(self, state_dict, prefix, local_metadata) -> None:
        # An SN checkpoint initialises EN's weight/bias/running statistics: the official SN
        # layout stores them as (1, C, 1, 1) / (1, C, 1); EN (like SN) keeps (C,).
        self._reshape_official_layout(state_dict, prefix)

    # ---------------------------------------------------------------- forward
    def ratios(self, moments: BranchMoments) -> Tuple[Tensor, Tensor]:
        """Per-sample ``(mean, variance)`` weights ``(N, K)`` from the branch moments.

        For ``'outputs'`` both are the same tensor :math:`\\lambda`.
        """
        return self._ratios(moments, self.reduce_weight, self.ratio_weight, self.ratio_bias)

    def _ratios(self, moments, reduce_weight, ratio_weight, ratio_bias):
        mu, v = moments
        n, k, c = mu.shape
        dtype = mu.dtype
        desc = (mu[:, :1] - mu) * torch.rsqrt(v + self.eps)  # mu[:, 0] is mean_in
        pad = (-c) % self._span
        if pad:
            desc = F.pad(desc, (0, pad))
        # grouped 1-D convolution, kernel = stride = span: a per-normalizer weighted sum
        z = torch.einsum('nkjr,kr->nkj', desc.reshape(n, k, desc.shape[-1] // self._span, self._span),
                         reduce_weight.to(dtype).reshape(k, self._span))
        relation = torch.bmm(z, z.transpose(1, 2)) / z.shape[-1]
        logits = F.linear(relation.reshape(n, k * k), ratio_weight.to(dtype),
                          ratio_bias.to(dtype))
        if self.mixture == 'statistics':
            return F.softmax(logits[:, :k], 1), F.softmax(logits[:, k:], 1)
        lam = F.softmax(logits, 1)
        return lam, lam

    def _small_step(self, x, mean_in, u, weight, bias, reduce_weight, ratio_weight, ratio_bias):
        """The ``(N, C)`` part: BN moments (tracked), branch moments, ratios, coefficients."""
        moments = branch_moments(mean_in, u, self._bn_moments(x, mean_in, u))
        mean_w, var_w = self._ratios(moments, reduce_weight, ratio_weight, ratio_bias)
        return mix_coefficients(moments, mean_w, var_w, weight, bias, self.eps, self.mixture)

    def _params(self):
        return (self.weight, self.bias, self.reduce_weight, self.ratio_weight, self.ratio_bias)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self._without_autocast(x, self._forward, x)  # float32 statistics

    def _forward(self, x: Tensor) -> Tensor:
        if use_fused_path(x):
            return _FusedExemplarNorm.apply(x, self, *self._params())
        # compile / export / low precision: plain differentiable ops (same math)
        mean_in, _, u = instance_moments(x, self.in_variance == 'unbiased')
        moments = branch_moments(mean_in, u, self._bn_moments(x, mean_in, u))
        mean_w, var_w = self.ratios(moments)
        return mix_per_sample(x, moments, mean_w, var_w, self.weight, self.bias, self.eps,
                              self.mixture)

    @torch.no_grad()
    def sample_ratios(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The ``(mean, variance)`` weights ``(N, K)`` this layer gives the samples of ``x``.

        What :meth:`forward` mixes with, recomputed from the input without touching the
        running statistics (eval: running statistics; training: this batch's moments);
        float32/64, detached. Used by the analysis hooks (:mod:`sn_mm.analysis.exemplar`).
        """
        self._check_input(x)
        with torch.autocast(x.device.type, enabled=False):
            mean_in, _, u = instance_moments(x, self.in_variance == 'unbiased')
            bn = None
            if self.using_bn:
                bn = ((self.running_mean, self.running_var) if not self.training or not len(x)
                      else tuple(t[0] for t in _pooled(mean_in, u, 0)))
            return self.ratios(branch_moments(mean_in, u, bn))

    def _syncs_bn(self) -> bool:
        """True when the BN moments need collectives (SyncEN training in a distributed run)."""
        return False

    def _bn_moments(self, x: Tensor, mean_in: Tensor, u: Tensor
                    ) -> Optional[Tuple[Tensor, Tensor]]:
        """The BN branch's ``(mu, v)`` (C,), updating the running statistics in training."""
        if not self.using_bn:
            return None
        if not self.training or x.shape[0] == 0:
            return self.running_mean, self.running_var
        self._check_batch_values(x, 'BN')
        mu, v = _pooled(mean_in, u, 0)
        mu, v = mu[0], v[0]
        self._track(mu, v, x.shape[0] * math.prod(x.shape[2:]))
        return mu, v

    def _track(self, mu: Tensor, v: Tensor, num_values) -> None:
        if not self.using_moving_average:
            return
        with torch.no_grad():
            var = self._running_variance(v, num_values)
            self.running_mean.lerp_(mu.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)


class SyncExemplarNorm(SyncLayer, ExemplarNorm):
    """ExemplarNorm whose BN-branch moments are those of the union batch of all ranks.

    In training inside an initialized ``torch.distributed`` run with more than one process
    in ``process_group`` (default WORLD) the BN moments pool every rank's samples, each
    weighted equally (unequal and empty local batches allowed): two all-reduces in forward
    (``C + 1`` values, then ``C``) and one of ``2C`` in backward (:class:`_UnionBatchMoments`).
    Outputs, running statistics and gradients (summed over ranks, as DDP does) then equal
    :class:`ExemplarNorm` on the concatenated batch. The ratios stay per sample and local.
    A rank with an empty batch still joins the collectives; its output must take part in
    its loss (e.g. ``0 * y.sum()``), as for torch's SyncBatchNorm. In eval mode or outside
    a distributed run it is exactly :class:`ExemplarNorm`.

    Arguments: those of :class:`ExemplarNorm`, plus the keyword ``process_group``
    (:class:`~sn_mm.ops.layer_base.SyncLayer`).
    """

    def _syncs_bn(self) -> bool:
        return (self.using_bn and self.training
                and sync_world_size(self.process_group) > 1)

    def _bn_moments(self, x, mean_in, u):
        if not self._syncs_bn():
            return super()._bn_moments(x, mean_in, u)
        length = math.prod(x.shape[2:])
        mu, v, total = _UnionBatchMoments.apply(mean_in, u, self.process_group, length,
                                                type(self).__name__, tuple(x.shape))
        self._track(mu, v, total * length)
        return mu, v


class _UnionBatchMoments(torch.autograd.Function):
    """BN moments ``(mu, v)`` (C,) of the union batch of all ranks, from the IN moments.

    Forward: two summing all-reduces (``[N, sum_n mean_in]``, then
    ``sum_n (u + (mean_in - mu)^2)``); backward: one (the ``2C`` gradients w.r.t. the
    shared moments, summed over ranks: the loss is the sum of every rank's loss), then
    ``dmean_in = G_mu / N + 2 G_v / N (mean_in - mu)``, ``du = G_v / N`` (``N``: union
    batch size; the ``mu`` term of ``v`` has no gradient since the deviations sum to 0).
    Every rank runs the same collectives, also with an empty local batch.
    """

    @staticmethod
    def forward(ctx, mean_in, u, group, length, layer_name, shape):
        count = mean_in.new_full((1,), float(mean_in.shape[0]))
        totals = all_reduce_sum(torch.cat([count, mean_in.sum(0)]), group)
        total = float(totals[0])
        if total * length <= 1:
            raise ValueError(
                f'Expected more than 1 value per channel when training the BN branch of '
                f'{layer_name}, got {int(total)} sample(s) of {length} value(s) over all '
                f'ranks (local input size {shape})')
        mu = totals[1:] / total
        v = all_reduce_sum((u + (mean_in - mu).square()).sum(0), group) / total
        ctx.save_for_backward(mean_in, mu)
        ctx.group, ctx.total = group, total
        return mu, v, total

    @staticmethod
    def backward(ctx, g_mu, g_v, _):
        mean_in, mu = ctx.saved_tensors
        g = all_reduce_sum(torch.cat([g_mu, g_v]), ctx.group) / ctx.total
        g_mu, g_v = g[:mu.numel()], g[mu.numel():]
        d_mean = g_mu + 2 * g_v * (mean_in - mu)
        return d_mean, g_v.expand_as(mean_in), None, None, None, None
