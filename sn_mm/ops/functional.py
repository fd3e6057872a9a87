r"""SN as one ``torch.library`` custom op, with its backward written out by hand.

For an input viewed as ``(N, C, L)`` (``L`` = product of the spatial sizes) the op

1. computes the instance moments in one pass,

   .. math::
       \mu_{nc} = \frac{1}{L}\sum_l x_{ncl}, \qquad
       v_{nc} = \frac{1}{L}\sum_l (x_{ncl} - \mu_{nc})^2 ,

   and the IN variance as SN uses it, :math:`u = f v` with Bessel's factor
   :math:`f = L / (L - 1)` in ``'unbiased'`` mode (1 in ``'biased'`` mode or when ``L = 1``);
2. runs the ``(N, C)`` mixing step (:mod:`sn_mm.ops.mixing`: BN moments, mixture,
   ``scale`` and ``shift``);
3. writes ``y = scale * x + shift`` in one pass.

Backward makes two passes over ``(N, C, L)`` memory: one fused reduction giving
``dL/dscale = sum_l g x`` and ``dL/dshift = sum_l g``, then — after the backward of the
mixing step, which returns ``g_mu`` and ``g_v`` for the IN moments — one fused pass

.. math::
    \partial x = \text{scale}\, g + \frac{g_\mu}{L} + \frac{2 f g_u}{L}(x - \mu)
    \;=\; \text{scale}\, g + k x + c .

It saves ``x``, the two ``(N, C)`` IN moments and ``(C,)`` tensors, like BatchNorm.

The ops (``torch.ops.sn_mm.*``), all functional (they mutate nothing; the module
updates its running statistics from the returned batch moments), with fake kernels
(shape/dtype propagation: ``meta`` tensors, ``torch.compile``) and registered autograd;
``torch.compile`` sees each call as one node:

- ``switchable_norm`` / ``switchable_norm_backward``: schema, CPU kernel and autograd in
  C++ (``csrc/sn_cpu.cpp``, like torchvision's ops), so an eager call costs one
  dispatcher round trip: BatchNorm's fixed cost, not thirty Python-issued small ops;
- ``switchable_norm_generic`` / ``switchable_norm_generic_backward``: the same schema
  and math in Python over :mod:`sn_mm.ops.kernels` (ATen on any device: CUDA, builds
  without the extension, ``SN_MM_DISABLE_EXT=1``), and the one that runs SyncSN's
  collectives (``bn_mode=BN_SYNC``).

Double backward is not supported and raises.

Dtypes: ``x`` may be float64/32, bfloat16 or float16 and keeps its dtype; statistics
are float64 for float64 inputs and float32 otherwise. Parameters may have another
dtype than ``x`` (autocast) and get gradients in their own dtype.

Export (``torch.export``, ONNX, ``torch.jit.trace``) traces :func:`composite_switchable_norm`
instead: the same math in plain differentiable ATen ops, which every exporter knows.
"""
import math
from typing import List, Optional, Tuple

import torch

from . import kernels
from .kernels import accumulation_dtype
from .mixing import BN_BATCH, BN_GIVEN, BN_NONE, add_bn_grad, sync_batch_moments, sync_bn_grad

Tensor = torch.Tensor

#: ``bn_mode`` of the op: how the BN branch gets its moments (``BN_SYNC``: SyncSN's
#: batch moments of the union batch; the others as in :mod:`sn_mm.ops.mixing`, where
#: ``BN_GIVEN`` = the running statistics passed to the op).
BN_RUNNING = BN_GIVEN
BN_SYNC = 3
BN_MODES = (BN_NONE, BN_RUNNING, BN_BATCH, BN_SYNC)


def bessel_factor(length: int, unbiased: bool) -> float:
    """``L / (L - 1)`` in ``'unbiased'`` mode, else 1 (also for ``L = 1``, where it is undefined)."""
    return length / (length - 1) if unbiased and length > 1 else 1.0


def _check_mode(bn_mode: int) -> None:
    if bn_mode not in BN_MODES:
        raise ValueError(f'bn_mode must be one of {BN_MODES} (none, running, batch, sync), '
                         f'got {bn_mode!r}')


