r"""SN's ops: one name per computation, a kernel per device, one autograd registration.

``torch.ops.sn_mm.switchable_norm`` and ``torch.ops.sn_mm.switchable_norm_backward``, the
way torchvision registers its ops:

- schemas, the CPU kernel and the autograd kernel in C++ (``csrc/sn_cpu.cpp``), so an
  eager call costs one dispatcher round trip;
- fake kernels (``meta`` tensors, ``torch.compile``) and the kernels of every other device
  here. On CUDA that is the Triton kernel (:mod:`sn_mm.ops.triton_kernels`, three launches
  each way) when ``triton`` imports, else the reference (:mod:`sn_mm.ops.reference`, its
  backward by autograd): the "ATen path".

``SN_MM_KERNELS`` (read at import) selects the kernels: ``auto`` (default, as above),
``reference`` (the ATen path on every device, the C++ kernel unused) or ``triton`` (the
Triton kernels on every device; on a machine without a GPU, CPU tensors run them under
``TRITON_INTERPRET=1``).

The ops are functional: they mutate nothing; the layer updates its running statistics
from the BN moments they return. ``(y, mean_in, var_in, bn_mean, bn_var, bn_count)``:
the output, the ``(N, C)`` instance moments (biased variance), the ``(C,)`` BN moments
used (empty without a BN branch) and ``[samples, values]`` they average over (zeros
unless batch moments). The arguments are those of :func:`switchable_norm`, with the pool
as the table codes of :mod:`sn_mm.ops.pool`. Double backward is not supported and raises.

``torch.compile`` and the exporters (``torch.export``, ONNX, ``torch.jit.trace``) trace the
reference instead of the op (:func:`switchable_norm`): plain ATen ops, which inductor
fuses with their neighbours and every exporter knows. A distributed SyncSN forward stays
one opaque op under ``torch.compile`` (its collectives run inside it).
"""
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import distributed  # noqa: F401  (registers the SyncSN collectives as ops)
from . import pool as pool_table
from . import reference
from .reference import BN_BATCH, BN_MODES, BN_NONE, BN_RUNNING, BN_SYNC

Tensor = torch.Tensor

KERNEL_MODES = ('auto', 'reference', 'triton')
KERNELS = os.getenv('SN_MM_KERNELS', 'auto')
if KERNELS not in KERNEL_MODES:
    raise ValueError(f'SN_MM_KERNELS={KERNELS!r}; expected one of {KERNEL_MODES}')

try:  # schemas, CPU kernel and autograd of the ops (setup.py builds it; SN_MM_WITH_OPS=0 skips)
    from .. import _ext as extension
except ImportError:  # pragma: no cover - exercised by installs without the extension
    extension = None
if extension is not None and not (
        hasattr(torch.ops.sn_mm, 'switchable_norm') and hasattr(extension, 'switchable_norm')
        and 'int[] pool' in str(torch.ops.sn_mm.switchable_norm.default._schema)):
    warnings.warn('sn_mm._ext is a stale build (its sn_mm::switchable_norm has another schema); '
                  'SN runs its torch reference. Rebuild it: make install, or pip install -e .')
    extension = None  # pragma: no cover - a stale build

_NAME_OF_CODE = {n.code: n.name for n in pool_table.NORMALIZERS}


def _names(codes: Sequence[int]) -> Tuple[str, ...]:
    return tuple(_NAME_OF_CODE[c] for c in codes)


# ----------------------------------------------------------- kernels of other devices
def _reference_forward(x, weight, bias, mean_weights, var_weights, running_mean, running_var,
                       pool, num_groups, bn_mode, eps, unbiased, group, softmax):
    with torch.no_grad():
        return reference.switchable_norm(x, weight, bias, mean_weights, var_weights,
                                         running_mean, running_var, _names(pool), num_groups,
                                         bn_mode, eps, unbiased, group, softmax)


def _reference_backward(grad_y, x, mean_in, var_in, weight, mean_weights, var_weights, bn_mean,
                        bn_var, bn_count, pool, num_groups, bn_mode, eps, unbiased, group,
                        input_grad, softmax):
    """The reference's forward again, differentiated by autograd (SyncSN: moments replayed)."""
    running = (bn_mean, bn_var) if bn_mode == BN_RUNNING else (None, None)
    given = (bn_mean, bn_var, bn_count) if bn_mode == BN_SYNC else None
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (weight, mean_weights, var_weights)]
        bias = torch.zeros_like(leaves[0], requires_grad=True)
        xs = x.detach().requires_grad_(input_grad)
        y = reference.switchable_norm(xs, leaves[0], bias, leaves[1], leaves[2], *running,
                                      _names(pool), num_groups, bn_mode, eps, unbiased, group,
                                      softmax, given_bn=given)[0]
        inputs = ([xs] if input_grad else []) + [leaves[0], bias, leaves[1], leaves[2]]
        grads = torch.autograd.grad(y, inputs, grad_y.to(y.dtype), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]
    grad_x = grads.pop(0) if input_grad else x.new_empty(0)
    return (grad_x, *grads)


