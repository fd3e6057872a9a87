r"""SN's ``(N, C)`` step: where the BN moments come from, the mixing, and its backward.

Notation. From the instance moments ``mean_in`` and ``u`` (the IN variance as SN uses it:
Bessel-corrected in ``'unbiased'`` mode), both ``(N, C)``, the importance weights
``a`` (means) and ``b`` (variances) in the order [IN, LN, BN] (softmaxes of the logits
for SN; any map for its variants), and the BN moments ``(mu_bn, v_bn)`` (``(C,)``):

.. math::
    \mu_{ln} = \mathrm{mean}_c\, \mu_{in}, \quad
    v_{ln} = \mathrm{mean}_c\, u + \mathrm{mean}_c (\mu_{in} - \mu_{ln})^2,

    \mu = a_{IN} \mu_{in} + a_{LN} \mu_{ln} + a_{BN} \mu_{bn}, \quad
    \sigma^2 = b_{IN} u + b_{LN} v_{ln} + b_{BN} v_{bn},

    r = (\sigma^2 + \epsilon)^{-1/2}, \quad
    \text{scale} = \gamma r, \quad \text{shift} = \beta - \mu \, \text{scale}.

Where the BN moments come from (``mode``, the same integers in the C++ kernels):

- ``BN_NONE`` (0): no BN branch (``using_bn=False``: 2 weights [IN, LN]);
- ``BN_GIVEN`` (1): constants handed in: the running statistics (eval), or SyncSN's
  synchronized batch moments (:func:`sync_batch_moments`; their gradient is then summed
  over the ranks and added by :func:`add_bn_grad`);
- ``BN_BATCH`` (2): this batch's moments over its ``M = N`` samples, computed here,
  :math:`\mu_{bn} = \mathrm{mean}_n \mu_{in}`,
  :math:`v_{bn} = \mathrm{mean}_n u + \mathrm{mean}_n(\mu_{in} - \mu_{bn})^2`.

The LN/BN variances are the cancellation-free form of
:math:`\mathrm{mean}(u + \mu_{in}^2) - \bar\mu^2`.

Backward. Given :math:`S = \partial L/\partial\text{scale}` and
:math:`T = \partial L/\partial\text{shift}` (``(N, C)``):

.. math::
    \partial\beta = \textstyle\sum_n T, \quad D = S - \mu T, \quad
    \partial\gamma = \textstyle\sum_n D r, \quad
    \partial\mu = -\text{scale}\, T, \quad
    \partial\sigma^2 = -\tfrac12 D \,\text{scale}\, r^2,

    \partial a_k = \textstyle\sum \partial\mu \cdot \mu_k, \quad
    \partial b_k = \textstyle\sum \partial\sigma^2 \cdot v_k,

    \partial\mu_{in} = a_{IN}\partial\mu + \frac{a_{LN}}{C}\textstyle\sum_c\partial\mu
      + \frac{2 b_{LN}}{C}(\textstyle\sum_c\partial\sigma^2)(\mu_{in} - \mu_{ln})
      + \frac{G_\mu}{M} + \frac{2 G_v}{M}(\mu_{in} - \mu_{bn}),

    \partial u = b_{IN}\partial\sigma^2 + \frac{b_{LN}}{C}\textstyle\sum_c\partial\sigma^2
      + \frac{G_v}{M},

where the last terms exist only for batch moments over ``M`` samples:
:math:`G_\mu = a_{BN}\sum_n\partial\mu`, :math:`G_v = b_{BN}\sum_n\partial\sigma^2`
(for SyncSN summed over every rank — the one backward collective — and ``M`` is the
union batch). The derivative of :math:`\mathrm{mean}(\mu_{in} - \bar\mu)^2` through its
own mean vanishes, which is why no further terms appear. The float64 gradchecks of the
test suite check every term.

The functions here are pure torch; :mod:`sn_mm.ops.kernels` runs the same math as one
compiled call on CPU (``csrc/sn_cpu.cpp``).
"""
from typing import Optional, Tuple

import torch

from .distributed import all_gather_rows, all_reduce_sum, process_group_of

BN_NONE, BN_GIVEN, BN_BATCH = 0, 1, 2

Tensor = torch.Tensor


