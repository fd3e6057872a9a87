r"""SN's mixing step on ``(N, C)`` moments, with its hand-derived backward (pure torch).

Forward. From the instance moments ``mean_in`` and ``u`` (the IN variance as SN uses
it, i.e. already Bessel-corrected in ``'unbiased'`` mode), both ``(N, C)``, and the BN
moments ``(mean_bn, var_bn)`` (``(C,)``, batch or running, or absent without the BN
branch):

.. math::
    a = \mathrm{softmax}(\text{mean\_logits}), \quad b = \mathrm{softmax}(\text{var\_logits}),

    \mu_{ln} = \mathrm{mean}_c\, \mu_{in}, \quad
    v_{ln} = \mathrm{mean}_c\, u + \mathrm{mean}_c (\mu_{in} - \mu_{ln})^2,

    \mu = a_{IN} \mu_{in} + a_{LN} \mu_{ln} + a_{BN} \mu_{bn}, \quad
    \sigma^2 = b_{IN} u + b_{LN} v_{ln} + b_{BN} v_{bn},

    r = (\sigma^2 + \epsilon)^{-1/2}, \quad
    \text{scale} = \gamma r, \quad \text{shift} = \beta - \mu \, \text{scale}.

Backward. Given :math:`S = \partial L/\partial\text{scale}` and
:math:`T = \partial L/\partial\text{shift}` (``(N, C)``):

.. math::
    \partial\beta = \textstyle\sum_n T, \quad D = S - \mu T, \quad
    \partial\gamma = \textstyle\sum_n D r, \quad
    \partial\mu = -\text{scale}\, T, \quad
    \partial\sigma^2 = -\tfrac12 D \,\text{scale}\, r^2,

    \partial a_k = \textstyle\sum \partial\mu \cdot \mu_k, \quad
    \partial b_k = \textstyle\sum \partial\sigma^2 \cdot v_k, \quad
    \partial\text{logits} = p \odot (\partial p - \langle p, \partial p\rangle)
    \ \text{(softmax, for } p = a, b),

    \partial\mu_{in} = a_{IN}\partial\mu + \frac{a_{LN}}{C}\textstyle\sum_c\partial\mu
      + \frac{2 b_{LN}}{C}(\textstyle\sum_c\partial\sigma^2)(\mu_{in} - \mu_{ln})
      + \frac{G_\mu}{M} + \frac{2 G_v}{M}(\mu_{in} - \mu_{bn}),

    \partial u = b_{IN}\partial\sigma^2 + \frac{b_{LN}}{C}\textstyle\sum_c\partial\sigma^2
      + \frac{G_v}{M},

where the last terms exist only when the BN moments are batch statistics over ``M``
samples: :math:`G_\mu = a_{BN}\sum_n\partial\mu`, :math:`G_v = b_{BN}\sum_n\partial\sigma^2`
(for SyncSN summed over every rank — the one backward collective — and ``M`` is the
union batch). The derivative of :math:`\mathrm{mean}(\mu_{in} - \mu)^2` through its
own mean vanishes, which is why no further terms appear. Exactness is checked by the
float64 gradchecks of the test suite.
"""
from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

#: ``reduce(g_mean_bn, g_var_bn) -> (G_mu, G_v, M)``: turns this process's ``(C,)``
#: gradients w.r.t. the batch BN moments into the totals over every process that
#: shares them, and the number of samples ``M`` those moments average over.
BNGradReduce = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, float]]


class BNMoments(NamedTuple):
    """The BN branch's ``(C,)`` moments; ``reduce`` is ``None`` for constants (running stats)."""
    mean: torch.Tensor
    var: torch.Tensor
    reduce: Optional[BNGradReduce]


class MixTerms(NamedTuple):
    """The intermediate ``(N, 1)``/``(N, C)`` terms of the forward."""
    mean_ln: torch.Tensor
    dev_ln: torch.Tensor
    var_ln: torch.Tensor
    mean: torch.Tensor
    r: torch.Tensor
    scale: torch.Tensor


def mix_terms(mean_in: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, a: torch.Tensor,
              b: torch.Tensor, eps: float, bn: Optional[BNMoments]) -> MixTerms:
    """LN moments, mixed mean and variance, ``r`` and ``scale`` (forward, and again in backward)."""
    channels = mean_in.shape[1]
    mean_ln = mean_in.sum(1, keepdim=True).div_(channels)
    dev_ln = mean_in - mean_ln
    var_ln = (u.sum(1, keepdim=True) + dev_ln.square().sum(1, keepdim=True)).div_(channels)
    mean = torch.addcmul(a[1] * mean_ln, a[0], mean_in)
    var = torch.addcmul(b[1] * var_ln, b[0], u)
    if bn is not None:
        mean.add_(a[2] * bn.mean)
        var.add_(b[2] * bn.var)
    r = var.add_(eps).rsqrt_()
    return MixTerms(mean_ln, dev_ln, var_ln, mean, r, r * weight)


def mix_forward(mean_in: torch.Tensor, u: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                eps: float, bn: Optional[BNMoments]):
    """Per-(n, c) ``(scale, shift)`` and the softmax weights ``(a, b)`` for backward.

    Backward recomputes the other intermediate terms from ``mean_in``, ``u`` and the
    BN moments (a dozen ``(N, C)`` operations) instead of saving them: on RoI-sized
    inputs (7x7 maps) six saved ``(N, C)`` tensors would add 12% to what BN saves.
    """
    terms = mix_terms(mean_in, u, weight, a, b, eps, bn)
    shift = torch.addcmul(bias, terms.mean, terms.scale, value=-1)
    return terms.scale, shift, (a, b)


def mix_backward(saved, mean_in: torch.Tensor, u: torch.Tensor, weight: torch.Tensor,
                 eps: float, bn: Optional[BNMoments], grad_scale: torch.Tensor,
                 grad_shift: torch.Tensor):
    """``scale`` and the gradients w.r.t. ``(mean_in, u, weight, bias, mean_logits, var_logits)``.

    ``saved`` is what :func:`mix_forward` returned; the other arguments are its inputs.
    """
    a, b = saved
    mean_ln, dev_ln, var_ln, mean, r, scale = mix_terms(mean_in, u, weight, a, b, eps, bn)
    channels = mean_in.shape[1]
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
    if bn is not None:
        g_mean_bn = g_mean.sum(0)
        g_var_bn = g_var.sum(0)
        grad_a.append(g_mean_bn.dot(bn.mean))
        grad_b.append(g_var_bn.dot(bn.var))
        if bn.reduce is not None:  # batch statistics: gradients flow into every sample
            total_mean, total_var, count = bn.reduce(g_mean_bn * a[2], g_var_bn * b[2])
            total_var = total_var * (2.0 / count)
            grad_mean_in.add_(total_mean / count).addcmul_(mean_in - bn.mean, total_var)
            grad_u.add_(total_var * 0.5)
    return (scale, grad_mean_in, grad_u, grad_weight, grad_bias, torch.stack(grad_a),
            torch.stack(grad_b))


def softmax_backward(p: torch.Tensor, grad_p: torch.Tensor) -> torch.Tensor:
    """``d logits`` for ``p = softmax(logits)``: ``p * (grad_p - <p, grad_p>)``."""
    return p * (grad_p - p.dot(grad_p))
