r"""What the sn_mm norm layers share: SN (and SSN), EN and SW, and their Sync variants.

One place for the conventions every layer follows, so that they cannot drift apart:

- :class:`NormLayer` (an ``nn.Module``), base of every layer:

  * a constructor keyword the layer does not know raises a ``TypeError`` that lists the
    accepted ones (:meth:`~NormLayer._reject_unknown`; a Sync variant adds
    ``process_group`` through :meth:`~NormLayer._extra_arg_names`);
  * ``train()`` keeps the layer in eval inside a ``norm_eval=True`` owner and ``_apply``
    (``.to()``, ``.cuda()``, ``.float()``) applies a pending freeze
    (:mod:`sn_mm.ops.norm_eval`);
  * the input check of :func:`sn_mm.ops.options.check_input` and the "more than 1 value
    per channel" check of a batch branch in training;
  * :meth:`~NormLayer._without_autocast`: the statistics run with autocast off (float32 or
    wider whatever autocast's dtype);
  * loading a checkpoint: :meth:`~NormLayer._adapt_state_dict` rewrites older layouts in
    place, then :meth:`~NormLayer._state_dict_mismatch` may name a mismatch (e.g. another
    number of importance logits); the message goes to ``error_msgs`` and the layer's
    entries are not loaded (``load_state_dict`` then raises with it).

- :class:`BNRunningStats` (a :class:`NormLayer`), base of SN and EN: the options both share
  (``num_features``, ``eps``, ``momentum``, ``using_moving_average``, ``using_bn``,
  ``last_gamma``, ``in_variance``), validated by :mod:`sn_mm.ops.options`; the BN branch's
  buffers ``running_mean`` (zeros) and ``running_var`` (ones), both ``(C,)`` and ``None``
  without a BN branch; the variance they track, ``v`` in ``'unbiased'`` mode and
  ``v * M / (M - 1)`` over ``M`` values in ``'biased'`` mode (torch's BatchNorm); and the
  official SN checkpoint layout, ``(1, C, 1, 1)`` / ``(1, C, 1)`` tensors reshaped to ``(C,)``.

- :class:`SyncLayer`, the mixin of every Sync variant: the keyword-only ``process_group``
  (``None``: WORLD), stored as ``self.process_group``.
"""
import math
from typing import Optional

import torch
from torch import nn

from . import norm_eval, options

IN_VARIANCE_MODES = ('unbiased', 'biased')


