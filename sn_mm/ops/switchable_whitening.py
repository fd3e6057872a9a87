r"""Switchable Whitening layers (pure torch; no mm* import).

Switchable Whitening (Pan, Zhan, Shi, Tang, Luo, ICCV 2019, arXiv:1904.09739) whitens every
group of ``c = num_pergroup`` consecutive channels with a learned mixture of the means and
covariance matrices of several whitening / standardization methods:

.. math::
    \hat{x} = \Sigma^{-1/2} (x - \mu), \quad
    \mu = \sum_k w_k \mu_k, \quad \Sigma = \sum_k w'_k \Sigma_k + \epsilon I,
    \quad y = \gamma \hat{x} + \beta,

with ``w = softmax(sw_mean_weight)`` and ``w' = softmax(sw_var_weight)`` (``w' = w`` when
``tie_weight``), all logits initialised to 1.

Branches, for an input ``(N, C, *spatial)`` with ``L`` spatial positions, per group ``g``
(a ``c``-vector per position):

- BW (batch whitening): mean ``(c,)`` and covariance ``(c, c)`` over the ``N * L`` positions
  of the batch (over the union batch of all ranks for :class:`SyncSwitchableWhitening`);
- IW (instance whitening): the same per sample, over its ``L`` positions;
- BN / IN: the diagonals of the BW / IW covariances, sharing the BW / IW means;
- LN: per sample over all ``C * L`` values, ``var_ln * I``.

**The authors' conventions** (github XingangPan/Switchable-Whitening, ``SwitchWhiten2d``),
which this layer follows so that their checkpoints load and evaluate as trained:

- *Weight order*: ``sw_type=2``: [BW, IW]; ``sw_type=3``: [BW, IW, LN]; ``sw_type=5``:
  [BW, IW, BN, IN, LN]. ``sw_type=1`` (BW alone, the paper's "BW" column) is an sn_mm
  addition with a single logit. The means of ``sw_type=5`` are
  ``(w_BW + w_BN) mu_BW + (w_IW + w_IN) mu_IW + w_LN mu_LN``.
- *sw_type=5 covariance*: the paper mixes ``w'_BN diag(S_BW)`` and ``w'_IN diag(S_IW)``;
  the authors' code multiplies those diagonals by ``w'_BW`` and ``w'_IW`` instead (their
  logits 2 and 3 then reach the covariance only through the softmax normalization).
  ``sw5_cov='paper'`` (default) is the paper; ``sw5_cov='official'`` is their code, to
  evaluate their ``sw_type=5`` checkpoints as trained.
- *Group layout*: group ``g`` holds the consecutive channels ``[g*c, (g+1)*c)``.
- *Biased moments*: BW and IW covariances divide by the number of positions (``N*L``,
  ``L``); LN's variance is Bessel-corrected (``C*L - 1``, torch's ``var`` default), as in
  their code. ``running_cov`` tracks the biased BW covariance.
- *eps*: ``eps * I`` is added to the mixed covariance (also to a BN/IN/LN-only mixture).
- *Inverse square root*: with ``tr = trace(Sigma)``, ``Sigma_N = Sigma / tr``, ``P_0 = I``
  and ``T`` Newton iterations ``P <- 1.5 P - 0.5 P^3 Sigma_N`` (IterNorm), the whitening
  matrix is ``P_T / sqrt(tr)`` (``-> Sigma^{-1/2}`` as ``T`` grows; ``T=5`` default).
- *Running statistics*: ``running_mean (G, c, 1)``, ``running_cov (G, c, c)``; eval mode uses
  them for the BW/BN branches (IW/IN/LN still come from the sample).
- *Momentum*: torch's convention here, ``running = (1 - momentum) * running + momentum *
  batch``. The authors' ``momentum`` argument is a *decay* ``d``: ``running = d * running +
  (1 - d) * batch``; their class default 0.99 is ``momentum=0.01`` here (our default), the
  0.9 of their ImageNet script is ``momentum=0.1``. ``decay=d`` may be passed instead.
- *Initial running covariance*: the identity (their ``reset_parameters`` zeroes it, which
  makes a never-trained layer divide by ``sqrt(eps)`` in eval); loading a checkpoint
  overwrites it either way.
- *Names*: ``weight``, ``bias`` (C,); ``sw_mean_weight``, ``sw_var_weight`` (sw_type,)
  (no ``sw_var_weight`` when ``tie_weight``); buffers ``running_mean``, ``running_cov``.

Numerics (sn_mm's choices, not the authors'):

- The Newton iteration is the uncoupled one of IterNorm and of the authors: it converges
  for ``Sigma_N``'s eigenvalues in ``(0, 1]`` but amplifies rounding errors once converged,
  so a ``T`` far beyond what the covariances need drifts (float64, small random groups:
  8 iterations match ``eigh`` to 1e-11, 16 deviate by up to 1e-6, 60 diverge). With few
  iterations (``T=5``) small eigenvalues are not fully inverted: a regularization.
- The output is evaluated as ``A x + (beta - A mu)`` with ``A = diag(gamma) W`` (one batched
  GEMM, no centered copy of the input); in float32 this loses ``~1e-7 |mu| / sigma`` of
  relative precision when a channel's mean is large against its spread. The covariances
  are always computed from centered values.

The statistics, the Newton iterations and the whitening run in float32 for half-precision
inputs and under autocast (float64 stays float64); the output has the input's dtype.
"""
import math
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import norm_eval
from .distributed import sync_world_size
from .layer_base import NormLayer, SyncLayer
from .sw_functional import (affine_groups, instance_moments, mix_statistics,
                            newton_inverse_sqrt, pooled_moments, union_moments)

