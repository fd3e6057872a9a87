r"""The device-level steps of SN: compiled CPU kernels, or ATen with the same math.

SN touches ``(N, C, L)`` memory (``L`` = product of the spatial sizes) in four passes,
two in forward and two in backward; everything else is the ``(N, C)`` mixing step
(:mod:`sn_mm.ops.mixing`). Each function here picks, per call, the compiled CPU kernel
(``sn_mm._ext``, built by ``setup.py`` from ``csrc/sn_cpu.cpp``) or the pure-torch
formulation, which runs on any device (CUDA included) and without the extension:

==================  ====================================================  ====================
step                math (per row ``r = (n, c)``)                        pure-torch path
==================  ====================================================  ====================
instance_moments    ``mean_r``, biased ``var_r`` over the ``L`` values    ATen batch-norm stats
affine              ``y = scale_r x + shift_r``                           ``addcmul``
grad_sums           ``(sum g (x - mean_r), sum g)``                       batch-norm backward
input_grad          ``dx = a_r g + k_r x + c_r``                          two ``addcmul``
mix_forward/-back   the ``(N, C)`` step                                   :mod:`~.mixing`
==================  ====================================================  ====================

Dtypes. ``x`` and ``g`` keep their dtype (float64, float32, bfloat16, float16); every
statistic and coefficient is in the *accumulation dtype*: float64 for float64 inputs,
float32 otherwise. The compiled kernels and the CUDA path read reduced-precision inputs
as they are (no full-size float32 copy); the pure-torch CPU path for reduced precision
(only without the extension, or with ``SN_MM_DISABLE_EXT=1``) converts the input to
float32 for the statistics.

``SN_MM_DISABLE_EXT=1`` (or :data:`USE_COMPILED_KERNEL` = False) selects the pure-torch
path everywhere; CPU installs built without the kernels get a one-time warning.
"""
import os
import warnings
from typing import Tuple

import torch

from . import mixing

_KERNELS = ('instance_moments', 'affine', 'grad_sums', 'input_grad', 'mix_forward',
            'mix_backward')

try:  # the optional compiled CPU kernels, built by setup.py (SN_MM_WITH_OPS=0 skips them)
    from .. import _ext as compiled_kernel
except ImportError:  # pragma: no cover - exercised by installs without the extension
    compiled_kernel = None
if compiled_kernel is not None and not all(hasattr(compiled_kernel, k) for k in _KERNELS):
    compiled_kernel = None  # a stale build that lacks one of them: use the pure-torch path

#: Use the compiled CPU kernels when they are available.
USE_COMPILED_KERNEL = os.getenv('SN_MM_DISABLE_EXT', '0') != '1'
_warned_missing_kernel = False

Tensor = torch.Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def use_compiled_kernel(t: Tensor) -> bool:
    """Whether the compiled CPU kernels handle this CPU tensor."""
    global _warned_missing_kernel
    if t.device.type != 'cpu' or not USE_COMPILED_KERNEL:
        return False
    if compiled_kernel is not None:
        return True
    if not _warned_missing_kernel:
        _warned_missing_kernel = True
        warnings.warn('sn_mm was installed without its compiled CPU kernels (sn_mm._ext '
                      f'with {", ".join(_KERNELS)}); using the pure-torch path: same '
                      'results, slower. Reinstall (pip install -e . with SN_MM_WITH_OPS=1, '
                      'the default) to build them.')
    return False


def _rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0] * t.shape[1], t.shape[2])