def _ln_terms(mean_in: Tensor, u: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    channels = mean_in.shape[1]
    mean_ln = mean_in.sum(1, keepdim=True).div_(channels)
    dev_ln = mean_in - mean_ln
    var_ln = (u.sum(1, keepdim=True) + dev_ln.square().sum(1, keepdim=True)).div_(channels)
    return mean_ln, dev_ln, var_ln


def batch_moments(mean_in: Tensor, u: Tensor) -> Tuple[Tensor, Tensor]:
    """The BN moments of one batch, ``(C,)``, from its ``(N, C)`` IN moments (``N >= 1``)."""
    batch = mean_in.shape[0]
    mean_bn = mean_in.sum(0).div_(batch)
    var_bn = (u.sum(0) + (mean_in - mean_bn).square_().sum(0)).div_(batch)
    return mean_bn, var_bn


def _mixed(mean_in, u, a, b, bn_mean, bn_var, mean_ln, var_ln, eps):
    mean = torch.addcmul(a[1] * mean_ln, a[0], mean_in)
    var = torch.addcmul(b[1] * var_ln, b[0], u)
    if bn_mean is not None:
        mean = mean + a[2] * bn_mean
        var = var + b[2] * bn_var
    return mean, var.add_(eps).rsqrt_()


def mix_forward(mean_in: Tensor, u: Tensor, weight: Tensor, bias: Tensor, a: Tensor,
                b: Tensor, bn_mean: Optional[Tensor], bn_var: Optional[Tensor], mode: int,
                eps: float):
    """``(scale, shift, bn_mean, bn_var)``: the per-(n, c) affine map and the BN moments used.

    ``bn_mean``/``bn_var`` are read in mode ``BN_GIVEN`` only; in ``BN_BATCH`` they are
    computed from this batch, in ``BN_NONE`` empty tensors are returned.
    """
    if mode == BN_BATCH:
        bn_mean, bn_var = batch_moments(mean_in, u)
    elif mode == BN_NONE:
        bn_mean = bn_var = None
    mean_ln, _, var_ln = _ln_terms(mean_in, u)
    mean, r = _mixed(mean_in, u, a, b, bn_mean, bn_var, mean_ln, var_ln, eps)
    scale = r * weight
    shift = torch.addcmul(bias, mean, scale, value=-1)
    if bn_mean is None:
        bn_mean, bn_var = mean_in.new_empty(0), mean_in.new_empty(0)
    return scale, shift, bn_mean, bn_var


def mix_backward(grad_scale: Tensor, grad_shift: Tensor, mean_in: Tensor, u: Tensor,
                 weight: Tensor, a: Tensor, b: Tensor, bn_mean: Tensor, bn_var: Tensor,
                 mode: int, eps: float):
    """Backward of :func:`mix_forward` (``bn_*`` as it returned them).

    Returns ``(scale, grad_mean_in, grad_u, grad_weight, grad_bias, grad_a, grad_b,
    g_mean_bn, g_var_bn)`` where ``g_*_bn`` are :math:`G_\\mu, G_v` of this process
    (``(C,)``; empty without BN). In ``BN_BATCH`` their terms are already added to
    ``grad_mean_in``/``grad_u``; for SyncSN the caller sums them over the ranks and
    calls :func:`add_bn_grad`. The other intermediate terms are recomputed here
    rather than saved by the forward (on RoI-sized inputs six saved ``(N, C)``
    tensors would add 12% to what BatchNorm saves).
    """
    has_bn = mode != BN_NONE
    channels = mean_in.shape[1]
    mean_ln, dev_ln, var_ln = _ln_terms(mean_in, u)
    mean, r = _mixed(mean_in, u, a, b, bn_mean if has_bn else None, bn_var, mean_ln,
                     var_ln, eps)
    scale = r * weight
    grad_bias = grad_shift.sum(0)
    d = torch.addcmul(grad_scale, mean, grad_shift, value=-1)  # dL/dscale through both
    grad_weight = (d * r).sum(0)
    g_mean = -scale * grad_shift
    g_var = d.mul_(scale).mul_(r).mul_(r).mul_(-0.5)
    g_mean_ln = g_mean.sum(1, keepdim=True)
    g_var_ln = g_var.sum(1, keepdim=True)

    grad_a = [(g_mean * mean_in).sum(), (g_mean_ln * mean_ln).sum()]
    grad_b = [(g_var * u).sum(), (g_var_ln * var_ln).sum()]
    grad_mean_in = torch.addcmul(g_mean_ln * (a[1] / channels), a[0], g_mean)
    grad_mean_in.addcmul_(g_var_ln * (2 * b[1] / channels), dev_ln)
    grad_u = torch.addcmul(g_var_ln * (b[1] / channels), b[0], g_var)
    g_mean_bn, g_var_bn = mean_in.new_empty(0), mean_in.new_empty(0)
    if has_bn:
        sum_mean, sum_var = g_mean.sum(0), g_var.sum(0)
        grad_a.append((sum_mean * bn_mean).sum())
        grad_b.append((sum_var * bn_var).sum())
        g_mean_bn, g_var_bn = sum_mean * a[2], sum_var * b[2]
        if mode == BN_BATCH:
            add_bn_grad(grad_mean_in, grad_u, mean_in, bn_mean, g_mean_bn, g_var_bn,
                        mean_in.shape[0])
    return (scale, grad_mean_in, grad_u, grad_weight, grad_bias, torch.stack(grad_a),
            torch.stack(grad_b), g_mean_bn, g_var_bn)


def add_bn_grad(grad_mean_in: Tensor, grad_u: Tensor, mean_in: Tensor, bn_mean: Tensor,
                g_mean_bn: Tensor, g_var_bn, count) -> None:
    """Add the batch-moment terms ``G_mu / M + 2 G_v / M (mu_in - mu_bn)`` and ``G_v / M`` in place."""
    total_var = g_var_bn * (2.0 / count)
    grad_mean_in.add_(g_mean_bn / count).addcmul_(mean_in - bn_mean, total_var)
    grad_u.add_(total_var * 0.5)


# ----------------------------------------------------------------------- SyncSN
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


def sync_bn_grad(g_mean_bn: Tensor, g_var_bn: Tensor, group: int) -> Tuple[Tensor, Tensor]:
    """``(G_mu, G_v)`` summed over every rank of ``group`` (the one backward collective)."""
    summed = all_reduce_sum(torch.cat([g_mean_bn, g_var_bn]), process_group_of(group))
    channels = g_mean_bn.numel()
    return summed[:channels], summed[channels:]