@torch.library.custom_op('sn_mm::switchable_norm_generic', mutates_args=())
def _generic_op(x: Tensor, weight: Tensor, bias: Tensor, mean_weights: Tensor,
                        var_weights: Tensor, running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], bn_mode: int, eps: float,
                        unbiased: bool, group: int, softmax: bool
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(y, mean_in, var_in, bn_mean, bn_var, bn_count)``.

    ``mean_in``/``var_in``: ``(N, C)`` IN moments (biased variance); ``bn_mean``/``bn_var``:
    the ``(C,)`` BN moments used (empty without BN); ``bn_count``: ``[samples, values]``
    they average over (zeros unless batch moments).
    """
    _check_mode(bn_mode)
    n, c = x.shape[0], x.shape[1]
    length = math.prod(x.shape[2:])
    acc = accumulation_dtype(x.dtype)
    x3 = x.reshape(n, c, length)
    mean_in, var_in = kernels.instance_moments(x3)
    u = var_in * bessel_factor(length, unbiased)
    params = [t.to(acc).contiguous() for t in (weight, bias, mean_weights, var_weights)]
    if softmax:
        params[2:] = [torch.softmax(p, 0) for p in params[2:]]
    count = mean_in.new_zeros(2)
    bn_mean = bn_var = None
    mode = bn_mode
    if bn_mode == BN_SYNC:
        bn_mean, bn_var, count = sync_batch_moments(mean_in, u, length, group)
        mode = BN_GIVEN
    elif bn_mode == BN_RUNNING:
        bn_mean = running_mean.to(acc, copy=True)
        bn_var = running_var.to(acc, copy=True)
    elif bn_mode == BN_BATCH:
        count = mean_in.new_tensor([float(n), float(n * length)])
    scale, shift, bn_mean, bn_var = kernels.mix_forward(mean_in, u, *params, bn_mean, bn_var,
                                                        mode, eps)
    y = kernels.affine(x, scale, shift)
    return y, mean_in, var_in, bn_mean, bn_var, count


def _fake_forward(x, weight, bias, mean_weights, var_weights, running_mean, running_var,
                  bn_mode, eps, unbiased, group, softmax):
    n, c = x.shape[0], x.shape[1]
    acc = accumulation_dtype(x.dtype)
    bn = c if bn_mode != BN_NONE else 0
    return (x.new_empty(x.shape), x.new_empty((n, c), dtype=acc),
            x.new_empty((n, c), dtype=acc), x.new_empty((bn,), dtype=acc),
            x.new_empty((bn,), dtype=acc), x.new_empty((2,), dtype=acc))


@torch.library.custom_op('sn_mm::switchable_norm_generic_backward', mutates_args=())
def _generic_backward_op(
        grad_y: Tensor, x: Tensor, mean_in: Tensor, var_in: Tensor, weight: Tensor,
        mean_weights: Tensor, var_weights: Tensor, bn_mean: Tensor, bn_var: Tensor,
        bn_count: Tensor, bn_mode: int, eps: float, unbiased: bool, group: int,
        input_grad: bool, softmax: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``(x, weight, bias, mean_weights, var_weights)``.

    ``grad_x`` is an empty tensor when ``input_grad`` is False. In ``BN_SYNC`` mode this
    contains the one backward collective (every rank must call it).
    """
    _check_mode(bn_mode)
    n, c = x.shape[0], x.shape[1]
    length = math.prod(x.shape[2:])
    acc = mean_in.dtype
    factor = bessel_factor(length, unbiased)
    x3 = x.reshape(n, c, length)
    g3 = grad_y.reshape(n, c, length)
    if g3.dtype != x3.dtype:
        g3 = g3.to(x3.dtype)
    u = var_in * factor
    weight_acc = weight.to(acc).contiguous()
    a = mean_weights.to(acc).contiguous()
    b = var_weights.to(acc).contiguous()
    if softmax:
        a, b = torch.softmax(a, 0), torch.softmax(b, 0)

    dot, grad_shift = kernels.grad_sums(g3, x3, mean_in)
    grad_scale = torch.addcmul(dot, mean_in, grad_shift)  # sum g x = sum g (x - mu) + mu sum g
    mode = BN_GIVEN if bn_mode == BN_SYNC else bn_mode
    (scale, grad_mean_in, grad_u, grad_weight, grad_bias, grad_a, grad_b, g_mean_bn,
     g_var_bn) = kernels.mix_backward(grad_scale, grad_shift, mean_in, u, weight_acc, a, b,
                                      bn_mean, bn_var, mode, eps)
    if bn_mode == BN_SYNC:
        total_mean, total_var = sync_bn_grad(g_mean_bn, g_var_bn, group)
        add_bn_grad(grad_mean_in, grad_u, mean_in, bn_mean, total_mean, total_var, bn_count[0])

    grad_x = x.new_empty(0)
    if input_grad:
        k = grad_u * (factor * 2.0 / length)
        const = torch.addcmul(grad_mean_in / length, mean_in, k, value=-1)
        grad_x = kernels.input_grad(grad_y.to(x.dtype), x, scale, k, const)
    if softmax:  # d logits = p * (d p - <p, d p>)
        grad_a = a * (grad_a - (a * grad_a).sum())
        grad_b = b * (grad_b - (b * grad_b).sum())
    return (grad_x, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype),
            grad_a.to(mean_weights.dtype), grad_b.to(var_weights.dtype))