SW_TYPES = {1: ('BW',), 2: ('BW', 'IW'), 3: ('BW', 'IW', 'LN'), 5: ('BW', 'IW', 'BN', 'IN', 'LN')}
SW5_COV_MODES = ('paper', 'official')
BATCH_BRANCHES = ('BW', 'BN')


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be a bool (True or False), got {value!r} '
                        f'({type(value).__name__})')
    return value


def _check_int(name: str, value, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')
    return value


class SwitchableWhitening(NormLayer):
    """Switchable Whitening over ``(N, C, *spatial)`` inputs (the authors' ``SwitchWhiten2d``).

    Args:
        num_features: number of channels ``C``, a multiple of ``num_pergroup``.
        num_pergroup: channels per whitening group ``c`` (16).
        sw_type: 1 (BW), 2 (BW+IW), 3 (BW+IW+LN) or 5 (BW+IW+BN+IN+LN).
        T: Newton iterations (5).
        tie_weight: one set of logits for means and covariances.
        eps: ``eps * I`` added to the mixed covariance.
        momentum: torch convention (``running = (1-m) running + m batch``); default 0.01,
            the authors' decay 0.99.
        decay: the authors' convention instead of ``momentum`` (``momentum = 1 - decay``).
        affine: learn ``weight`` / ``bias`` per channel.
        sw5_cov: ``'paper'`` or ``'official'`` (module doc), only used by ``sw_type=5``.
    """

    _abbr_ = 'sw'
    _ARG_NAMES = ('num_features, num_pergroup, sw_type, T, tie_weight, eps, momentum, affine, '
                  'decay, sw5_cov')

    def __init__(self, num_features: int, num_pergroup: int = 16, sw_type: int = 2, T: int = 5,
                 tie_weight: bool = False, eps: float = 1e-5, momentum: Optional[float] = None,
                 affine: bool = True, decay: Optional[float] = None, sw5_cov: str = 'paper',
                 device=None, dtype=None, **unknown):
        super().__init__()
        self._reject_unknown(unknown)
        _check_int('num_features', num_features, 1)
        _check_int('num_pergroup', num_pergroup, 1)
        if num_features % num_pergroup:
            raise ValueError(
                f'num_features ({num_features}) must be divisible by num_pergroup '
                f'({num_pergroup}): SW whitens groups of num_pergroup consecutive channels')
        if isinstance(sw_type, bool) or sw_type not in SW_TYPES:
            raise ValueError(f'sw_type must be one of {sorted(SW_TYPES)} (1: BW, 2: BW+IW, '
                             f'3: BW+IW+LN, 5: BW+IW+BN+IN+LN), got {sw_type!r}')
        _check_int('T', T, 1)
        _check_bool('tie_weight', tie_weight)
        _check_bool('affine', affine)
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0):
            raise ValueError(f'eps must be a positive number, got {eps!r}')
        if momentum is not None and decay is not None:
            raise ValueError(f'give momentum ({momentum!r}, torch convention) or decay '
                             f'({decay!r}, the authors\' convention, momentum = 1 - decay), '
                             'not both')
        for name, value in (('momentum', momentum), ('decay', decay)):
            if value is not None and not (isinstance(value, (int, float))
                                          and not isinstance(value, bool) and 0 <= value <= 1):
                raise ValueError(f'{name} must be a number in [0, 1], got {value!r}')
        if decay is not None:
            momentum = 1.0 - decay
        elif momentum is None:
            momentum = 0.01
        elif momentum > 0.5:
            warnings.warn(
                f'{type(self).__name__}: momentum={momentum} is in torch\'s convention '
                '(running = (1-m) running + m batch); the authors\' momentum 0.99 is a decay, '
                'i.e. momentum=0.01 here (or pass decay=0.99)', stacklevel=2)
        if sw5_cov not in SW5_COV_MODES:
            raise ValueError(f'sw5_cov must be one of {SW5_COV_MODES}, got {sw5_cov!r}')

        self.num_features = num_features
        self.num_pergroup = num_pergroup
        self.num_groups = num_features // num_pergroup
        self.sw_type = sw_type
        self.T = T
        self.tie_weight = tie_weight
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = affine
        self.sw5_cov = sw5_cov

        factory = dict(device=device, dtype=dtype)
        self.sw_mean_weight = nn.Parameter(torch.empty(sw_type, **factory))
        if tie_weight:
            self.register_parameter('sw_var_weight', None)
        else:
            self.sw_var_weight = nn.Parameter(torch.empty(sw_type, **factory))
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter('weight', None)
            self.register_parameter('bias', None)
        g, c = self.num_groups, num_pergroup
        self.register_buffer('running_mean', torch.zeros(g, c, 1, **factory))
        self.register_buffer('running_cov', torch.zeros(g, c, c, **factory))
        self.reset_parameters()
        norm_eval.bind_owner(self)

    # ------------------------------------------------------------------ setup
    def reset_running_stats(self) -> None:
        with torch.no_grad():
            self.running_mean.zero_()
            self.running_cov.copy_(torch.eye(self.num_pergroup, dtype=self.running_cov.dtype,
                                             device=self.running_cov.device)
                                   .expand_as(self.running_cov))

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        with torch.no_grad():
            self.sw_mean_weight.fill_(1.0)
            if self.sw_var_weight is not None:
                self.sw_var_weight.fill_(1.0)
            if self.affine:
                self.weight.fill_(1.0)
                self.bias.zero_()

    def extra_repr(self) -> str:
        return (f'{self.num_features}, num_pergroup={self.num_pergroup}, '
                f'sw_type={self.sw_type}, T={self.T}, tie_weight={self.tie_weight}, '
                f'eps={self.eps}, momentum={self.momentum}, affine={self.affine}, '
                f'sw5_cov={self.sw5_cov!r}')

    def config(self) -> dict:
        """Constructor arguments (except ``num_features``) that rebuild this layer."""
        return dict(num_pergroup=self.num_pergroup, sw_type=self.sw_type, T=self.T,
                    tie_weight=self.tie_weight, eps=self.eps, momentum=self.momentum,
                    affine=self.affine, sw5_cov=self.sw5_cov)

    # norm_eval (sn_mm.ops.norm_eval) freezes ``mean_weight`` / ``var_weight``: SW's logits
    @property
    def mean_weight(self) -> nn.Parameter:
        return self.sw_mean_weight

    @property
    def var_weight(self) -> nn.Parameter:
        return self.sw_mean_weight if self.sw_var_weight is None else self.sw_var_weight

    # ------------------------------------------------------------- inspection
    @property
    def branches(self) -> Tuple[str, ...]:
        """Branch names in the order of the logits."""
        return SW_TYPES[self.sw_type]

    def mixture_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The differentiable (mean, covariance) importance weights (softmaxes of the logits)."""
        mean_w = F.softmax(self.sw_mean_weight, 0)
        var_w = mean_w if self.sw_var_weight is None else F.softmax(self.sw_var_weight, 0)
        return mean_w, var_w

    def importance(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, covariance) importance weights in the order of :attr:`branches`, detached."""
        with torch.no_grad():
            mean_w, var_w = self.mixture_weights()
        return mean_w.detach(), var_w.detach()

    def is_fixed_affine(self) -> bool:
        """True when the eval-mode layer is a fixed per-group affine map of its input.

        That holds when every instance branch (IW, IN, LN) has a weight of exactly 0 in both
        mixtures: ``sw_type=1``, or logits of ``-inf`` (or far enough below the others that
        the softmax underflows to 0).
        """
        mean_w, var_w = self.importance()
        return all(float(mean_w[k]) == 0.0 and float(var_w[k]) == 0.0
                   for k, name in enumerate(self.branches) if name not in BATCH_BRANCHES)

    # ---------------------------------------------------------------- forward
    def _use_batch(self, x: torch.Tensor) -> bool:
        """Batch statistics (and a running update) in training with a non-empty batch."""
        if not self.training or x.shape[0] == 0:
            return False
        self._check_batch_values(x, 'BW')
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        # at least float32 inside: half-precision Newton iterations would not converge
        dtype = torch.promote_types(x.dtype, torch.float32)
        return self._without_autocast(x, self._forward, x, dtype).to(x.dtype)

    def _batch_moments(self, mean_in, cov_in, num_positions):
        """``(mean, cov, count)`` of this forward's batch (count: positions, or ``None``)."""
        mean, cov = pooled_moments(mean_in, cov_in)
        return mean, cov, None

    def _forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        n, big_c = x.shape[0], x.shape[1]
        g, c = self.num_groups, self.num_pergroup
        length = math.prod(x.shape[2:])
        xg = x.to(dtype).reshape(n, g, c, length)
        mean_w, var_w = self.mixture_weights()
        mean_w, var_w = mean_w.to(dtype), var_w.to(dtype)

        mean_in, cov_in = instance_moments(xg)
        if self._use_batch(x):
            mean_bn, cov_bn, count = self._batch_moments(mean_in, cov_in, length)
            self._track(mean_bn, cov_bn, count)
        else:
            mean_bn, cov_bn = self.running_mean.to(dtype), self.running_cov.to(dtype)
        mean_ln = var_ln = None
        if self.sw_type in (3, 5):
            # LN over the C*L values of a sample, Bessel-corrected (torch.var, as the authors)
            mean_ln = mean_in.mean((1, 2), keepdim=True)
            diag_in = torch.diagonal(cov_in, dim1=-2, dim2=-1).unsqueeze(-1)
            sq = (diag_in + (mean_in - mean_ln) ** 2).sum((1, 2), keepdim=True) * length
            var_ln = sq / max(big_c * length - 1, 1)
        if self.sw_type == 1:
            mean_in = cov_in = None
        mean, cov = mix_statistics(self.sw_type, mean_w, var_w, mean_bn, cov_bn, mean_in,
                                   cov_in, mean_ln, var_ln, self.eps, self.sw5_cov)
        wm = newton_inverse_sqrt(cov, self.T)
        # y = gamma * W (x - mu) + beta = A x + (beta - A mu) with A = diag(gamma) W: the
        # affine parameters act on the c x c matrices, and one batched GEMM does the rest
        if self.affine:
            wm = wm * self.weight.to(dtype).reshape(g, c, 1)
            shift = self.bias.to(dtype).reshape(g, c, 1) - torch.matmul(wm, mean)
        else:
            shift = -torch.matmul(wm, mean)
        return affine_groups(wm, shift, xg).reshape(x.shape)

    def _track(self, mean_bn: torch.Tensor, cov_bn: torch.Tensor, count) -> None:
        if count is not None and float(count) == 0:
            return  # every rank's batch was empty: no statistics to track
        with torch.no_grad():
            self.running_mean.lerp_(mean_bn.detach().to(self.running_mean.dtype), self.momentum)
            self.running_cov.lerp_(cov_bn.detach().to(self.running_cov.dtype), self.momentum)

    # ------------------------------------------------------------ checkpoints
    def _state_dict_mismatch(self, state_dict, prefix) -> Optional[str]:
        logits = state_dict.get(prefix + 'sw_mean_weight')
        if isinstance(logits, torch.Tensor) and logits.numel() != self.sw_type:
            return (f'{prefix}sw_mean_weight has {logits.numel()} importance logits but this '
                    f'layer was built with sw_type={self.sw_type} ({self.sw_type} logits, '
                    f'{list(self.branches)}); build it with sw_type={logits.numel()}')
        has_var = (prefix + 'sw_var_weight') in state_dict
        if has_var == self.tie_weight:
            return (f'{prefix}: the checkpoint {"has" if has_var else "has no"} sw_var_weight '
                    f'but this layer was built with tie_weight={self.tie_weight}; build it with '
                    f'tie_weight={not has_var}')
        return None


