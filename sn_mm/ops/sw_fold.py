r"""Eval-mode Switchable Whitening with batch branches alone as a grouped 1x1 conv (pure torch).

In eval mode the BW/BN branches use ``running_mean`` / ``running_cov``. When every instance
branch (IW, IN, LN) has a weight of exactly 0 (:meth:`SwitchableWhitening.is_fixed_affine`;
always for ``sw_type=1``) the layer is, per group ``g`` of ``c`` channels, the fixed affine map

.. math::
    y_g = \mathrm{diag}(\gamma_g) W_g (x_g - \mu_g) + \beta_g = A_g x_g + b_g,
    \quad A_g = \mathrm{diag}(\gamma_g) W_g, \quad b_g = \beta_g - A_g \mu_g,

with ``W_g`` the Newton whitening matrix of the mixed running covariance (``+ eps I``) and
``mu_g`` the mixed running mean: a 1x1 ``nn.Conv2d(C, C, groups=C // c, bias=True)`` whose
weight row ``g*c + i`` holds ``A_g[i, :]``. The statistics are mixed by the same function as
the forward (:func:`~sn_mm.ops.switchable_whitening.mix_statistics`), in float64.
"""
from typing import Tuple

import torch
from torch import nn

from .sw_functional import mix_statistics, newton_inverse_sqrt
from .switchable_whitening import SwitchableWhitening


def fixed_affine(layer: SwitchableWhitening) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(A (G, c, c), b (C,))`` of the eval-mode map ``y_g = A_g x_g + b_g`` (float64).

    Raises ``ValueError`` if an instance branch has a non-zero weight (the map then depends
    on the sample) and ``TypeError`` for another module.
    """
    if not isinstance(layer, SwitchableWhitening):
        raise TypeError(f'expected a SwitchableWhitening layer, got {type(layer).__name__}')
    if not layer.is_fixed_affine():
        mean_w, var_w = layer.importance()
        raise ValueError(
            f'{type(layer).__name__}(sw_type={layer.sw_type}) depends on the sample in eval '
            f'mode: its instance branches have non-zero weights (branches '
            f'{list(layer.branches)}, mean weights {mean_w.tolist()}, covariance weights '
            f'{var_w.tolist()}); only a layer whose IW/IN/LN weights are exactly 0 (e.g. '
            'sw_type=1) is a fixed affine map')
    dtype = torch.float64
    with torch.no_grad():
        mean_w, var_w = (w.to(dtype) for w in layer.mixture_weights())
        zero = torch.zeros((), dtype=dtype, device=layer.running_mean.device)
        mean, cov = mix_statistics(layer.sw_type, mean_w, var_w, layer.running_mean.to(dtype),
                                   layer.running_cov.to(dtype), zero, zero, zero, zero,
                                   layer.eps, layer.sw5_cov)
        wm = newton_inverse_sqrt(cov, layer.T)  # (G, c, c)
        mean = mean.expand(layer.num_groups, layer.num_pergroup, 1)
        if layer.affine:
            gamma = layer.weight.to(dtype).reshape(layer.num_groups, layer.num_pergroup, 1)
            beta = layer.bias.to(dtype).reshape(-1)
        else:
            gamma = torch.ones_like(mean)
            beta = torch.zeros(layer.num_features, dtype=dtype, device=mean.device)
        a = gamma * wm
        b = beta - torch.matmul(a, mean).reshape(-1)
    return a, b


def to_grouped_conv(layer: SwitchableWhitening) -> nn.Conv2d:
    """The eval-mode layer as ``nn.Conv2d(C, C, 1, groups=C // num_pergroup, bias=True)``.

    For 2D inputs; the conv has the dtype and device of the layer's ``running_cov``.
    """
    a, b = fixed_affine(layer)
    c_all, c = layer.num_features, layer.num_pergroup
    ref = layer.running_cov
    conv = nn.Conv2d(c_all, c_all, 1, groups=layer.num_groups, bias=True,
                     dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        conv.weight.copy_(a.reshape(c_all, c, 1, 1))
        conv.bias.copy_(b)
    return conv


def fold_into_conv(conv: nn.Conv2d, layer: SwitchableWhitening) -> nn.Conv2d:
    """A copy of ``conv`` (``groups=1``) with the eval-mode layer that follows it folded in.

    With ``conv(x) = W * x + b_conv`` and the layer's per-group map ``A_g, b_g``, the folded
    conv has ``W'[g*c + i] = sum_j A_g[i, j] W[g*c + j]`` and
    ``b'[g*c + i] = sum_j A_g[i, j] b_conv[g*c + j] + b_g[i]`` (any kernel size, stride,
    padding, dilation; the result has a bias).
    """
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ValueError(f'expected an nn.Conv2d with groups=1 before the SW layer, got '
                         f'{conv!r}')
    if conv.out_channels != layer.num_features:
        raise ValueError(f'{conv!r} has {conv.out_channels} output channels, the SW layer '
                         f'{layer.num_features}')
    a, b = fixed_affine(layer)
    g, c = layer.num_groups, layer.num_pergroup
    w = conv.weight.detach().to(torch.float64).reshape(g, c, -1)
    new_w = torch.matmul(a, w).reshape(conv.weight.shape)
    b_conv = (conv.bias.detach().to(torch.float64) if conv.bias is not None
              else torch.zeros(conv.out_channels, dtype=torch.float64, device=w.device))
    new_b = torch.matmul(a, b_conv.reshape(g, c, 1)).reshape(-1) + b
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                       conv.padding, conv.dilation, 1, True, conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(new_w)
        folded.bias.copy_(new_b)
    return folded
