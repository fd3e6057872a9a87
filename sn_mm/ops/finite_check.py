"""Opt-in check for NaN/Inf in SN layers: name the first layer that sees one.

What happens without it: one NaN or Inf element in a training batch makes that channel's
BN-branch moments non-finite, and ``running = (1 - m) * running + m * batch`` keeps the
NaN for good, exactly as ``nn.BatchNorm2d`` does; through the LN branch every channel of
that sample is affected, and the next layers' inputs carry it on. The loss turns NaN a few
layers or iterations later, far from the cause.

:func:`watch_finite` registers a forward pre-hook and a forward hook on every SN layer
(:class:`~sn_mm.ops.SwitchableNorm` and its subclasses) of a model: before the layer runs,
its input and its parameters (affine and importance logits) must be finite; after it ran,
its running statistics and its output must be finite. Hooks run in forward order, so
the error (:class:`NonFiniteError`, a ``FloatingPointError``) names the first SN layer
that saw a non-finite input or statistic, what was non-finite and in how many elements.
Nothing is registered until it is called (no cost when off); when on, each check is one
``isfinite().all()`` per tensor (a device sync on GPU). ``handle.remove()`` turns it off.
For mmengine runs: ``custom_hooks = [dict(type='SNFiniteCheckHook')]``.
"""
from typing import List

import torch
from torch import nn

__all__ = ['NonFiniteError', 'watch_finite', 'FiniteWatch']


class NonFiniteError(FloatingPointError):
    """An SN layer saw a NaN or Inf in its input, parameters, statistics or output."""


def _bad(tensor) -> int:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        return 0
    finite = torch.isfinite(tensor.detach())
    return 0 if bool(finite.all()) else int((~finite).sum())


def _raise(name: str, layer: nn.Module, what: str, tensor: torch.Tensor, count: int):
    detail = ''
    if tensor.dim() >= 2 and what == 'input':
        channels = (~torch.isfinite(tensor.detach())).transpose(0, 1).flatten(1).any(1)
        detail = f' in channel(s) {channels.nonzero().flatten().tolist()[:10]}'
    raise NonFiniteError(
        f'{type(layer).__name__} layer {name!r} ({"training" if layer.training else "eval"}): '
        f'{what} has {count} non-finite (NaN/Inf) value(s) of {tensor.numel()}{detail}. '
        'It is the first SN layer of the forward pass to see one; in training its running '
        'statistics would stay NaN for good.')


class FiniteWatch:
    """The hooks :func:`watch_finite` registered; ``remove()`` takes them off."""

    def __init__(self, handles: List):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def watch_finite(model: nn.Module) -> FiniteWatch:
    """Check every SN layer of ``model`` for non-finite values (module docstring)."""
    from .switchable_norm import SwitchableNorm
    handles = []
    for name, layer in model.named_modules():
        if not isinstance(layer, SwitchableNorm):
            continue
        name = name or type(layer).__name__

        def before(module, args, name=name):
            x = args[0] if args else None
            count = _bad(x)
            if count:
                _raise(name, module, 'input', x, count)
            for pname, param in module.named_parameters(recurse=False):
                count = _bad(param)
                if count:
                    _raise(name, module, f'parameter {pname}', param, count)

        def after(module, args, output, name=name):
            for bname in ('running_mean', 'running_var'):
                buffer = getattr(module, bname, None)
                count = _bad(buffer)
                if count:
                    _raise(name, module, f'statistic {bname} (after this batch)', buffer, count)
            count = _bad(output)
            if count:
                _raise(name, module, 'output (a statistic of this batch is not finite)',
                       output, count)

        handles.append(layer.register_forward_pre_hook(before))
        handles.append(layer.register_forward_hook(after))
    return FiniteWatch(handles)
