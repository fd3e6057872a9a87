r"""Deployment layers that reproduce an eval-mode SN/SSN layer with *fixed* importances.

An eval-mode SN layer with importance weights ``w`` (mean) and ``w'`` (variance), order
[IN, LN, BN], computes for ``x`` of shape ``(N, C, *spatial)`` with ``L`` positions

.. math::
    y = \gamma \frac{x - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma^2_k + \epsilon}} + \beta,

with :math:`\mu_{in}, v_{in}` the per-(n, c) moments (biased variance),
:math:`\sigma^2_{in} = f\, v_{in}` where :math:`f = L/(L-1)` in ``'unbiased'`` mode
(``L > 1``; ``f = 1`` on 1x1 maps and in ``'biased'`` mode),
:math:`\mu_{ln} = \mathrm{mean}_c\, \mu_{in}`,
:math:`\sigma^2_{ln} = \mathrm{mean}_c\, \sigma^2_{in} + \mathrm{mean}_c (\mu_{in} - \mu_{ln})^2`,
and the BN term from ``running_mean`` / ``running_var``. With one-hot weights:

- BN is an eval-mode ``nn.BatchNorm2d`` (and folds into the preceding convolution);
- IN: :class:`SNInstanceNorm`, a ``nn.GroupNorm(C, C)`` (exactly torch's in ``'biased'``
  mode) whose variance is multiplied by ``f`` in ``'unbiased'`` mode and which gives
  SN's output on 1x1 maps of a single sample (torch's GroupNorm refuses those);
- LN, ``'biased'``: ``nn.GroupNorm(1, C)`` (:math:`\sigma^2_{ln}` is then exactly the
  biased variance over ``(C, *spatial)``);
- LN, ``'unbiased'``: :class:`BesselLayerNorm` — ``f`` multiplies only the within-channel
  part: :math:`\sigma^2_{ln} = f\,\mathrm{mean}_c v_{in} + \mathrm{var}_c\,\mu_{in}`,
  which is *not* a Bessel-corrected variance over ``(C, *spatial)``: no GroupNorm
  setting equals it for every input size.

Any other fixed weights (e.g. the mean chose IN and the variance LN): :class:`FixedMixtureNorm`.
``f`` is taken from the input's shape at every call, so all of them are exact for
every input size. They are inference layers: the BN term always uses the running
statistics, also in ``train()`` mode, and nothing is updated.
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sn_mm.ops import reference
from sn_mm.ops.pool import DEFAULT_POOL, check_groups, resolve_pool
from sn_mm.ops.switchable_norm import IN_VARIANCE_MODES


def _check(x: torch.Tensor, num_features: int, owner: str) -> None:
    if x.dim() < 3 or x.shape[1] != num_features:
        raise ValueError(f'{owner}({num_features}) expects input (N, {num_features}, *spatial) '
                         f'with at least one spatial dimension, got shape {tuple(x.shape)}')


def _affine(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (y.dim() - 2)
    return y * weight.reshape(shape) + bias.reshape(shape)


class SNInstanceNorm(nn.GroupNorm):
    r"""IN as SN defines it, :math:`\gamma (x-\mu)/\sqrt{f v+\epsilon}+\beta`: a GroupNorm(C, C).

    Same parameters (``weight``, ``bias``) and, in ``'biased'`` mode (``f = 1``), the same
    output as ``nn.GroupNorm(C, C)``; in ``'unbiased'`` mode the variance carries Bessel's
    correction ``f = L/(L-1)`` over the spatial size, evaluated as
    ``group_norm(x, weight=weight/sqrt(f), eps=eps/f)`` (an identity). On a 1x1 map (``L = 1``) the
    output is ``bias`` (``x - mu = 0``), also for a single sample, where torch's
    GroupNorm refuses the input.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, in_variance: str = 'unbiased'):
        if in_variance not in IN_VARIANCE_MODES:
            raise ValueError(f'in_variance must be one of {IN_VARIANCE_MODES}, '
                             f'got {in_variance!r}')
        super().__init__(num_channels, num_channels, eps=eps, affine=True)
        self.in_variance = in_variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.num_channels, type(self).__name__)
        if math.prod(x.shape[2:]) == 1:
            return _affine(torch.zeros_like(x), self.weight, self.bias)
        f = reference.bessel_factor(math.prod(x.shape[2:]), self.in_variance == 'unbiased')
        if f == 1.0:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        # (x - mu) / sqrt(f v + eps) = (x - mu) / sqrt(v + eps / f) / sqrt(f): one fused call
        return F.group_norm(x, self.num_groups, self.weight / math.sqrt(f), self.bias,
                            self.eps / f)

    def extra_repr(self) -> str:
        return f'{self.num_channels}, eps={self.eps}, in_variance={self.in_variance!r}'


