r"""The autograd Function behind SwitchableNorm: every derivative written out by hand.

SN computes, for an input viewed as ``(N, C, L)`` (``L`` = product of the spatial
sizes), the instance moments

.. math::
    \mu_{nc} = \frac{1}{L}\sum_l x_{ncl}, \qquad
    v_{nc} = \frac{1}{L}\sum_l (x_{ncl} - \mu_{nc})^2

in one pass, then turns them (together with the parameters) into a per-(n, c)
affine map ``y = scale * x + shift``. Everything between the moments and
``(scale, shift)`` — the IN/LN/BN mixing, softmaxes, the synchronized BN moments
of SyncSN and running statistics — works on ``(N, C)``/``(C,)`` tensors: the
*mixer* handed in by the module, with its own hand-derived backward
(``sn_mm.ops.mixing``). The two ``(N, C, L)``-sized steps have exact derivatives:

- ``y = scale * x + shift`` gives ``dL/dscale = sum_l g x``, ``dL/dshift = sum_l g``
  and the direct term ``scale * g`` of ``dL/dx``;
- the moments give ``dL/dx += g_mu / L + g_v * 2 (x - mu) / L`` where ``g_mu`` and
  ``g_v`` are the gradients the mixer's backward returns for ``mu`` and ``v``.

Backward therefore makes two passes over ``(N, C, L)`` memory (one fused reduction,
one fused input-gradient pass) plus the mixer's ``(N, C)`` arithmetic (for SyncSN
that contains the one backward collective), and saves only ``x``, the two ``(N, C)``
IN moments and ``(C,)``-sized tensors — like BatchNorm (the mixer recomputes its
other intermediate terms in backward). No autograd graph is recorded for the small step, which
keeps SN's fixed per-layer cost low. The derivative is exact (checked by float64
gradcheck), not an approximation. Double backward is not supported.

Statistics are computed in float32 for float16/bfloat16 inputs (and in float64 for
float64 inputs); the output has the input's dtype.
"""
import math
import os
import warnings
from typing import Protocol, Sequence, Tuple

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

_KERNELS = ('instance_moments', 'fused_input_grad')

try:  # the optional compiled CPU kernels, built by setup.py (SN_MM_WITH_OPS=0 skips them)
    from .. import _ext as compiled_kernel
except ImportError:  # pragma: no cover - exercised by installs without the extension
    compiled_kernel = None
if compiled_kernel is not None and not all(hasattr(compiled_kernel, k) for k in _KERNELS):
    compiled_kernel = None  # a stale build that lacks one of them: use the pure-torch path



class Mixer(Protocol):
    """SN's ``(N, C)`` step for one forward call (see ``sn_mm.ops.mixing``).

    ``forward(mean_in, var_in, *params) -> (scale, shift, saved)`` maps the IN moments
    (biased variance) and the parameters to the per-(n, c) affine map and a tuple of
    tensors for backward; ``backward(saved, grad_scale, grad_shift)`` returns ``scale``
    followed by the gradients w.r.t. ``(mean_in, var_in, *params)``.
    """

    def forward(self, mean_in: torch.Tensor, var_in: torch.Tensor, *params: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[torch.Tensor, ...]]: ...

    def backward(self, saved: Sequence[torch.Tensor], grad_scale: torch.Tensor,
                 grad_shift: torch.Tensor) -> Tuple[torch.Tensor, ...]: ...  # scale, grads

#: Use the compiled CPU kernel for the input-gradient pass when it is available.
#: ``SN_MM_DISABLE_EXT=1`` (or setting this to False) selects the pure-torch path.
USE_COMPILED_KERNEL = os.getenv('SN_MM_DISABLE_EXT', '0') != '1'
_warned_missing_kernel = False


def use_compiled_kernel(x3: torch.Tensor) -> bool:
    """Whether the compiled CPU kernels handle this (non-empty) CPU tensor.

    CPU installs built without the kernels (``SN_MM_WITH_OPS=0``, or a stale build that
    lacks one of them) get a one-time warning and the pure-torch path: same results,
    slower.
    """
    global _warned_missing_kernel
    if x3.device.type != 'cpu' or not USE_COMPILED_KERNEL or x3.numel() == 0:
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


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_ncl(x: torch.Tensor) -> torch.Tensor:
    """View ``(N, C, *spatial)`` as ``(N, C, L)`` in the accumulation dtype."""
    x3 = x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))
    return x3.to(accumulation_dtype(x.dtype))


def instance_moments(x3: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and *biased* variance of an ``(N, C, L)`` tensor.

    Returns ``(mean, var)``, both ``(N, C)``. On CPU with the compiled kernel: one
    parallel two-pass sweep per row (the row stays in cache), several times faster
    than ATen (``bench/bench_sn.py`` prints the ratio).
    Otherwise ATen's batch-norm statistics kernel on the ``(1, N*C, L)`` view (two-pass,
    no full-size temporary, several times faster than ``torch.var_mean`` on CPU).
    """
    n, c, length = x3.shape
    if x3.numel() == 0:  # empty batch: (0, C) moments
        return x3.sum(-1), x3.sum(-1)
    if use_compiled_kernel(x3):
        mean, var = compiled_kernel.instance_moments(x3.reshape(n * c, length))
        return mean.view(n, c), var.view(n, c)
    mean, var = torch.batch_norm_update_stats(x3.reshape(1, n * c, length), None, None, 0.0)
    return mean.view(n, c), var.view(n, c)


def sums_for_affine_grad(g3: torch.Tensor, x3: torch.Tensor, mean: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sum_l g * (x - mean), sum_l g)`` per (n, c) in one fused pass over ``g`` and ``x``.

    ATen's eval-mode batch-norm backward on the ``(1, N*C, L)`` view with running
    mean ``mean``, running variance 1 and eps 0 (so inv-std is exactly 1) returns
    exactly these two reductions as its weight and bias gradients.
    """
    n, c, length = x3.shape
    if x3.numel() == 0:
        return (g3 * (x3 - mean.unsqueeze(-1))).sum(-1), g3.sum(-1)
    flat = (1, n * c, length)
    _, centered_dot, total = torch.ops.aten.native_batch_norm_backward(
        g3.reshape(flat), x3.reshape(flat), None, mean.reshape(-1),
        torch.ones(n * c, dtype=x3.dtype, device=x3.device), None, None, False, 0.0,
        [False, True, True])
    return centered_dot.view(n, c), total.view(n, c)


