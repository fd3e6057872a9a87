"""Depth order, stage and block of normalization layers named by their module path.

Conventions (ResNet as in mmdet/mmseg and the official SN checkpoints):

- ``sn1`` is the stem, ``layer{s}.{b}.sn{k}`` the k-th SN of block ``b`` of stage ``s``,
  ``layer{s}.0.downsample.1`` the SN on the block's shortcut (ordered after the block's
  own SNs), ``stem.{i}`` (ResNetV1d) the deep stem.
- Stages are path components ``layer{N}``/``stage{N}``/``res_layer{N}``/``res{N}``, or a
  container (``layers``, ``stages``, ``res_layers``, ``blocks``) followed by an index.
- The block is the stage plus the next numeric component (``layer1.0``).
- Names are compared component by component: numbers numerically; direct norm/stem
  components (``sn1``, ``sw1``, ``en1``, ``stem``, ``norm``) before stages and indices,
  which come before everything else (``downsample``, ``fc``, heads). OpenMMLab top-level
  parts are in model order (backbone, neck, heads); any other names keep their order of
  first appearance.
"""
import re
from typing import Dict, List, Sequence, Tuple

_STAGE_RE = re.compile(r'^(layer|stage|res_layer|res)(\d+)$')
_STAGE_CONTAINERS = ('layers', 'stages', 'res_layers', 'blocks')
_FIRST_RE = re.compile(r'^(stem|sn|sw|en|bn|gn|ln|in|norm|conv)(\d*)$')
_TOP_LEVEL = ('data_preprocessor', 'backbone', 'neck', 'rpn_head', 'roi_head', 'bbox_head',
              'mask_head', 'decode_head', 'auxiliary_head', 'head', 'cls_head')


def _component_key(part: str, first_seen: int) -> Tuple[int, int, int, str]:
    if part.isdigit():
        return (1, int(part), 0, '')
    match = _FIRST_RE.match(part)
    if match:
        return (0, int(match.group(2) or 0), 0, part)
    match = _STAGE_RE.match(part)
    if match:
        return (1, int(match.group(2)), 0, part)
    if part in _TOP_LEVEL:
        return (2, _TOP_LEVEL.index(part), 0, part)
    return (3, 0, first_seen, part)


def depth_order(names: Sequence[str]) -> List[str]:
    """``names`` sorted into depth order (see the module docstring); stable, no duplicates."""
    if len(set(names)) != len(names):
        dups = sorted({n for n in names if list(names).count(n) > 1})
        raise ValueError(f'duplicate layer names {dups}; expected unique module paths')
    first_seen: Dict[str, int] = {}
    for name in names:
        parts = name.split('.')
        for i in range(len(parts)):
            first_seen.setdefault('.'.join(parts[:i + 1]), len(first_seen))

    def key(name):
        parts = name.split('.')
        return tuple(_component_key(p, first_seen['.'.join(parts[:i + 1])])
                     for i, p in enumerate(parts))

    return sorted(names, key=key)


def _stage_end(parts: Sequence[str]) -> int:
    """Number of leading components forming the stage path, or 0 if there is none."""
    for i, part in enumerate(parts[:-1]):
        if _STAGE_RE.match(part):
            return i + 1
        if part in _STAGE_CONTAINERS and i + 1 < len(parts) - 1 and parts[i + 1].isdigit():
            return i + 2
    return 0


def stage_of(name: str, all_names: Sequence[str] = ()) -> str:
    """Stage path of a layer: ``layer1.0.sn1`` -> ``layer1``; ``sn1`` -> ``stem``.

    Without a stage component: a top-level layer is ``stem``; a layer under a part that
    holds stages elsewhere in ``all_names`` is ``<part>.stem`` (``backbone.sn1`` ->
    ``backbone.stem``); otherwise the top-level part (``neck``, ``decode_head``).
    """
    parts = name.split('.')
    end = _stage_end(parts)
    if end:
        return '.'.join(parts[:end])
    if len(parts) == 1:
        return 'stem'
    top = parts[0]
    for other in all_names:
        other_parts = other.split('.')
        if other_parts[0] == top and _stage_end(other_parts):
            return top + '.stem'
    return top


def block_of(name: str, all_names: Sequence[str] = ()) -> str:
    """Block path of a layer: ``layer1.0.downsample.1`` -> ``layer1.0``; else its stage."""
    parts = name.split('.')
    end = _stage_end(parts)
    if end and end < len(parts) - 1 and parts[end].isdigit():
        return '.'.join(parts[:end + 1])
    return stage_of(name, all_names)