def _fake_backward(grad_y, x, mean_in, var_in, weight, mean_weights, var_weights, bn_mean,
                   bn_var, bn_count, bn_mode, eps, unbiased, group, input_grad, softmax):
    grad_x = x.new_empty(x.shape) if input_grad else x.new_empty(0)
    return (grad_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape),
            mean_weights.new_empty(mean_weights.shape), var_weights.new_empty(var_weights.shape))


def _setup_context(ctx, inputs, output):
    x, weight, _, mean_weights, var_weights, _, _, bn_mode, eps, unbiased, group, softmax = inputs
    _, mean_in, var_in, bn_mean, bn_var, bn_count = output
    ctx.save_for_backward(x, mean_in, var_in, weight, mean_weights, var_weights, bn_mean,
                          bn_var, bn_count)
    ctx.config = (bn_mode, eps, unbiased, group, softmax)
    ctx.mark_non_differentiable(mean_in, var_in, bn_mean, bn_var, bn_count)


def _backward(ctx, grad_y, *unused_grads):
    x, mean_in, var_in, weight, mean_weights, var_weights, bn_mean, bn_var, bn_count = \
        ctx.saved_tensors
    bn_mode, eps, unbiased, group, softmax = ctx.config
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    grad_x, grad_weight, grad_bias, grad_a, grad_b = _generic_backward_op(
        grad_y, x, mean_in, var_in, weight, mean_weights, var_weights, bn_mean, bn_var,
        bn_count, bn_mode, eps, unbiased, group, ctx.needs_input_grad[0], softmax)
    return (grad_x if ctx.needs_input_grad[0] else None, grad_weight, grad_bias, grad_a, grad_b,
            None, None, None, None, None, None, None)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        'SwitchableNorm (sn_mm::switchable_norm) does not support double backward '
        '(e.g. torch.autograd.grad(..., create_graph=True) followed by a second backward '
        'through it); its backward is written out by hand and is not itself differentiable.')


_generic_op.register_fake(_fake_forward)
_generic_backward_op.register_fake(_fake_backward)
_generic_op.register_autograd(_backward, setup_context=_setup_context)
_generic_backward_op.register_autograd(
    _no_double_backward, setup_context=lambda ctx, inputs, output: None)

#: The compiled CPU op pair (schemas, CPU kernels and autograd in ``csrc/sn_cpu.cpp``,
#: registered when ``sn_mm._ext`` loads), or None without the extension.
native_op = None
if kernels.compiled_kernel is not None and hasattr(torch.ops.sn_mm, 'switchable_norm'):
    native_op = torch.ops.sn_mm.switchable_norm.default
    torch.library.register_fake('sn_mm::switchable_norm')(_fake_forward)
    torch.library.register_fake('sn_mm::switchable_norm_backward')(_fake_backward)
generic_op = torch.ops.sn_mm.switchable_norm_generic.default


def op_for(x: Tensor, bn_mode: int):
    """The op that runs SN on ``x``: the compiled CPU op, else the device-generic one."""
    if native_op is not None and bn_mode != BN_SYNC and kernels.use_compiled_kernel(x):
        return native_op
    return generic_op


