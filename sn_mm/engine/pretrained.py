"""``init_cfg=dict(type='Pretrained', ...)``: strict for SN models, with an SN ``using_bn`` check.

mmengine's ``PretrainedInit`` loads with ``strict=False`` and only *logs* the error
messages of ``_load_from_state_dict``; an official ``(8, 1)`` SN checkpoint (2
importance logits [IN, LN], no running statistics) loaded into SN layers built
with ``using_bn=True`` (or the reverse) would leave every SN layer at its initial
values behind a warning. :class:`SNPretrainedInit` is mmengine's ``PretrainedInit``
plus one check before anything is copied: every SN layer of the module whose
``mean_weight``/``var_weight`` are in the checkpoint must have the same number of
logits (one per branch of its pool, ``layer.pool``), otherwise
:class:`SNCheckpointMismatchError` names the layers and the ``norm_cfg`` setting to use.

Strict by default for a module that holds SN layers: every tensor of the module
(``num_batches_tracked`` counters excepted; the SSN buffers ``radius``/``*_fixed``
when the file is an SN checkpoint, as SSN documents) must be in the checkpoint with
its shape, or :class:`~sn_mm.checkpoint.CheckpointCoverageError` lists what is missing
or mismatched, before anything is copied. A BN checkpoint, or one of another width,
no longer trains an SN backbone from random weights behind a log line. Extra keys
(an ImageNet ``fc``) are fine. ``partial=True`` restores mmengine's behaviour (load
what matches, log the rest). Modules without SN layers load as with mmengine.

:mod:`sn_mm.compat` puts it in place of ``'Pretrained'`` in mmengine's root
``WEIGHT_INITIALIZERS``. The file is read once, by :func:`sn_mm.checkpoint.read_checkpoint`
(safe loading, integrity checks, every URL scheme); the copy is mmengine's
``load_state_dict``.
"""
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from mmengine.runner.checkpoint import load_state_dict
from torch import nn

from ..checkpoint import check_model_coverage, read_checkpoint, strip_prefix, unwrap_state_dict
from ..ops import SwitchableNorm
from ..ops import pool as pool_table

__all__ = ['SNCheckpointMismatchError', 'check_sn_state_dict', 'SNPretrainedInit']


class SNCheckpointMismatchError(ValueError):
    """SN layers of a checkpoint and of the model disagree on ``using_bn``."""


def _describe(num_logits: int) -> str:
    """What a checkpoint's logit count means (:data:`sn_mm.ops.pool.OFFICIAL_POOLS`)."""
    for pool in pool_table.OFFICIAL_POOLS:
        if len(pool) != num_logits:
            continue
        names = f'{num_logits} importance logits [{", ".join(pool)}]'
        if pool_table.uses_batch(pool):
            return f'using_bn=True ({names} and BN running statistics)'
        return (f'using_bn=False ({names}, no running statistics: the official (8,1) '
                'models)')
    counts = ' or '.join(str(len(p)) for p in pool_table.OFFICIAL_POOLS)
    return (f'{num_logits} importance logits (not an official SN layout, which has '
            f'{counts}: another pool of sn_mm.ops.pool, or not SN logits)')