class FixedMixtureNorm(nn.Module):
    """Eval-mode SN with constant importance weights (buffers, no logits, no softmax).

    Args:
        num_features: channels ``C``.
        mean_weights, var_weights: one number per branch of ``branches``, >= 0, summing
            to 1. Which entries are non-zero is structural: only the branches used are
            computed.
        eps, in_variance: as the SN layer's.
        branches: the pool the weights refer to (names of :mod:`sn_mm.ops.pool`; default
            the first ``len(mean_weights)`` of ``('IN', 'LN', 'BN')``).
        num_groups: groups of a ``'GN'`` branch.

    Parameters ``weight``, ``bias`` (C,); buffers ``mean_weights``, ``var_weights`` and,
    when a BN weight is non-zero, ``running_mean``, ``running_var`` (C,). The math is
    :func:`sn_mm.ops.reference.mix` over the branches used.
    """

    def __init__(self, num_features: int, mean_weights: Sequence[float],
                 var_weights: Sequence[float], eps: float = 1e-5,
                 in_variance: str = 'unbiased', branches: Optional[Sequence[str]] = None,
                 num_groups: int = 1):
        super().__init__()
        mean_weights, var_weights = list(map(float, mean_weights)), list(map(float, var_weights))
        expected = '2 or 3' if branches is None else str(len(branches))
        for name, w in (('mean_weights', mean_weights), ('var_weights', var_weights)):
            if str(len(w)) not in expected.split(' or ') or min(w) < 0 \
                    or abs(sum(w) - 1) > 1e-6:
                order = '[IN, LN(, BN)]' if branches is None else list(branches)
                raise ValueError(f'{name} must be {expected} numbers >= 0 summing to 1 '
                                 f'({order}), got {w}')
        if len(mean_weights) != len(var_weights):
            raise ValueError(f'mean_weights {mean_weights} and var_weights {var_weights} '
                             'must have the same length')
        if branches is None:
            branches = DEFAULT_POOL[:len(mean_weights)]
        pool = resolve_pool(branches, 'BN' in tuple(branches), type(self).__name__)
        if in_variance not in IN_VARIANCE_MODES:
            raise ValueError(f'in_variance must be one of {IN_VARIANCE_MODES}, '
                             f'got {in_variance!r}')
        self.num_features, self.eps, self.in_variance = num_features, float(eps), in_variance
        self.pool = pool
        self.num_groups = check_groups(pool, num_features, num_groups, type(self).__name__)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        # float64 first: exact values of the source weights; .to(dtype) casts with the model
        self.register_buffer('mean_weights', torch.tensor(mean_weights, dtype=torch.float64))
        self.register_buffer('var_weights', torch.tensor(var_weights, dtype=torch.float64))
        self._used = [k for k, (m, v) in enumerate(zip(mean_weights, var_weights)) if m + v > 0]
        self.branches = tuple(pool[k] for k in self._used)
        if 'BN' in self.branches:
            self.register_buffer('running_mean', torch.zeros(num_features))
            self.register_buffer('running_var', torch.ones(num_features))

    def extra_repr(self) -> str:
        fmt = lambda w: '[' + ', '.join(f'{v:.4g}' for v in w.tolist()) + ']'  # noqa: E731
        return (f'{self.num_features}, mean={fmt(self.mean_weights)}, '
                f'var={fmt(self.var_weights)} ({list(self.pool)}), eps={self.eps}, '
                f'in_variance={self.in_variance!r}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.num_features, type(self).__name__)
        mean_in, var_in = reference.instance_moments(x)
        acc = mean_in.dtype
        u = var_in * reference.bessel_factor(math.prod(x.shape[2:]),
                                             self.in_variance == 'unbiased')
        used = self._used
        running = (self.running_mean.to(acc), self.running_var.to(acc)) \
            if 'BN' in self.branches else (None, None)
        scale, shift = reference.mix(mean_in, u, self.weight.to(acc), self.bias.to(acc),
                                     self.mean_weights.to(acc)[used],
                                     self.var_weights.to(acc)[used], self.branches,
                                     self.num_groups, *running, self.eps)
        return torch.addcmul(reference.per_row(shift, x), x, reference.per_row(scale, x))


class BesselLayerNorm(FixedMixtureNorm):
    r"""LN with SN's ``'unbiased'`` variance,
    :math:`\sigma^2 = f\,\mathrm{mean}_c v_{in} + \mathrm{var}_c \mu_{in}` (see the module doc)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, (0.0, 1.0), (0.0, 1.0), eps=eps, in_variance='unbiased')

    def extra_repr(self) -> str:
        return f'{self.num_features}, eps={self.eps}, variance=unbiased IN variances'