# ------------------------------------------------------------------ export path
def composite_switchable_norm(x: Tensor, weight: Tensor, bias: Tensor, mean_weights: Tensor,
                              var_weights: Tensor, running_mean: Optional[Tensor],
                              running_var: Optional[Tensor], bn_mode: int, eps: float,
                              unbiased: bool, softmax: bool = False
                              ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The op's math in plain ATen ops (what exporters trace). Returns ``(y, bn_mean, bn_var, bn_count)``.

    Differentiable by autograd; no SyncSN (``BN_SYNC`` is an error: exporting a layer
    inside a distributed training step is not a deployment).
    """
    _check_mode(bn_mode)
    if bn_mode == BN_SYNC:
        raise ValueError('composite_switchable_norm: SyncSN statistics (bn_mode=BN_SYNC) '
                         'need the sn_mm::switchable_norm op; export in eval mode')
    n, c = x.shape[0], x.shape[1]
    length = math.prod(x.shape[2:])
    acc = accumulation_dtype(x.dtype)
    x3 = x.reshape(n, c, length).to(acc)
    mean_in = x3.mean(-1)
    u = (x3 - mean_in.unsqueeze(-1)).square().mean(-1) * bessel_factor(length, unbiased)
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = u.mean(1, keepdim=True) + (mean_in - mean_ln).square().mean(1, keepdim=True)
    a, b = mean_weights.to(acc), var_weights.to(acc)
    if softmax:
        a, b = torch.softmax(a, 0), torch.softmax(b, 0)
    mean = a[0] * mean_in + a[1] * mean_ln
    var = b[0] * u + b[1] * var_ln
    count = x3.new_zeros(2)
    bn_mean, bn_var = x3.new_zeros(0), x3.new_zeros(0)
    if bn_mode == BN_RUNNING:
        bn_mean, bn_var = running_mean.to(acc), running_var.to(acc)
    elif bn_mode == BN_BATCH:
        bn_mean = mean_in.mean(0)
        bn_var = u.mean(0) + (mean_in - bn_mean).square().mean(0)
        count = x3.new_tensor([float(n), float(n * length)])
    if bn_mode != BN_NONE:
        mean = mean + a[2] * bn_mean
        var = var + b[2] * bn_var
    scale = weight.to(acc) * torch.rsqrt(var + eps)
    shift = bias.to(acc) - mean * scale
    y = x3 * scale.unsqueeze(-1) + shift.unsqueeze(-1)
    return y.reshape(x.shape).to(x.dtype), bn_mean.detach(), bn_var.detach(), count


def is_exporting() -> bool:
    """True while ``torch.export``/ONNX export or ``torch.jit`` trace or script the model."""
    return (torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.jit.is_scripting())


def switchable_norm(x: Tensor, weight: Tensor, bias: Tensor, mean_weights: Tensor,
                    var_weights: Tensor, running_mean: Optional[Tensor] = None,
                    running_var: Optional[Tensor] = None, bn_mode: int = BN_BATCH,
                    eps: float = 1e-5, unbiased: bool = True, group: int = 0,
                    softmax: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Functional SN, the counterpart of ``torch.nn.functional.batch_norm``.

    Args:
        x: ``(N, C, *spatial)``, float64/32, bfloat16 or float16.
        weight, bias: ``(C,)`` affine parameters (gamma, beta).
        mean_weights, var_weights: importance weights of the means and of the variances,
            ``(3,)`` [IN, LN, BN] (``(2,)`` [IN, LN] with ``bn_mode=BN_NONE``), e.g.
            ``softmax(logits)``; gradients flow into them.
        running_mean, running_var: ``(C,)``, read in ``bn_mode=BN_RUNNING`` only (not
            updated here: the batch moments are returned).
        bn_mode: ``BN_NONE``, ``BN_RUNNING`` (eval), ``BN_BATCH`` (training) or ``BN_SYNC``
            (SyncSN: union batch of the group ``group``, a handle from
            :func:`sn_mm.ops.distributed.group_handle`).
        eps: added to the mixed variance.
        unbiased: Bessel's correction of the IN variance (``in_variance='unbiased'``).
        softmax: ``mean_weights``/``var_weights`` are logits: the op applies the softmax
            (and its backward) itself, which saves SN four small autograd ops a layer.

    Returns ``(y, bn_mean, bn_var, bn_count)``: the output (``x``'s dtype), the BN moments
    used and ``[samples, values]`` they average over (zeros unless batch moments).
    """
    if is_exporting():
        return composite_switchable_norm(x, weight, bias, mean_weights, var_weights,
                                         running_mean, running_var, bn_mode, eps, unbiased,
                                         softmax)
    y, _, _, bn_mean, bn_var, count = op_for(x, bn_mode)(
        x, weight, bias, mean_weights, var_weights, running_mean, running_var, bn_mode, eps,
        unbiased, group, softmax)
    return y, bn_mean, bn_var, count


__all__: List[str] = ['BN_NONE', 'BN_RUNNING', 'BN_BATCH', 'BN_SYNC', 'bessel_factor',
                      'composite_switchable_norm', 'is_exporting', 'switchable_norm']
