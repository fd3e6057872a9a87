"""ONNX export of mmdet/mmseg models with SN, checked against onnxruntime (library of
``tools/export_onnx.py``).

What is exported (``part``):

- ``'tensor'``: ``model(x, mode='tensor')``, the whole network without post-processing.
  The default for an mmseg segmentor: the decode head's logits at the head's resolution
  (before the resize to the image and the argmax of ``predict``).
- ``'features'``: ``model.extract_feat(x)``, backbone + neck (FPN). The default for an
  mmdet detector: a two-stage detector's heads need NMS and RoIAlign (mmcv ops, data-
  dependent shapes), which standard ONNX ops do not express, so they are not exported.
- ``'backbone'``: ``model.backbone(x)`` only.

The input ``x`` is the batch after the model's data preprocessor (mean/std normalized,
padded), ``(batch, 3, H, W)``, float32; the graph has a static shape.

SN layers export in eval mode (running statistics for the BN branch) as plain ONNX ops:
while exporting, SN traces its torch reference (:mod:`sn_mm.ops.reference`) instead
of its custom op. SyncSN is reverted to SN first (and SyncBN to BN, as mmengine's Runner
does outside a distributed run): in eval mode they compute the same.

:func:`export_onnx` writes the file with ``torch.onnx.export(..., dynamo=True)``;
:func:`non_standard_domains` lists the node domains outside the default ONNX domain;
:func:`onnxruntime_outputs` and :func:`max_abs_deviation` compare onnxruntime with PyTorch;
:func:`export_and_check` chains them for a config and a checkpoint.
"""
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ['PARTS', 'DEFAULT_OPSET', 'ParityError', 'ExportReport', 'ExportedPart',
           'build_model', 'load_weights', 'default_part', 'random_input', 'export_onnx',
           'non_standard_domains', 'opset_version', 'onnxruntime_outputs',
           'max_abs_deviation', 'export_and_check']

PARTS = ('tensor', 'features', 'backbone')
#: torch 2.13's dynamo exporter implements opset 18 and newer (a lower request is converted
#: down by onnx's version converter, which fails on these models: the file stays at 18).
DEFAULT_OPSET = 18
#: What onnxruntime is checked on unless the caller chooses: one image, 3 channels.
DEFAULT_BATCH = 1
STANDARD_DOMAINS = ('', 'ai.onnx')


class ParityError(RuntimeError):
    """onnxruntime's outputs deviate from PyTorch's by more than the tolerance."""


@dataclass
class ExportReport:
    """What :func:`export_and_check` wrote and measured."""
    out: str
    part: str
    model_type: str
    opset: int
    input_shape: Tuple[int, ...]
    output_shapes: List[Tuple[int, ...]]
    op_types: List[str]
    max_abs_deviation: float
    max_abs_output: float
    tol: float
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """The lines ``tools/export_onnx.py`` prints."""
        lines = [f'Exported {self.part!r} of {self.model_type} to {self.out} '
                 f'(opset {self.opset}, standard ONNX ops only: {", ".join(self.op_types)})',
                 f'input {tuple(self.input_shape)} -> outputs '
                 f'{", ".join(str(tuple(s)) for s in self.output_shapes)}']
        lines += [f'note: {n}' for n in self.notes]
        lines.append(f'onnxruntime vs PyTorch: max abs deviation {self.max_abs_deviation:.3e} '
                     f'(tol {self.tol:.1e}; max |output| {self.max_abs_output:.3e})')
        return '\n'.join(lines)


# ----------------------------------------------------------------- the model
def build_model(cfg) -> nn.Module:
    """The model of ``cfg`` (an mmengine ``Config``) in eval mode, built in the config's
    ``default_scope`` ('mmdet' or 'mmseg'); SyncSN -> SN and SyncBN -> BN. No weights
    are initialized or loaded (see :func:`load_weights`)."""
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.registry import MODELS, DefaultScope

    import sn_mm  # noqa: F401  SN/SyncSN in the registries
    from sn_mm.ops import revert_sync_sn
    scope = cfg.get('default_scope', None)
    if scope is None:
        raise ValueError(f'config {cfg.filename!r} has no default_scope; expected an mmdet or '
                         "mmseg config (default_scope='mmdet' or 'mmseg')")
    if 'model' not in cfg:
        raise ValueError(f'config {cfg.filename!r} has no model')
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    model = revert_sync_sn(revert_sync_batchnorm(model))
    return model.eval()