class SyncSwitchableWhitening(SyncLayer, SwitchableWhitening):
    """SwitchableWhitening whose BW moments are those of the union batch across processes.

    In training inside an initialized ``torch.distributed`` run with more than one process
    in ``process_group`` (default WORLD), the BW mean and covariance are those of the
    concatenated batch of every rank, every position weighted equally (unequal and empty
    batches allowed; same spatial size assumed, as for SyncSN): one differentiable
    all-gather of ``(count, mean, M2)`` per layer in forward, one all-reduce of its gradient
    in backward (:func:`sn_mm.ops.distributed.all_gather_rows_autograd`). Outputs, running
    statistics and gradients then equal :class:`SwitchableWhitening` on the union batch. A
    rank with an empty batch still joins both collectives as long as its output takes part
    in its loss (e.g. ``0 * y.sum()``). The authors' ``SyncSwitchWhiten2d`` averages the
    per-rank means and covariances instead, which equals this only for equal batch sizes.
    In eval mode or outside a distributed run it is exactly :class:`SwitchableWhitening`.

    Arguments: those of :class:`SwitchableWhitening`, plus the keyword ``process_group``
    (:class:`~sn_mm.ops.layer_base.SyncLayer`).
    """

    def _synced(self) -> bool:
        return self.training and sync_world_size(self.process_group) > 1

    def _use_batch(self, x: torch.Tensor) -> bool:
        if self._synced():
            return True  # every rank joins the collectives, also with an empty batch
        return super()._use_batch(x)

    def _batch_moments(self, mean_in, cov_in, num_positions):
        if not self._synced():
            return super()._batch_moments(mean_in, cov_in, num_positions)
        return union_moments(mean_in, cov_in, num_positions, self.process_group)