def memory_format(x: Tensor) -> torch.memory_format:
    """The layout of the op's outputs: channels_last for a channels_last input, else contiguous."""
    if not x.is_contiguous():
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
    return torch.contiguous_format


def _fake_forward(x, weight, bias, mean_weights, var_weights, running_mean, running_var, pool,
                  num_groups, bn_mode, eps, unbiased, group, softmax):
    n, c = x.shape[0], x.shape[1]
    acc = reference.accumulation_dtype(x.dtype)
    bn = c if bn_mode != BN_NONE else 0
    return (torch.empty_like(x, memory_format=memory_format(x)),
            x.new_empty((n, c), dtype=acc), x.new_empty((n, c), dtype=acc),
            x.new_empty((bn,), dtype=acc), x.new_empty((bn,), dtype=acc),
            x.new_empty((2,), dtype=acc))


def _fake_backward(grad_y, x, mean_in, var_in, weight, mean_weights, var_weights, bn_mean,
                   bn_var, bn_count, pool, num_groups, bn_mode, eps, unbiased, group, input_grad,
                   softmax):
    grad_x = torch.empty_like(x, memory_format=memory_format(x)) if input_grad \
        else x.new_empty(0)
    return (grad_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape),
            mean_weights.new_empty(mean_weights.shape), var_weights.new_empty(var_weights.shape))


_TRITON_BN = {BN_NONE: 'none', BN_RUNNING: 'given', BN_BATCH: 'batch', BN_SYNC: 'given'}


def _triton_forward(x, weight, bias, mean_weights, var_weights, running_mean, running_var,
                    pool, num_groups, bn_mode, eps, unbiased, group, softmax):
    """The op's forward through :mod:`sn_mm.ops.triton_kernels` (float64: the reference)."""
    if x.dtype == torch.float64:
        return _reference_forward(x, weight, bias, mean_weights, var_weights, running_mean,
                                  running_var, pool, num_groups, bn_mode, eps, unbiased, group,
                                  softmax)
    from . import triton_kernels
    sync = None
    if bn_mode == BN_SYNC:
        length = x.numel() // max(x.shape[0] * x.shape[1], 1)
        sync = lambda mean_in, u: distributed.sync_batch_moments(  # noqa: E731
            mean_in, u, length, group)
    given = (running_mean, running_var) if bn_mode == BN_RUNNING else (None, None)
    return triton_kernels.forward(x, weight, bias, mean_weights, var_weights, *given,
                                  _names(pool), num_groups, _TRITON_BN[bn_mode], eps, unbiased,
                                  softmax, sync_moments=sync)


def _triton_backward(grad_y, x, mean_in, var_in, weight, mean_weights, var_weights, bn_mean,
                     bn_var, bn_count, pool, num_groups, bn_mode, eps, unbiased, group,
                     input_grad, softmax):
    if x.dtype == torch.float64:
        return _reference_backward(grad_y, x, mean_in, var_in, weight, mean_weights,
                                   var_weights, bn_mean, bn_var, bn_count, pool, num_groups,
                                   bn_mode, eps, unbiased, group, input_grad, softmax)
    from . import triton_kernels
    sync = None
    if bn_mode == BN_SYNC:
        sync = lambda g_mean, g_var: distributed.sync_bn_grad(g_mean, g_var, group)  # noqa: E731
    return triton_kernels.backward(grad_y, x, mean_in, var_in, weight, mean_weights,
                                   var_weights, bn_mean, bn_var, bn_count, _names(pool),
                                   num_groups, _TRITON_BN[bn_mode], eps, unbiased, softmax,
                                   input_grad, sync_grad=sync)


def _triton_available() -> bool:
    try:
        from . import triton_kernels  # noqa: F401
    except ImportError:
        return False
    return True


def _register_kernels() -> Optional[torch.library.Library]:
    """Fake kernels, and the kernels of the devices the C++ extension does not cover."""
    if extension is None:
        return None
    torch.library.register_fake('sn_mm::switchable_norm')(_fake_forward)
    torch.library.register_fake('sn_mm::switchable_norm_backward')(_fake_backward)
    lib = torch.library.Library('sn_mm', 'IMPL')  # noqa: TOR901 (kept alive below)
    forward, backward = _reference_forward, _reference_backward
    if KERNELS == 'triton' or (KERNELS == 'auto' and torch.cuda.is_available()
                               and _triton_available()):
        forward, backward = _triton_forward, _triton_backward
    for key in ('CUDA', 'XPU', 'MPS', 'PrivateUse1'):
        lib.impl('switchable_norm', forward, key)
        lib.impl('switchable_norm_backward', backward, key)
    if KERNELS != 'auto':  # replace the C++ CPU kernel (with a warning from torch)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            lib.impl('switchable_norm', forward, 'CPU')
            lib.impl('switchable_norm_backward', backward, 'CPU')
    return lib