def instance_moments(x3: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-(n, c) mean and *biased* variance of ``(N, C, L)`` ``x3``, in the accumulation dtype."""
    n, c, length = x3.shape
    acc = accumulation_dtype(x3.dtype)
    if x3.numel() == 0:  # empty batch: (0, C) moments
        empty = x3.new_zeros((n, c), dtype=acc)
        return empty, empty.clone()
    if use_compiled_kernel(x3):
        mean, var = compiled_kernel.instance_moments(_rows(x3))
        return mean.view(n, c), var.view(n, c)
    flat = x3.reshape(1, n * c, length)
    if x3.dtype != acc and x3.is_cuda:
        # float32 Welford statistics of a half/bfloat16 input, read in place; eps = 0 so
        # that var = invstd^-2 exactly (a zero variance gives invstd = inf, var = 0).
        mean, invstd = torch.batch_norm_stats(flat, 0.0)
        return mean.view(n, c), invstd.pow(-2).view(n, c)
    if x3.dtype != acc:
        flat = flat.to(acc)
    mean, var = torch.batch_norm_update_stats(flat, None, None, 0.0)
    return mean.view(n, c), var.view(n, c)


def _per_row(t: Tensor, like: Tensor, dtype: torch.dtype) -> Tensor:
    """``(N, C)`` coefficients broadcastable against ``(N, C, *spatial)`` ``like``."""
    return t.to(dtype).reshape(t.shape + (1,) * (like.dim() - 2))


def affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``scale[n, c] * x + shift[n, c]`` for ``(N, C, *spatial)`` ``x``, in its dtype and shape.

    The result is a new tensor, never a view (in-place ops such as a following
    ``ReLU(inplace=True)`` are allowed on it).
    """
    if x.numel() and use_compiled_kernel(x):
        return compiled_kernel.affine(x, scale.reshape(-1), shift.reshape(-1))
    # Reduced precision: the coefficients are rounded to x's dtype (ATen computes the
    # product in float32 internally), so no float32 copy of x is made.
    return torch.addcmul(_per_row(shift, x, x.dtype), x, _per_row(scale, x, x.dtype))


def grad_sums(g3: Tensor, x3: Tensor, mean: Tensor) -> Tuple[Tensor, Tensor]:
    """``(sum_l g (x - mean), sum_l g)`` per (n, c) in one pass over ``g`` and ``x``."""
    n, c, length = x3.shape
    acc = mean.dtype
    if x3.numel() == 0:
        return mean.new_zeros((n, c)), mean.new_zeros((n, c))
    if use_compiled_kernel(x3):
        dot, total = compiled_kernel.grad_sums(_rows(g3), _rows(x3), mean.reshape(-1))
        return dot.view(n, c), total.view(n, c)
    flat = (1, n * c, length)
    ones = torch.ones(n * c, dtype=acc, device=x3.device)
    if x3.dtype != acc and x3.is_cuda:
        total, dot, _, _ = torch.batch_norm_backward_reduce(
            g3.reshape(flat), x3.reshape(flat), mean.reshape(-1), ones, None, False, False, False)
        return dot.view(n, c), total.view(n, c)
    if x3.dtype != acc:
        g3, x3 = g3.to(acc), x3.to(acc)
    # ATen's eval-mode batch-norm backward on the (1, N*C, L) view with running mean
    # ``mean``, running variance 1 and eps 0 (inv-std exactly 1) returns exactly these
    # two reductions as its weight and bias gradients.
    _, dot, total = torch.ops.aten.native_batch_norm_backward(
        g3.reshape(flat), x3.reshape(flat), None, mean.reshape(-1), ones, None, None, False,
        0.0, [False, True, True])
    return dot.view(n, c), total.view(n, c)


def input_grad(g: Tensor, x: Tensor, a: Tensor, k: Tensor, c: Tensor) -> Tensor:
    """``a * g + k * x + c`` per (n, c) for ``(N, C, *spatial)`` ``g``, ``x``, in ``x``'s dtype and shape."""
    if x.numel() and use_compiled_kernel(x):
        return compiled_kernel.input_grad(g, x, a.reshape(-1), k.reshape(-1), c.reshape(-1))
    dtype = x.dtype
    grad = torch.addcmul(_per_row(c, x, dtype), x, _per_row(k, x, dtype))
    return grad.addcmul_(g.to(dtype), _per_row(a, x, dtype))


def mix_forward(mean_in, u, weight, bias, a, b, bn_mean, bn_var, mode: int, eps: float):
    """:func:`sn_mm.ops.mixing.mix_forward`, in one compiled call on CPU."""
    if use_compiled_kernel(mean_in):
        empty = mean_in.new_empty(0)
        return compiled_kernel.mix_forward(
            mean_in, u, weight, bias, a, b, empty if bn_mean is None else bn_mean,
            empty if bn_var is None else bn_var, mode, eps)
    return mixing.mix_forward(mean_in, u, weight, bias, a, b, bn_mean, bn_var, mode, eps)


def mix_backward(grad_scale, grad_shift, mean_in, u, weight, a, b, bn_mean, bn_var,
                 mode: int, eps: float):
    """:func:`sn_mm.ops.mixing.mix_backward`, in one compiled call on CPU."""
    if use_compiled_kernel(mean_in):
        return compiled_kernel.mix_backward(grad_scale.contiguous(), grad_shift.contiguous(),
                                            mean_in, u, weight, a, b, bn_mean, bn_var, mode,
                                            eps)
    return mixing.mix_backward(grad_scale, grad_shift, mean_in, u, weight, a, b, bn_mean,
                               bn_var, mode, eps)
