r"""Switchable Normalization layers (pure torch).

Switchable Normalization (Luo et al., ICLR 2019, arXiv:1806.10779) normalizes with a
learned mixture of Instance-, Layer- and Batch-Norm statistics:

.. math::
    y = \gamma \, \frac{x - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma^2_k + \epsilon}} + \beta,
    \qquad k \in \{\mathrm{IN}, \mathrm{LN}, \mathrm{BN}\},

with ``w = softmax(mean_weight)`` and ``w' = softmax(var_weight)`` — two independent
softmaxes over pre-softmax logits stored in the order of the layer's *pool*, by default
**[IN, LN, BN]** (the official checkpoints' order), all initialised to 1 (uniform). The
pool may also hold a GroupNorm branch (``branches=('IN', 'LN', 'BN', 'GN'),
num_groups=G``); every normalizer it can hold is a row of :mod:`sn_mm.ops.pool`.

Statistics for an input ``x`` of shape ``(N, C, *spatial)`` (``L`` spatial positions):

- IN: per (n, c) over the spatial positions, :math:`\mu_{in}` and :math:`\sigma^2_{in}`;
- LN: derived from IN, :math:`\mu_{ln} = \mathrm{mean}_c \mu_{in}`,
  :math:`\sigma^2_{ln} = \mathrm{mean}_c(\sigma^2_{in} + \mu_{in}^2) - \mu_{ln}^2`;
- BN: likewise over the batch dimension ``n`` (over the union batch of all ranks for
  SyncSN, every sample weighted equally).

The LN/BN variances are evaluated in the algebraically identical, cancellation-free
form :math:`\mathrm{mean}(\sigma^2_{in}) + \mathrm{mean}((\mu_{in} - \mu)^2)`.

``in_variance``: ``'unbiased'`` (default) uses the IN variance with Bessel's correction
(divides by ``L - 1``) as the official implementation does, so official checkpoints
evaluate as trained; ``'biased'`` (divides by ``L``) is the paper's text and makes
one-hot SN coincide exactly with torch's InstanceNorm / LayerNorm / BatchNorm.
On a 1x1 map (``L == 1``) the unbiased variance is undefined; SN then uses the
biased one, which is 0: the IN term normalizes the sample to ``bias`` and the LN/BN
terms remain well defined (no NaN, no Inf).

In training the BN term uses the batch moments and updates the running statistics;
in eval mode the BN term uses ``running_mean``/``running_var`` while IN and LN still
come from the sample.

Running statistics follow torch's momentum convention:
``running = (1 - momentum) * running + momentum * batch``. The official SN code
uses a *decay* ``d`` instead (``running = d * running + (1 - d) * batch``): its
``0.9`` equals ``momentum=0.1`` and its ``0.997`` equals ``momentum=0.003``.
``running_var`` holds the BN-branch variance as the forward uses it in
``'unbiased'`` mode (the official rule: it is built from Bessel-corrected IN
variances), and gets Bessel's correction over the ``N * L`` values in ``'biased'``
mode, exactly as ``torch.nn.BatchNorm2d``. Running statistics start at mean 0,
variance 1 (torch's convention; the official code starts both at 0).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import norm_eval
from .batch_average import BatchAverage
from .layer_base import IN_VARIANCE_MODES, BNRunningStats, SyncLayer  # noqa: F401 (re-export)
from . import pool as pool_table
from .distributed import check_sync_layer, group_handle, sync_signature, sync_world_size
from .functional import BN_BATCH, BN_NONE, BN_RUNNING, BN_SYNC, switchable_norm

#: The default pool (:data:`sn_mm.ops.pool.DEFAULT_POOL`), the official logits' order.
BRANCHES = pool_table.DEFAULT_POOL


class SwitchableNorm(BNRunningStats):
    """Switchable Normalization over ``(N, C, *spatial)`` inputs (1D, 2D or 3D).

    Args:
        num_features: number of channels ``C``.
        eps: added to the mixed variance.
        momentum: torch meaning, ``running = (1 - momentum) * running + momentum * batch``
            (official decay 0.9 == momentum 0.1; 0.997 == 0.003).
        using_moving_average: update ``running_mean``/``running_var`` in training. With
            ``False`` the running statistics are left for a batch-average pass
            (:meth:`start_batch_average` / :meth:`finish_batch_average`).
        using_bn: include the BN branch (3 logits); ``False`` gives the official
            ``(8, 1)`` layout: 2 logits [IN, LN] and no running statistics.
        branches: the pool, names of :mod:`sn_mm.ops.pool` in logit order (default
            ``('IN', 'LN', 'BN')``, without ``'BN'`` when ``using_bn=False``); it holds
            ``'BN'`` exactly when ``using_bn`` is True.
        num_groups: groups of a ``'GN'`` branch (must divide ``num_features``).
        last_gamma: initialise ``weight`` (gamma) to 0 — for the last SN of a residual block.
        in_variance: ``'unbiased'`` (official, default) or ``'biased'`` (paper).

    Parameters: ``weight``, ``bias`` (C,); ``mean_weight``, ``var_weight`` (K,),
    pre-softmax logits in the order of ``self.pool`` (default [IN, LN, BN]). Buffers:
    ``running_mean``, ``running_var`` (C,), only when ``using_bn``.
    """

    _abbr_ = 'sn'
    _version = 2
    _ARG_NAMES = BNRunningStats._ARG_NAMES + ', branches, num_groups'

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 using_moving_average: bool = True, using_bn: bool = True,
                 last_gamma: bool = False, in_variance: str = 'unbiased',
                 branches: Optional[Sequence[str]] = None, num_groups: Optional[int] = None,
                 device=None, dtype=None, **unknown):
        super().__init__()
        self._reject_unknown(unknown)
        self._init_options(num_features, eps, momentum, using_moving_average, using_bn,
                           last_gamma, in_variance)
        owner = type(self).__name__
        #: the normalizers mixed, in logit order (names of :mod:`sn_mm.ops.pool`)
        self.pool = pool_table.resolve_pool(branches, self.using_bn, owner)
        self.num_groups = pool_table.check_groups(self.pool, num_features, num_groups, owner)

        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        num_branches = len(self.pool)
        self.mean_weight = nn.Parameter(torch.empty(num_branches, **factory))
        self.var_weight = nn.Parameter(torch.empty(num_branches, **factory))
        self._register_running_stats(factory)
        self._batch_average: Optional[BatchAverage] = None
        # Subclasses that map the logits otherwise (sparse SN) override mixture_weights()
        self._softmax_in_op = type(self).mixture_weights is SwitchableNorm.mixture_weights
        self.reset_parameters()
        norm_eval.bind_owner(self)

    # ------------------------------------------------------------------ setup
    def reset_parameters(self) -> None:
        self._reset_affine()
        with torch.no_grad():
            self.mean_weight.fill_(1.0)
            self.var_weight.fill_(1.0)

    def extra_repr(self) -> str:
        pool = '' if self.pool in pool_table.OFFICIAL_POOLS else \
            f', branches={self.pool!r}, num_groups={self.num_groups}'
        return f'{self._options_repr()}{pool}'

    def config(self) -> dict:
        """Constructor arguments (except ``num_features``) that rebuild this layer."""
        cfg = self._options()
        if self.pool not in pool_table.OFFICIAL_POOLS:
            cfg.update(branches=self.pool, num_groups=self.num_groups)
        return cfg

    # ------------------------------------------------------------- inspection
    def mixture_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The differentiable (mean, variance) importance weights the forward mixes with.

        SN maps its logits through two softmaxes; subclasses (e.g. sparse SN) may map
        them differently: the mixing step takes whatever weights this returns.
        """
        return F.softmax(self.mean_weight, 0), F.softmax(self.var_weight, 0)

    def importance(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) importance weights in the order of ``self.pool``, detached."""
        with torch.no_grad():
            mean_w, var_w = self.mixture_weights()
        return mean_w.detach(), var_w.detach()

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self._softmax_in_op:  # SN's own map: the op applies the softmaxes itself
            mean_w, var_w = self.mean_weight, self.var_weight
        else:
            mean_w, var_w = self.mixture_weights()
        bn_mode, group = self._bn_mode(x)
        # statistics in float32 whatever autocast's dtype; the output keeps x's dtype
        y, bn_mean, bn_var, count = self._without_autocast(
            x, self._normalize, x, mean_w, var_w, bn_mode, group)
        if bn_mode in (BN_BATCH, BN_SYNC):
            self._track(bn_mean, bn_var, count)
        return y

    def _normalize(self, x, mean_w, var_w, bn_mode, group):
        return switchable_norm(x, self.weight, self.bias, mean_w, var_w, self.running_mean,
                               self.running_var, bn_mode, self.eps,
                               self.in_variance == 'unbiased', group, self._softmax_in_op,
                               self.pool, self.num_groups)

    def _bn_mode(self, x: torch.Tensor) -> Tuple[int, int]:
        """``(bn_mode, group handle)`` of this forward (see :mod:`sn_mm.ops.functional`).

        Eval, or an empty batch in training (e.g. 0 RoIs: empty output, statistics
        untouched), use the running statistics.
        """
        if not self.using_bn:
            return BN_NONE, 0
        if not self.training or x.shape[0] == 0:
            return BN_RUNNING, 0
        self._check_batch_values(x, 'BN')
        return BN_BATCH, 0

    def _track(self, mean_bn: torch.Tensor, var_bn: torch.Tensor, count: torch.Tensor) -> None:
        """Update running statistics (and a running batch-average pass) from batch moments.

        ``count = [samples, values]`` the moments average over (all ranks for SyncSN).
        The moments come out of the op without autograd history, so no ``no_grad``
        context is needed here (it would cost more than the update on small layers).
        """
        if self._batch_average is not None:
            self._batch_average.add(mean_bn, var_bn, float(count[1]))
        if self.using_moving_average:
            running_mean, running_var = self.running_mean, self.running_var
            if mean_bn.dtype != running_mean.dtype:
                mean_bn = mean_bn.to(running_mean.dtype)
            # count[1] is read only where it is needed (indexing costs as much as a lerp_)
            var = var_bn if self.in_variance == 'unbiased' else \
                self._running_variance(var_bn, count[1])
            if var.dtype != running_var.dtype:
                var = var.to(running_var.dtype)
            # both lerp_ (new = old + momentum * (batch - old)) in one call
            torch._foreach_lerp_((running_mean, running_var), (mean_bn, var), self.momentum)

    # ------------------------------------------------------- batch average
    def start_batch_average(self) -> None:
        """Start pooling BN-branch batch moments of the following training forwards.

        Used by the batch-average ("precise statistics") pass: forward batches in
        train mode, then call :meth:`finish_batch_average`.
        """
        if not self.using_bn:
            raise RuntimeError(f'{type(self).__name__} with using_bn=False has no BN statistics')
        self._batch_average = BatchAverage(self.num_features, self.running_mean.device)

    def finish_batch_average(self) -> Optional[BatchAverage]:
        """Write the pooled moments into the running statistics; returns the pool.

        ``running_mean`` = pooled mean and ``running_var`` = pooled
        ``E[x^2] - E[x]^2`` over every value seen (each batch weighted by its
        ``N * L`` values), with Bessel's correction in ``'biased'`` mode. Returns
        ``None`` (statistics untouched) if no batch was seen.
        """
        pool, self._batch_average = self._batch_average, None
        if pool is None or pool.count == 0:
            return None
        with torch.no_grad():
            self.running_mean.copy_(pool.mean)
            self.running_var.copy_(self._running_variance(pool.variance, pool.count))
        return pool

    @property
    def batch_average(self) -> Optional[BatchAverage]:
        """The pool of an ongoing batch-average pass, or ``None``."""
        return self._batch_average

    # ------------------------------------------------------------ checkpoints
    def _adapt_state_dict(self, state_dict, prefix, local_metadata) -> None:
        version = local_metadata.get('version', None)
        if version is None or version < 2:  # the official SN layout
            self._reshape_official_layout(state_dict, prefix)

    def _state_dict_mismatch(self, state_dict, prefix) -> Optional[str]:
        logits = state_dict.get(prefix + 'mean_weight')
        expected = self.mean_weight.numel()
        if isinstance(logits, torch.Tensor) and logits.numel() != expected:
            count = logits.numel()
            if self.pool in pool_table.OFFICIAL_POOLS and count in (2, 3):
                file_using_bn = count == 3
                hint = (f'build it with using_bn={file_using_bn}, e.g. '
                        f'norm_cfg=dict(type=..., using_bn={file_using_bn})')
                names = list(pool_table.pool_of_logits(count))
            else:
                hint = 'build it with the branches the checkpoint was trained with'
                names = 'its branches'
            return (f'{prefix}mean_weight has {count} importance logits ({names}) but this '
                    f'layer was built with branches={list(self.pool)}, using_bn={self.using_bn} '
                    f'({expected} logits); {hint}')
        return None


class SyncSwitchableNorm(SyncLayer, SwitchableNorm):
    """SwitchableNorm whose BN-branch moments are synchronized across processes.

    Definition of "sync": in training, inside an initialized ``torch.distributed``
    run with more than one process in ``process_group`` (default: WORLD), the BN
    moments are those of the **union batch** of all ranks, every sample weighted
    equally (ranks may hold different batch sizes, including 0). Outputs, running
    statistics and every gradient then equal those of :class:`SwitchableNorm` applied
    to the concatenated batch (same spatial size on every rank). IN and LN moments
    are per sample and never communicated.

    Cost: per layer and iteration, one all-reduce in forward (every rank's row of
    ``2C + 2`` values: sample and value counts, mean, M2) and one of ``2C`` values
    in backward (the gradients w.r.t. the shared BN moments; see
    :mod:`sn_mm.ops.distributed`). A rank with an empty batch still joins both collectives, so peers
    never hang — as long as its output takes part in its loss (e.g. ``0 * y.sum()``),
    as for torch's SyncBatchNorm.

    In eval mode or outside a distributed run it is exactly :class:`SwitchableNorm`.
    Deliberately not a subclass of torch's ``_BatchNorm``: mmengine would silently
    replace it by ``SyncBatchNorm``/``BatchNorm``.

    Arguments: those of :class:`SwitchableNorm`, plus the keyword ``process_group``
    (:class:`~sn_mm.ops.layer_base.SyncLayer`).
    """

    def _bn_mode(self, x: torch.Tensor) -> Tuple[int, int]:
        world = sync_world_size(self.process_group)
        if world > 1 and self.__dict__.get('_sync_signature') != sync_signature(self, x):
            check_sync_layer(self, x)  # ranks agree? once per signature (ops.distributed)
        if not self.using_bn or not self.training or world == 1:
            return super()._bn_mode(x)
        # every rank joins the collectives, also with an empty batch
        return BN_SYNC, group_handle(self.process_group)