_LIBRARY = _register_kernels()
#: The op's overload, resolved once (calling the packet resolves it on every call: ~4 us).
_OP = torch.ops.sn_mm.switchable_norm.default if extension is not None else None
#: The same op through the extension's unboxed binding (``_ext.switchable_norm``): one
#: dispatcher call as ``_OP``, minus torch.ops' boxing of its 14 arguments.
_CALL = extension.switchable_norm if extension is not None else None
_warned_reference = False


# ------------------------------------------------------------------ the public function
def is_exporting() -> bool:
    """True while ``torch.export``/ONNX export or ``torch.jit`` trace or script the model."""
    return (torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.jit.is_scripting())


def _use_reference(bn_mode: int) -> bool:
    global _warned_reference
    if extension is None:
        if not _warned_reference:
            _warned_reference = True
            warnings.warn('sn_mm was installed without its compiled ops (sn_mm._ext); SN runs '
                          'its torch reference with plain autograd: same results, slower. '
                          'Reinstall (pip install -e ., SN_MM_WITH_OPS=1, the default).')
        return True
    if is_exporting():
        return True
    return torch.compiler.is_compiling() and bn_mode != BN_SYNC


_CODES: Dict[Tuple[str, ...], List[int]] = {}


def switchable_norm(x: Tensor, weight: Tensor, bias: Tensor, mean_weights: Tensor,
                    var_weights: Tensor, running_mean: Optional[Tensor] = None,
                    running_var: Optional[Tensor] = None, bn_mode: int = BN_BATCH,
                    eps: float = 1e-5, unbiased: bool = True, group: int = 0,
                    softmax: bool = False, pool: Sequence[str] = pool_table.DEFAULT_POOL,
                    num_groups: int = 1) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Functional SN, the counterpart of ``torch.nn.functional.batch_norm``.

    Args:
        x: ``(N, C, *spatial)``, float64/32, bfloat16 or float16.
        weight, bias: ``(C,)`` affine parameters (gamma, beta).
        mean_weights, var_weights: importance weights of the means and of the variances in
            the order of ``pool``, shared ``(K,)`` or per sample ``(N, K)``, e.g.
            ``softmax(logits)``; gradients flow into them.
        running_mean, running_var: ``(C,)``, read in ``bn_mode=BN_RUNNING`` only (not
            updated here: the batch moments are returned).
        bn_mode: ``BN_NONE`` (no BN branch in ``pool``), ``BN_RUNNING`` (eval),
            ``BN_BATCH`` (training) or ``BN_SYNC`` (SyncSN: union batch of the group
            ``group``, a handle from :func:`sn_mm.ops.distributed.group_handle`).
        eps: added to the mixed variance.
        unbiased: Bessel's correction of the IN variance (``in_variance='unbiased'``).
        softmax: the weights are logits: the op applies the softmax over ``K`` (and its
            backward) itself.
        pool: the normalizers mixed, names of :mod:`sn_mm.ops.pool` in weight order.
        num_groups: groups of a ``'GN'`` branch.

    Returns ``(y, bn_mean, bn_var, bn_count)``: the output (``x``'s dtype), the BN moments
    used and ``[samples, values]`` they average over (zeros unless batch moments).
    """
    pool = tuple(pool)
    if _use_reference(bn_mode):
        y, _, _, bn_mean, bn_var, count = reference.switchable_norm(
            x, weight, bias, mean_weights, var_weights, running_mean, running_var, pool,
            num_groups, bn_mode, eps, unbiased, group, softmax)
        return y, bn_mean, bn_var, count
    codes = _CODES.get(pool)
    if codes is None:
        codes = _CODES[pool] = pool_table.codes(pool)
    # The extension's unboxed entry is the same dispatcher call, without torch.ops' argument
    # parsing (a few us per layer). torch.ops when something overrides __torch_function__,
    # and for SyncSN's union batch (BN_SYNC: the op calls its collectives; through the
    # unboxed entry, 2-rank gloo runs aborted at exit now and then, "terminate called
    # without an active exception", tests/test_sync_sn_checks.py).
    call = _OP if bn_mode == BN_SYNC or torch._C._has_torch_function(
        (x, weight, bias, mean_weights, var_weights, running_mean, running_var)) else _CALL
    y, _, _, bn_mean, bn_var, count = call(
        x, weight, bias, mean_weights, var_weights, running_mean, running_var, codes,
        num_groups, bn_mode, eps, unbiased, group, softmax)
    return y, bn_mean, bn_var, count


__all__: List[str] = ['BN_NONE', 'BN_RUNNING', 'BN_BATCH', 'BN_SYNC', 'BN_MODES', 'KERNELS',
                      'is_exporting', 'switchable_norm']
