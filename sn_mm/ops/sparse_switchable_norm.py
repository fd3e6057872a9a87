r"""Sparse Switchable Normalization (SSN; Shao et al., CVPR 2019, arXiv:1903.03793).

SSN is :class:`~sn_mm.ops.SwitchableNorm` with the two softmaxes replaced by
:func:`~sn_mm.ops.simplex.sparsestmax` at a radius ``r`` that grows during training
(:class:`sn_mm.engine.SSNRadiusHook`: linearly from 0 to 1 by default):

.. math::
    w = \mathrm{sparsestmax}(\lambda_{mean}, r), \qquad
    w' = \mathrm{sparsestmax}(\lambda_{var}, r),

weights in the order **[IN, LN, BN]** (or [IN, LN] with ``using_bn=False``). At
``r = 0`` the weights are sparsemax's; for 3 branches every layer is one-hot once
``r >= sqrt(2/3)`` (``sqrt(1/2)`` for 2). Everything else — statistics, kernels,
running statistics, SyncSN's synchronization, the checkpoint layout — is SN's: the
layer only overrides :meth:`mixture_weights`, the hook SN's forward mixes with.

State added to SN's (all buffers, saved in checkpoints):

- ``radius``: scalar float tensor, the sparsestmax radius (0 at construction);
- ``mean_fixed``, ``var_fixed``: scalar bool tensors, the *frozen* flags. A frozen
  importance vector is one-hot on the largest logit, its logits get a zero gradient
  (they stay in the autograd graph, so DDP sees every parameter used) and
  :meth:`freeze_one_hot` writes the one-hot vector into them.

Freezing (the authors' rule) happens outside the forward:
:meth:`freeze_one_hot` freezes the layer once *both* importance vectors are one-hot,
with tensor operations only (no host synchronization). The forward reads the flags with
``torch.where``: it never branches on tensor values in Python.

SN checkpoints load into SSN (for fine-tuning): the missing ``radius`` / ``*_fixed``
entries keep the layer's current values instead of being reported missing.
"""
from typing import Tuple

import torch

from .simplex import sparsestmax
from .switchable_norm import SwitchableNorm, SyncSwitchableNorm

SPARSE_BUFFERS = ('radius', 'mean_fixed', 'var_fixed')


class _SparseMixin:
    """The SSN part shared by :class:`SparseSwitchableNorm` and its synchronized variant."""

    def __init__(self, num_features: int, *args, **kwargs):
        super().__init__(num_features, *args, **kwargs)
        like = self.weight  # device/dtype of the layer's parameters (factory kwargs)
        self.register_buffer('radius', torch.zeros((), dtype=like.dtype, device=like.device))
        self.register_buffer('mean_fixed', torch.zeros((), dtype=torch.bool, device=like.device))
        self.register_buffer('var_fixed', torch.zeros((), dtype=torch.bool, device=like.device))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, 'mean_fixed'):  # SN's __init__ calls this before the buffers exist
            self.mean_fixed.fill_(False)
            self.var_fixed.fill_(False)

    @torch.no_grad()
    def set_radius(self, radius: float) -> None:
        """Set the sparsestmax radius (a finite number >= 0)."""
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) \
                or not 0 <= radius < float('inf'):
            raise ValueError(f'{type(self).__name__} radius must be a finite number >= 0, '
                             f'got {radius!r}')
        self.radius.fill_(float(radius))

    def mixture_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """sparsestmax (mean, variance) weights; frozen vectors are one-hot on their argmax."""
        logits = torch.stack([self.mean_weight, self.var_weight])
        weights = sparsestmax(logits, self.radius)
        fixed = torch.stack([self.mean_fixed, self.var_fixed]).unsqueeze(-1)
        weights = torch.where(fixed, _one_hot(logits.detach().argmax(-1, keepdim=True),
                                              logits.shape[-1], weights.dtype), weights)
        return weights[0], weights[1]

    def one_hot(self) -> torch.Tensor:
        """Scalar bool tensor: both importance vectors are one-hot (no host sync)."""
        return _both_one_hot(*self.importance())

    @property
    def frozen(self) -> torch.Tensor:
        """Scalar bool tensor: both importance vectors are frozen."""
        return self.mean_fixed & self.var_fixed

    @torch.no_grad()
    def freeze_one_hot(self, decision: torch.Tensor = None) -> torch.Tensor:
        """Freeze the layer if ``decision`` (default: :meth:`one_hot`) holds; keep frozen ones.

        Frozen logits are (re)written to the one-hot vector of their choice, which also
        undoes any drift an optimizer's momentum or weight decay gave them. Tensor ops
        only: no host synchronization. Returns the new (scalar bool) frozen state.
        """
        weights = self.importance()
        if decision is None:
            decision = _both_one_hot(*weights)
        frozen = self.frozen | decision.to(self.mean_fixed.device).reshape(())
        for logits, flag, w in ((self.mean_weight, self.mean_fixed, weights[0]),
                                (self.var_weight, self.var_fixed, weights[1])):
            choice = _one_hot(w.argmax(), w.numel(), logits.dtype)
            logits.copy_(torch.where(frozen, choice, logits))
            flag.copy_(frozen)
        return frozen

    def extra_repr(self) -> str:
        return super().extra_repr() + ', sparsestmax'

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # An SN checkpoint has no SSN buffers: keep this layer's values (radius 0, not
        # frozen at construction) rather than reporting them missing.
        for name in SPARSE_BUFFERS:
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


def _one_hot(index: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot rows by comparison (``F.one_hot`` may validate indices with a host sync)."""
    return (torch.arange(k, device=index.device) == index).to(dtype)


def _both_one_hot(mean_w: torch.Tensor, var_w: torch.Tensor) -> torch.Tensor:
    return ((mean_w > 0).sum() == 1) & ((var_w > 0).sum() == 1)


class SparseSwitchableNorm(_SparseMixin, SwitchableNorm):
    """Sparse Switchable Normalization: SN with sparsestmax importances (module docstring).

    Same constructor and state as :class:`~sn_mm.ops.SwitchableNorm`, plus the buffers
    ``radius``, ``mean_fixed``, ``var_fixed``. Registered as ``SSN``.
    """


class SyncSparseSwitchableNorm(_SparseMixin, SyncSwitchableNorm):
    """SSN with SyncSN's synchronized BN moments (``process_group``). Registered as ``SyncSSN``.

    The radius and the frozen flags are the same on every rank when they are set from
    the iteration count (:class:`sn_mm.engine.SSNRadiusHook`).
    """
