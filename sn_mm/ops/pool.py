r"""The normalizer pool of Switchable Normalization: one table that every consumer reads.

SN mixes the moments of several normalizers. Every normalizer in this table derives its
moments from the per-(sample, channel) *instance moments* of the input (``mean_in`` and
``u``, the IN variance as SN uses it: Bessel-corrected over the ``L`` spatial positions in
``'unbiased'`` mode), by pooling them over a set :math:`S(n, c)` of ``(n', c')`` entries:

.. math::
    \mu_k(n, c) = \mathrm{mean}_{S} \,\mu_{in}, \qquad
    v_k(n, c) = \mathrm{mean}_{S}\, u + \mathrm{mean}_{S} (\mu_{in} - \mu_k)^2 ,

the cancellation-free form of :math:`E[x^2] - E[x]^2` over the pooled entries. So the
full-size passes (moments, affine map) are the same for every branch; only the ``(N, C)``
step knows which sets are pooled. The sets:

======  ===========================================  =========  ============================
name    pools, for entry ``(n, c)``                  ``code``   notes
======  ===========================================  =========  ============================
``IN``  itself                                       0          :math:`v = u`
``LN``  every channel of sample ``n``                1
``BN``  every sample of channel ``c``                2          running statistics, SyncSN
``GN``  the ``C / G`` channels of ``c``'s group      3          ``num_groups = G``
======  ===========================================  =========  ============================

Bessel's correction: every branch is built from ``u``, so the correction is over the ``L``
positions of one row (the official SN rule), never over the pooled count; with
``in_variance='biased'`` each one-hot branch equals its torch layer (``InstanceNorm``,
``LayerNorm`` over ``(C, *spatial)``, ``GroupNorm``, ``BatchNorm`` in training).

A *pool* is an ordered tuple of names: the order of the importance logits
(``mean_weight``/``var_weight``) and of every table or figure of shares. SN's default
pool is ``('IN', 'LN', 'BN')`` (the official checkpoints' order); ``using_bn=False`` gives
``('IN', 'LN')`` (the official ``(8, 1)`` models). Adding a normalizer means adding a row
here and its pooling set in the two implementations of the ``(N, C)`` step
(:mod:`sn_mm.ops.reference` and ``csrc/sn_cpu.cpp``).
"""
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Normalizer:
    """One row of the pool table."""

    name: str
    code: int           #: its id in the ``pool`` argument of the ``sn_mm`` ops (and the C++)
    over_batch: bool    #: pools over samples: has running statistics, synchronized by SyncSN
    pooled: str         #: the entries pooled for ``(n, c)``, in words
    torch_layer: str    #: the torch layer a one-hot ``'biased'`` branch equals


NORMALIZERS = (
    Normalizer('IN', 0, False, 'the entry itself', 'nn.InstanceNorm2d(C, affine=True)'),
    Normalizer('LN', 1, False, 'every channel of the sample', 'nn.GroupNorm(1, C)'),
    Normalizer('BN', 2, True, 'every sample of the channel', 'nn.BatchNorm2d(C)'),
    Normalizer('GN', 3, False, "the C / num_groups channels of the channel's group",
               'nn.GroupNorm(num_groups, C)'),
)
BY_NAME = {n.name: n for n in NORMALIZERS}
NAMES = tuple(n.name for n in NORMALIZERS)

#: SN's default pool, the order of the official checkpoints' logits.
DEFAULT_POOL = ('IN', 'LN', 'BN')
#: Every pool an official SN checkpoint can have (3 logits, or 2 with ``using_bn=False``).
OFFICIAL_POOLS = (('IN', 'LN', 'BN'), ('IN', 'LN'))


def resolve_pool(branches: Optional[Sequence[str]], using_bn: bool = True,
                 owner: str = 'SwitchableNorm') -> Tuple[str, ...]:
    """The pool of a layer from its ``branches`` and ``using_bn`` options.

    ``branches=None`` gives the default pool, without ``'BN'`` when ``using_bn`` is False.
    An explicit ``branches`` must name at least two distinct normalizers of the table; it
    must contain ``'BN'`` exactly when ``using_bn`` is True.
    """
    if branches is None:
        return DEFAULT_POOL if using_bn else tuple(b for b in DEFAULT_POOL if b != 'BN')
    if isinstance(branches, str) or not isinstance(branches, Iterable):
        raise TypeError(f'{owner}: branches must be a sequence of normalizer names from '
                        f'{NAMES}, e.g. (\'IN\', \'LN\', \'BN\'), got {branches!r}')
    pool = tuple(branches)
    unknown = [b for b in pool if b not in BY_NAME]
    if unknown:
        raise ValueError(f'{owner}: unknown normalizer(s) {unknown} in branches={pool!r}; '
                         f'expected names from {NAMES}')
    if len(set(pool)) != len(pool) or len(pool) < 2:
        raise ValueError(f'{owner}: branches must name at least two distinct normalizers '
                         f'from {NAMES}, got {pool!r}')
    if ('BN' in pool) != bool(using_bn):
        raise ValueError(f'{owner}: branches={pool!r} and using_bn={using_bn!r} disagree: '
                         "the pool contains 'BN' exactly when using_bn=True")
    return pool


def codes(pool: Sequence[str]) -> List[int]:
    """The op's ``pool`` argument: the table codes of the names, in order."""
    return [BY_NAME[name].code for name in pool]


def uses_batch(pool: Sequence[str]) -> bool:
    """Whether the pool has a branch with batch statistics (running statistics, SyncSN)."""
    return any(BY_NAME[name].over_batch for name in pool)


def check_groups(pool: Sequence[str], num_features: int, num_groups: Optional[int],
                 owner: str = 'SwitchableNorm') -> int:
    """The validated ``num_groups`` of a pool (1 when it has no ``'GN'`` branch)."""
    if 'GN' not in pool:
        if num_groups not in (None, 1):
            raise ValueError(f'{owner}: num_groups={num_groups!r} is only used by a \'GN\' '
                             f'branch, and branches={tuple(pool)!r} has none')
        return 1
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
        raise ValueError(f'{owner}: a \'GN\' branch needs num_groups, a positive int, '
                         f'got {num_groups!r}')
    if num_features % num_groups:
        raise ValueError(f'{owner}({num_features}): num_groups={num_groups} must divide the '
                         f'{num_features} channels')
    return num_groups


def pool_of_logits(count: int) -> Tuple[str, ...]:
    """The official pool behind a checkpoint's ``count`` logits (3 or 2)."""
    for pool in OFFICIAL_POOLS:
        if len(pool) == count:
            return pool
    raise ValueError(f'an official SN layer has 3 or 2 importance logits, got {count}')