def check_sn_state_dict(module: nn.Module, state_dict: Mapping, source: str = 'checkpoint',
                        prefix: str = '') -> None:
    """Raise if an SN layer's logit count in ``state_dict`` doesn't match the layer's pool
    (``layer.pool``, one logit per branch: 3 for the default pool, 2 for ``using_bn=False``).

    ``state_dict`` keys are relative to ``module`` (``prefix`` + module names); layers
    absent from ``state_dict`` are not checked (they are reported as missing keys).
    """
    mismatched: Dict[Tuple[int, Tuple[str, ...], bool], List[str]] = OrderedDict()
    for name, layer in module.named_modules():
        if not isinstance(layer, SwitchableNorm):
            continue
        for param in ('mean_weight', 'var_weight'):
            value = state_dict.get(f'{prefix}{name}.{param}' if name else f'{prefix}{param}')
            if value is None or not hasattr(value, 'numel'):
                continue
            if value.numel() != getattr(layer, param).numel():
                mismatched.setdefault((value.numel(), tuple(layer.pool), layer.using_bn),
                                      []).append(name or '<root>')
                break
    if not mismatched:
        return
    lines = []
    official = {len(p): p for p in pool_table.OFFICIAL_POOLS}
    for (num_logits, built_pool, built_using_bn), names in mismatched.items():
        shown = ', '.join(names[:6]) + (f', ... ({len(names)} layers)' if len(names) > 6 else '')
        if num_logits in official and built_pool in pool_table.OFFICIAL_POOLS:
            file_using_bn = pool_table.uses_batch(official[num_logits])
            fix = (f'build them with using_bn={file_using_bn}, e.g. '
                   f"norm_cfg=dict(type='SN', using_bn={file_using_bn}) in the model "
                   '(model.backbone.norm_cfg for a detector/segmentor backbone)')
            built = f'using_bn={built_using_bn}'
        else:
            fix = ('build them with the branches the checkpoint was trained with, e.g. '
                   f"norm_cfg=dict(type='SN', branches=(...), num_groups=G) with "
                   f'{num_logits} names of sn_mm.ops.pool (or the file does not hold SN '
                   'importance logits for these layers)')
            built = f'branches={built_pool} ({len(built_pool)} logits)'
        lines.append(f'{source} has SN layers trained with {_describe(num_logits)}, but the '
                     f'model builds them with {built}: {shown}; {fix}.')
    raise SNCheckpointMismatchError('\n'.join(lines))


class SNPretrainedInit(PretrainedInit):
    """mmengine's ``PretrainedInit``, strict for SN modules (see module docstring).

    Args: as ``PretrainedInit``: ``checkpoint``, ``prefix=None``, ``map_location='cpu'``;
    ``partial`` (bool, default False): load what matches and log the rest (mmengine's
    behaviour) instead of raising when the checkpoint does not cover an SN module.
    """

    def __init__(self, checkpoint, prefix=None, map_location='cpu', partial=False):
        super().__init__(checkpoint, prefix=prefix, map_location=map_location)
        if not isinstance(partial, bool):
            raise TypeError(f"init_cfg=dict(type='Pretrained'): partial must be a bool (True "
                            f'or False), got {partial!r} ({type(partial).__name__})')
        self.partial = partial

    def __call__(self, module):
        checkpoint = read_checkpoint(self.checkpoint, map_location=self.map_location)
        state_dict = strip_prefix(unwrap_state_dict(checkpoint))
        if self.prefix is None:
            print_log(f'load model from: {self.checkpoint}', logger='current')
        else:
            print_log(f'load {self.prefix} in model from: {self.checkpoint}',
                      logger='current')
            prefix = self.prefix if self.prefix.endswith('.') else self.prefix + '.'
            state_dict = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                                     if k.startswith(prefix))
            if not state_dict:
                raise ValueError(f'{prefix} is not in the pretrained model {self.checkpoint}')
        check_sn_state_dict(module, state_dict, self.checkpoint)
        has_sn = any(isinstance(m, SwitchableNorm) for m in module.modules())
        if has_sn and not self.partial:
            covered = check_model_coverage(
                module, state_dict, self.checkpoint,
                what=f'{type(module).__name__} (a model with SN layers)',
                allow="set init_cfg=dict(type='Pretrained', checkpoint=..., partial=True)")
            print_log(f'loaded all {covered} tensors of {type(module).__name__} from '
                      f'{self.checkpoint}', logger='current')
        load_state_dict(module, state_dict, strict=False, logger='current')
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self):
        return super()._get_init_info() + (' (partial)' if self.partial else '')
