"""Every override of an OpenMMLab component that ``import sn_mm`` makes, in one place.

Besides *adding* names to mmengine's root registries (the layers, ``FixedNormModel``, the
optimizer constructor and the hooks: all in :mod:`sn_mm.registry`), ``import sn_mm``
calls :func:`install`, which *replaces* two mmengine components, and nothing else:

1. **Checkpoint loaders** (``mmengine.runner.CheckpointLoader``, every scheme it knows:
   local paths, ``http(s)://``, ``torchvision://``/``modelzoo://``,
   ``open-mmlab://``/``openmmlab://``, ``mmcls://``, ``pavi://``, ``s3://``/``petrel://``),
   re-registered with mmengine's own extension point ``register_scheme(..., force=True)``
   by the loaders of :mod:`sn_mm.checkpoint`.

   Why: mmengine (0.10.7, the newest release, checked; every 0.10.x) calls
   ``torch.load(f, map_location=...)`` without ``weights_only``. torch 2.6 made
   ``weights_only=True`` the default, so on torch >= 2.6 mmengine refuses its own
   checkpoints (numpy scalars and ``HistoryBuffer`` in ``message_hub``): ``resume``,
   ``load_from`` and ``tools/test.py`` fail. sn_mm's loaders keep ``weights_only=True``
   and allow exactly what mmengine writes (``MMENGINE_SAFE_GLOBALS``).

   When: torch >= 2.6 (:func:`needs_safe_loaders`). On older torch nothing is replaced
   and mmengine loads as it always did; sn_mm's own readers
   (:func:`sn_mm.checkpoint.read_checkpoint`) use the safe loaders either way.

2. **``'Pretrained'`` in ``WEIGHT_INITIALIZERS``** (``init_cfg=dict(type='Pretrained')``),
   replaced (registry ``force=True``) by :class:`sn_mm.engine.pretrained.SNPretrainedInit`:
   mmengine's ``PretrainedInit`` plus checks, before anything is copied, that the SN
   layers of the checkpoint and of the model agree on the number of importance logits
   (one per branch of the layer's pool: 3 or 2 for ``using_bn``) and, for a module with SN layers, that the checkpoint holds every tensor of
   it (``partial=True`` allows partial loading). The file is read by
   :func:`sn_mm.checkpoint.read_checkpoint` (safe, verified).

   Why: ``PretrainedInit`` loads with ``strict=False`` and only logs size mismatches, so
   an official ``(8, 1)`` SN checkpoint in a ``using_bn=True`` model (or the reverse)
   would leave every SN layer at its initial values behind a log line.

   When: every mmengine version sn_mm supports (0.10.x: the behaviour above is
   unchanged up to 0.10.7). Loading itself, prefix handling and the key report stay
   mmengine's.

:func:`install` is idempotent and returns the names of what it replaced.
"""
from typing import List, Optional

import torch

__all__ = ['needs_safe_loaders', 'install', 'OVERRIDES']

#: What :func:`install` may replace, in the order above.
OVERRIDES = ('CheckpointLoader schemes', "WEIGHT_INITIALIZERS['Pretrained']")

#: The torch release that made ``torch.load(weights_only=True)`` the default.
WEIGHTS_ONLY_DEFAULT_SINCE = (2, 6)


def _release(version: str):
    """``'2.6.0+cpu'`` -> ``(2, 6)``; pre-releases count as their release."""
    parts = str(version).split('+')[0].split('.')
    try:
        return int(parts[0]), int(''.join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        raise ValueError(f'cannot read a torch version from {version!r}; expected '
                         '"MAJOR.MINOR[.PATCH]"') from None


def needs_safe_loaders(torch_version: Optional[str] = None) -> bool:
    """True when ``torch.load`` defaults to ``weights_only=True`` (torch >= 2.6)."""
    version = torch.__version__ if torch_version is None else torch_version
    return _release(version) >= WEIGHTS_ONLY_DEFAULT_SINCE


def _install_safe_loaders() -> None:
    import warnings

    from mmengine.runner.checkpoint import CheckpointLoader

    from .checkpoint import SCHEMES
    ours = set()
    for prefixes, loader in SCHEMES:
        CheckpointLoader.register_scheme(prefixes=prefixes, loader=loader, force=True)
        ours.update([prefixes] if isinstance(prefixes, str) else prefixes)
    unknown = sorted(set(CheckpointLoader._schemes) - ours)
    if unknown:
        warnings.warn(f'sn_mm.compat: mmengine has checkpoint schemes sn_mm does not cover '
                      f'({unknown}); they load as mmengine loads them')


def _install_pretrained() -> None:
    from mmengine.registry import WEIGHT_INITIALIZERS

    from .engine.pretrained import SNPretrainedInit
    WEIGHT_INITIALIZERS.register_module(name='Pretrained', module=SNPretrainedInit,
                                        force=True)


def install(torch_version: Optional[str] = None) -> List[str]:
    """Apply the overrides this torch version needs (see the module docstring).

    ``torch_version`` defaults to the running torch; returns what was replaced.
    """
    done = []
    if needs_safe_loaders(torch_version):
        _install_safe_loaders()
        done.append(OVERRIDES[0])
    _install_pretrained()
    done.append(OVERRIDES[1])
    return done