def input_grad(g3: torch.Tensor, x3: torch.Tensor, scale: torch.Tensor, k: torch.Tensor,
               c: torch.Tensor) -> torch.Tensor:
    """``scale * g + k * x + c`` per (n, c) over ``(N, C, L)`` tensors.

    On CPU with the compiled kernel: one fused pass (read g, x; write the result).
    Otherwise two ``addcmul`` passes with the same math (CUDA's path, and CPU
    installs built with ``SN_MM_WITH_OPS=0``, which get a one-time warning).
    """
    if use_compiled_kernel(x3):
        rows = x3.shape[0] * x3.shape[1]
        flat = (rows, x3.shape[2])
        return compiled_kernel.fused_input_grad(
            g3.reshape(flat), x3.reshape(flat), scale.reshape(rows).to(x3.dtype),
            k.reshape(rows), c.reshape(rows)).view(x3.shape)
    grad = torch.addcmul(c.unsqueeze(-1), x3, k.unsqueeze(-1))
    return grad.addcmul_(g3, scale.to(x3.dtype).unsqueeze(-1))


def per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Broadcast an ``(N, C)`` tensor against an ``(N, C, *spatial)`` one of ``ndim`` dims."""
    return t.reshape(t.shape + (1,) * (ndim - 2))


def apply_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``scale[n, c] * x[n, c, ...] + shift[n, c]`` in one pass, in the accumulation dtype.

    Works on the input's own shape, so the result is never a view (in-place ops such
    as a following ``ReLU(inplace=True)`` are allowed on it).
    """
    acc = accumulation_dtype(x.dtype)
    return torch.addcmul(per_channel(shift.to(acc), x.dim()), x.to(acc),
                         per_channel(scale.to(acc), x.dim()))


class SwitchableNormFunction(Function):
    """``y = SN(x)`` given a :class:`Mixer` for the ``(N, C)`` step.

    ``params`` are the tensors the mixer takes after the IN moments (weight, bias,
    mean logits, variance logits); their gradients are returned in the same order.
    Everything saved for backward (``x`` and the mixer's ``(N, C)``/``(C,)`` tensors)
    goes through ``save_for_backward``, so saved-tensor hooks see all of it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, mixer: 'Mixer', *params: torch.Tensor) -> torch.Tensor:
        x3 = as_ncl(x)
        mean_in, var_in = instance_moments(x3)
        scale, shift, saved = mixer.forward(mean_in, var_in, *params)
        y = apply_affine(x, scale, shift)
        ctx.mixer = mixer
        ctx.param_dtypes = [p.dtype for p in params]
        ctx.save_for_backward(x, mean_in, *saved)
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x, mean_in, *saved = ctx.saved_tensors
        x3 = as_ncl(x)
        g3 = grad_y.reshape(x3.shape).to(x3.dtype)
        length = x3.shape[-1]

        # sum_l g*x = sum_l g*(x - mu) + mu * sum_l g
        centered_dot, grad_shift = sums_for_affine_grad(g3, x3, mean_in)
        grad_scale = torch.addcmul(centered_dot, mean_in, grad_shift)
        scale, grad_mean_in, grad_var_in, *param_grads = ctx.mixer.backward(
            saved, grad_scale, grad_shift)

        grad_x = None
        if ctx.needs_input_grad[0]:
            # dL/dx = scale*g + g_mu/L + g_v*2(x - mu)/L  ==  scale*g + k*x + c
            k = grad_var_in.to(x3.dtype) * (2.0 / length)
            c = torch.addcmul(grad_mean_in.to(x3.dtype) / length, mean_in, k, value=-1)
            grad_x = input_grad(g3, x3, scale, k, c).reshape(x.shape).to(x.dtype)

        param_grads = [g.to(dtype) if needed else None for g, dtype, needed
                       in zip(param_grads, ctx.param_dtypes, ctx.needs_input_grad[2:])]
        return (grad_x, None, *param_grads)


def switchable_norm(x: torch.Tensor, mixer: 'Mixer', params: Sequence[torch.Tensor],
                    build_graph: bool) -> torch.Tensor:
    """Apply SN given the module's ``mixer``; ``build_graph=False`` skips autograd."""
    if build_graph:
        return SwitchableNormFunction.apply(x, mixer, *params)
    x3 = as_ncl(x)
    mean_in, var_in = instance_moments(x3)
    scale, shift, _ = mixer.forward(mean_in, var_in, *params)
    return apply_affine(x, scale, shift).to(x.dtype)