def load_weights(model: nn.Module, checkpoint: str) -> nn.Module:
    """Load ``checkpoint`` (an mmengine checkpoint or a bare state dict, keys optionally
    prefixed ``module.``; a local path or any mmengine scheme) into ``model``, through
    sn_mm's safe reader. Every key must match (``num_batches_tracked`` may be missing):
    an export of partly random weights would pass the parity check and be useless."""
    from sn_mm.checkpoint import read_state_dict
    state_dict = read_state_dict(checkpoint)
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f'checkpoint {checkpoint!r} does not fit the model '
                         f'({type(model).__name__}): {error}') from None
    missing = [k for k in result.missing_keys if not k.endswith('num_batches_tracked')]
    problems = [f'{len(keys)} {what} keys (e.g. {", ".join(keys[:3])})'
                for what, keys in (('missing', missing), ('unexpected', result.unexpected_keys))
                if keys]
    if problems:
        raise ValueError(f'checkpoint {checkpoint!r} does not fit the model '
                         f'({type(model).__name__}): {"; ".join(problems)}')
    return model


def default_part(model: nn.Module) -> str:
    """``'tensor'`` for an mmseg segmentor, ``'features'`` for an mmdet detector."""
    try:
        from mmseg.models.segmentors import BaseSegmentor
        if isinstance(model, BaseSegmentor):
            return 'tensor'
    except ImportError:
        pass
    try:
        from mmdet.models.detectors import BaseDetector
        if isinstance(model, BaseDetector):
            return 'features'
    except ImportError:
        pass
    raise ValueError(f'no default part for a {type(model).__name__}: expected an mmseg '
                     f'segmentor or an mmdet detector; choose part from {PARTS}')


class ExportedPart(nn.Module):
    """One tensor in, the flat tuple of the output tensors of ``part`` of ``model`` out."""

    def __init__(self, model: nn.Module, part: str):
        super().__init__()
        if part not in PARTS:
            raise ValueError(f'part must be one of {PARTS}, got {part!r}')
        if part == 'backbone' and not isinstance(getattr(model, 'backbone', None), nn.Module):
            raise ValueError(f"part 'backbone': {type(model).__name__} has no backbone")
        if part == 'features' and not hasattr(model, 'extract_feat'):
            raise ValueError(f"part 'features': {type(model).__name__} has no extract_feat")
        self.model, self.part = model, part

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if self.part == 'backbone':
            out = self.model.backbone(x)
        elif self.part == 'features':
            out = self.model.extract_feat(x)
        else:
            out = self.model(x, None, mode='tensor')
        return tuple(_flatten(out))


def _flatten(out) -> List[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten(item)]
    if isinstance(out, dict):
        return [t for key in sorted(out) for t in _flatten(out[key])]
    raise TypeError(f'cannot export an output of type {type(out).__name__}; expected '
                    'tensors in lists, tuples or dicts')


def random_input(shape: Sequence[int], batch: int = DEFAULT_BATCH, channels: int = 3,
                 seed: int = 0) -> Tensor:
    """A standard-normal ``(batch, channels, H, W)`` float32 batch (normalized images).

    ``shape`` is ``(H, W)``, positive ints."""
    shape = tuple(shape)
    if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f'shape must be two positive ints (H, W), got {shape!r}')
    for name, value in (('batch', batch), ('channels', channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be an int >= 1, got {value!r}')
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *shape, generator=gen)


# ------------------------------------------------------------------ ONNX
def export_onnx(module: nn.Module, x: Tensor, out: str, opset: int = DEFAULT_OPSET) -> str:
    """``torch.onnx.export(module, (x,), dynamo=True, opset_version=opset)`` to ``out``
    (``module`` in eval mode, no gradients). Returns ``out``."""
    if not isinstance(opset, int) or opset < 17:
        raise ValueError(f'opset must be an int >= 17, got {opset!r}')
    directory = osp.dirname(osp.abspath(out))
    if not osp.isdir(directory):
        raise FileNotFoundError(f'output directory {directory!r} of {out!r} does not exist')
    module.eval()
    with torch.no_grad():
        program = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset,
                                    input_names=['input'], verbose=False)
    program.save(out)
    return out


def _graph_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:  # If/Loop/Scan bodies
            for sub in ([attr.g] if attr.HasField('g') else []) + list(attr.graphs):
                yield from _graph_nodes(sub)