class NormLayer(nn.Module):
    """Base of the sn_mm norm layers (module docstring). Subclasses set :attr:`_ARG_NAMES`."""

    #: the constructor's arguments as the unknown-argument error lists them, in order,
    #: before the Sync variants' extra ones and ``device, dtype``
    _ARG_NAMES = 'num_features'

    def _reject_unknown(self, unknown: dict) -> None:
        if unknown:
            raise TypeError(
                f'{type(self).__name__} got unknown argument(s) {sorted(unknown)}; expected '
                f'{self._ARG_NAMES}{self._extra_arg_names()}, device, dtype')

    @staticmethod
    def _extra_arg_names() -> str:
        return ''

    def train(self, mode: bool = True):
        """``nn.Module.train``, except that inside a ``norm_eval=True`` owner the layer stays
        in eval (OpenMMLab backbones' ``norm_eval`` convention, :mod:`sn_mm.ops.norm_eval`)."""
        return super().train(norm_eval.train_mode(self, mode))

    def _apply(self, fn, recurse=True):
        # .to()/.cuda()/.float() precede DDP in every recipe: apply a pending norm_eval freeze
        norm_eval.resolve_pending_freeze(self)
        return super()._apply(fn, recurse)

    # ---------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        options.check_input(self, x)

    def _check_batch_values(self, x: torch.Tensor, branch: str) -> None:
        """A batch branch (``branch``: 'BN', 'BW') needs more than 1 value per channel."""
        if x.shape[0] * math.prod(x.shape[2:]) <= 1:
            raise ValueError(
                f'Expected more than 1 value per channel when training the {branch} branch of '
                f'{type(self).__name__}, got input size {tuple(x.shape)}')

    @staticmethod
    def _without_autocast(x: torch.Tensor, fn, *args):
        """``fn(*args)`` with autocast off on ``x``'s device when it is on (statistics in
        float32 or wider whatever autocast's dtype); else simply ``fn(*args)``."""
        if not torch._C._is_any_autocast_enabled():  # the common case, in one cheap call
            return fn(*args)
        device_type = x.device.type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return fn(*args)
        return fn(*args)

    # ------------------------------------------------------------ checkpoints
    def _adapt_state_dict(self, state_dict, prefix: str, local_metadata) -> None:
        """Rewrite an older layout of this layer's entries in ``state_dict`` in place."""

    def _state_dict_mismatch(self, state_dict, prefix: str) -> Optional[str]:
        """A message if this layer cannot hold the checkpoint's entries, else ``None``."""
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        self._adapt_state_dict(state_dict, prefix, local_metadata)
        problem = self._state_dict_mismatch(state_dict, prefix)
        if problem is not None:
            error_msgs.append(problem)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class BNRunningStats(NormLayer):
    """Base of SN and EN: their shared options and the BN branch's running statistics."""

    _ARG_NAMES = ('num_features, eps, momentum, using_moving_average, using_bn, last_gamma, '
                  'in_variance')

    def _init_options(self, num_features, eps, momentum, using_moving_average, using_bn,
                      last_gamma, in_variance) -> None:
        """Validate and store the shared options (:mod:`sn_mm.ops.options` messages)."""
        self.num_features = options.check_positive_int(self, 'num_features', num_features)
        self.eps = options.check_number(self, 'eps', eps, low=0, low_closed=False)
        self.momentum = options.check_number(
            self, 'momentum', momentum, low=0, high=1, hint='torch convention: new = (1-m)*old '
            '+ m*batch; the official decay d corresponds to momentum = 1 - d')
        self.using_moving_average = options.check_bool(self, 'using_moving_average',
                                                       using_moving_average)
        self.using_bn = options.check_bool(self, 'using_bn', using_bn)
        self.last_gamma = options.check_bool(self, 'last_gamma', last_gamma)
        self.in_variance = options.check_choice(self, 'in_variance', in_variance,
                                                IN_VARIANCE_MODES)

    def _options_repr(self) -> str:
        return (f'{self.num_features}, eps={self.eps}, momentum={self.momentum}, '
                f'using_moving_average={self.using_moving_average}, '
                f'using_bn={self.using_bn}, last_gamma={self.last_gamma}, '
                f'in_variance={self.in_variance!r}')

    def _options(self) -> dict:
        """The shared constructor arguments (except ``num_features``) of this layer."""
        return dict(eps=self.eps, momentum=self.momentum,
                    using_moving_average=self.using_moving_average, using_bn=self.using_bn,
                    last_gamma=self.last_gamma, in_variance=self.in_variance)

    def _register_running_stats(self, factory: dict) -> None:
        """``running_mean``/``running_var`` (C,) with a BN branch, else ``None`` buffers."""
        if self.using_bn:
            self.register_buffer('running_mean', torch.zeros(self.num_features, **factory))
            self.register_buffer('running_var', torch.ones(self.num_features, **factory))
        else:
            self.register_buffer('running_mean', None)
            self.register_buffer('running_var', None)

    def reset_running_stats(self) -> None:
        if self.using_bn:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)

    def _reset_affine(self) -> None:
        """Running statistics reset; ``weight`` 1 (0 with ``last_gamma``), ``bias`` 0."""
        self.reset_running_stats()
        with torch.no_grad():
            self.weight.fill_(0.0 if self.last_gamma else 1.0)
            self.bias.zero_()

    def _running_variance(self, var_bn: torch.Tensor, num_values) -> torch.Tensor:
        """The value ``running_var`` tracks for a BN-branch variance over ``num_values`` (> 1)."""
        if self.in_variance == 'biased':
            return var_bn * (num_values / (num_values - 1))
        return var_bn

    def _reshape_official_layout(self, state_dict, prefix: str) -> None:
        """The official SN layout stores ``weight``/``bias`` as (1, C, 1, 1) and the running
        statistics as (1, C, 1); reshape them to (C,) in place."""
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            key = prefix + name
            value = state_dict.get(key)
            if (isinstance(value, torch.Tensor) and value.dim() != 1
                    and value.numel() == self.num_features):
                state_dict[key] = value.reshape(self.num_features)


class SyncLayer:
    """Mixin of the Sync variants, listed before the plain layer:
    ``class SyncX(SyncLayer, X)``. Adds the keyword-only ``process_group`` (``None``: WORLD);
    every other argument goes to ``X``."""

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    @staticmethod
    def _extra_arg_names() -> str:
        return ', process_group'