def non_standard_domains(model_proto) -> Dict[str, List[str]]:
    """``{domain: [op types]}`` of the nodes outside the default ONNX domain (empty: the
    graph uses standard ONNX ops only); nodes of local functions included."""
    found: Dict[str, set] = {}
    graphs = [model_proto.graph] + [f for f in model_proto.functions]
    for graph in graphs:
        for node in _graph_nodes(graph):
            if node.domain not in STANDARD_DOMAINS:
                found.setdefault(node.domain, set()).add(node.op_type)
    return {domain: sorted(ops) for domain, ops in found.items()}


def opset_version(model_proto) -> int:
    """The default-domain opset the file declares."""
    versions = [o.version for o in model_proto.opset_import if o.domain in STANDARD_DOMAINS]
    if not versions:
        raise ValueError('the ONNX model declares no default-domain opset')
    return max(versions)


def onnxruntime_outputs(path: str, x: Tensor) -> List[Tensor]:
    """Run the ONNX file ``path`` on ``x`` with onnxruntime's CPU provider."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f'{path}: expected one graph input, found {[i.name for i in inputs]}')
    return [torch.from_numpy(o) for o in session.run(None, {inputs[0].name: x.numpy()})]


def max_abs_deviation(actual: Sequence[Tensor], expected: Sequence[Tensor]) -> float:
    """Max abs difference over all outputs; their number and shapes must agree."""
    if len(actual) != len(expected):
        raise ValueError(f'{len(actual)} outputs, expected {len(expected)}')
    deviation = 0.0
    for i, (a, e) in enumerate(zip(actual, expected)):
        if tuple(a.shape) != tuple(e.shape):
            raise ValueError(f'output {i}: shape {tuple(a.shape)}, expected {tuple(e.shape)}')
        if a.numel():
            deviation = max(deviation, (a.double() - e.double()).abs().max().item())
    return deviation


def export_and_check(config: str, checkpoint: str, out: str,
                     shape: Optional[Sequence[int]] = None, opset: int = DEFAULT_OPSET,
                     part: Optional[str] = None, cfg_options: Optional[dict] = None,
                     tol: float = 1e-4, batch: int = DEFAULT_BATCH) -> ExportReport:
    """Build ``config``'s model, load ``checkpoint``, export ``part`` to ``out`` and compare
    onnxruntime with PyTorch on a random input of ``shape`` (``(H, W)``; default: the data
    preprocessor's ``size``, else 800 x 1344).

    Raises ``FileNotFoundError``/``ValueError`` naming a bad argument, ``ValueError`` for a
    graph with non-standard ops, and :class:`ParityError` (after writing ``out``) when the
    max abs deviation exceeds ``tol``.
    """
    import onnx
    from mmengine.config import Config
    for name, path in (('config', config), ('checkpoint', checkpoint)):
        if '://' not in path and not osp.isfile(path):
            raise FileNotFoundError(f'{name} {path!r} does not exist (or is not a file)')
    if not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f'tol must be a number >= 0, got {tol!r}')
    if part is not None and part not in PARTS:
        raise ValueError(f'part must be one of {PARTS}, got {part!r}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if shape is None:
        shape = tuple(cfg.model.get('data_preprocessor', {}).get('size') or (800, 1344))
    x = random_input(shape, batch)  # validates shape and batch before the slow steps
    model = load_weights(build_model(cfg), checkpoint)
    part = part or default_part(model)
    module = ExportedPart(model, part).eval()
    with torch.no_grad():
        expected = module(x)
    export_onnx(module, x, out, opset)
    proto = onnx.load(out)
    foreign = non_standard_domains(proto)
    if foreign:
        raise ValueError(f'{out}: the graph uses ops outside the standard ONNX domain: '
                         f'{foreign}')
    written = opset_version(proto)
    notes = []
    if written != opset:
        notes.append(f'requested opset {opset}, the exporter wrote opset {written} (torch\'s '
                     'dynamo exporter implements opset 18 and newer; the down-conversion failed)')
    actual = onnxruntime_outputs(out, x)
    deviation = max_abs_deviation(actual, expected)
    report = ExportReport(
        out=os.fspath(out), part=part, model_type=type(model).__name__, opset=written,
        input_shape=tuple(x.shape), output_shapes=[tuple(e.shape) for e in expected],
        op_types=sorted({n.op_type for n in _graph_nodes(proto.graph)}),
        max_abs_deviation=deviation,
        max_abs_output=max(e.abs().max().item() for e in expected if e.numel()), tol=tol,
        notes=notes)
    if not deviation <= tol:
        raise ParityError(f'{report.summary()}\nFAILED: onnxruntime deviates from PyTorch by '
                          f'{deviation:.3e} > tol {tol:.1e}; {out} was written but does not '
                          'reproduce the PyTorch model to that tolerance')
    return report
