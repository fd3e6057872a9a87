"""``to_fixed_norms``: turn every SN/SSN layer of a model into plain, fixed layers.

Rules (eval-mode semantics; weights in the order [IN, LN, BN]; see
:mod:`sn_mm.deploy.fixed_norms` for the math):

- a vector of importance weights *chose* branch ``k`` when ``1 - w_k <= tol``
  (an SSN layer's sparsestmax weights are exactly one-hot; an SN layer's softmax never
  is, so SN layers need ``tol > 0`` and are then approximated — the report says by how
  much);
- mean and variance chose the same branch: BN -> ``nn.BatchNorm2d`` (running statistics),
  then folded into the preceding convolution where the model pairs them (see
  :func:`conv_norm_pairs`); IN -> :class:`~sn_mm.deploy.fixed_norms.SNInstanceNorm` (a
  ``nn.GroupNorm(C, C)``, Bessel-corrected in ``'unbiased'`` mode); LN ->
  ``nn.GroupNorm(1, C)``, in ``'unbiased'`` mode
  :class:`~sn_mm.deploy.fixed_norms.BesselLayerNorm` (all exact for every input size);
- anything else -> :class:`~sn_mm.deploy.fixed_norms.FixedMixtureNorm` with the chosen
  vectors one-hot and the others at their exact weights (no logits, no softmax).

Every replacement is described by a *spec* (a plain dict), so a model built from the
original config can be given the same structure again (:func:`apply_plan`) and load the
converted state dict: that is how ``tools/deploy_sn.py`` writes a config.
"""
import copy
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sn_mm.ops import SwitchableNorm
from sn_mm.deploy.fixed_norms import SNInstanceNorm, BesselLayerNorm, FixedMixtureNorm
from sn_mm.ops.pool import OFFICIAL_POOLS
from sn_mm.ops.sw_fold import fold_into_conv, to_grouped_conv
from sn_mm.ops.switchable_whitening import SwitchableWhitening



@dataclass
class LayerReport:
    """What one SN/SSN layer became."""

    name: str
    mean: Tuple[float, ...]
    var: Tuple[float, ...]
    spec: dict
    became: str
    folded_into: Optional[str] = None
    max_deviation: Optional[float] = None
    calls: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Conversion:
    """The result of :func:`to_fixed_norms`: the converted model and what happened."""

    model: nn.Module
    layers: List[LayerReport] = field(default_factory=list)

    @property
    def plan(self) -> dict:
        """The structure edits (``layers`` specs and ``conv_biases``) for :func:`apply_plan`."""
        return plan_of(self.layers)

    @property
    def max_deviation(self) -> Optional[float]:
        values = [r.max_deviation for r in self.layers if r.max_deviation is not None]
        return max(values) if values else None

    def format(self) -> str:
        return format_report(self.layers)


def choice_of(weights: Sequence[float], tol: float) -> Optional[int]:
    """The branch a weight vector chose (``1 - w_k <= tol``), or None."""
    best = max(range(len(weights)), key=lambda k: weights[k])
    return best if 1.0 - weights[best] <= tol else None


def spec_of(layer: SwitchableNorm, tol: float = 0.0) -> Tuple[dict, Tuple, Tuple]:
    """The replacement spec of an SN/SSN layer, and its (mean, var) weights as floats."""
    mean_w, var_w = (tuple(float(v) for v in w.double().cpu()) for w in layer.importance())
    c, eps, mode = layer.num_features, layer.eps, layer.in_variance
    m, v = choice_of(mean_w, tol), choice_of(var_w, tol)
    pool = layer.pool
    if m is not None and m == v:
        if pool[m] == 'BN':
            return dict(type='BatchNorm2d', num_features=c, eps=eps), mean_w, var_w
        if pool[m] == 'IN':
            return dict(type='SNInstanceNorm', num_channels=c, eps=eps, in_variance=mode), \
                mean_w, var_w
        if mode == 'biased':  # LN is GroupNorm(1, C); GN is GroupNorm(G, C)
            groups = 1 if pool[m] == 'LN' else layer.num_groups
            return dict(type='GroupNorm', num_groups=groups, num_channels=c, eps=eps), \
                mean_w, var_w
        if pool[m] == 'LN':
            return dict(type='BesselLayerNorm', num_features=c, eps=eps), mean_w, var_w

    def fixed(w, k):
        return [1.0 if i == k else 0.0 for i in range(len(w))] if k is not None else list(w)

    spec = dict(type='FixedMixtureNorm', num_features=c, mean_weights=fixed(mean_w, m),
                var_weights=fixed(var_w, v), eps=eps, in_variance=mode)
    if pool not in OFFICIAL_POOLS:
        spec.update(branches=list(pool), num_groups=layer.num_groups)
    return spec, mean_w, var_w


def sw_spec_of(layer: SwitchableWhitening) -> Tuple[dict, Tuple, Tuple]:
    """The replacement spec of an eval-mode SW layer that is a fixed per-group affine map
    (only batch branches weighted): a grouped 1x1 conv; and its (mean, cov) weights."""
    mean_w, var_w = (tuple(float(v) for v in w.double().cpu()) for w in layer.importance())
    if not layer.is_fixed_affine():
        raise ValueError(
            f'{type(layer).__name__} (sw_type={layer.sw_type}) weights its instance branches '
            f'(mean {mean_w}, covariance {var_w}), so its map depends on the sample and no '
            'fixed layer reproduces it; only SW whose instance weights are 0 (e.g. sw_type=1, '
            'batch whitening) converts')
    c = layer.num_features
    return dict(type='Conv2d', in_channels=c, out_channels=c, kernel_size=1,
                groups=layer.num_groups, bias=True), mean_w, var_w


_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    'BatchNorm2d': nn.BatchNorm2d, 'GroupNorm': nn.GroupNorm, 'Identity': nn.Identity,
    'Conv2d': nn.Conv2d,
    'SNInstanceNorm': SNInstanceNorm, 'BesselLayerNorm': BesselLayerNorm,
    'FixedMixtureNorm': FixedMixtureNorm}


def build_fixed(spec: dict) -> nn.Module:
    """Build the (untrained) module a spec describes."""
    spec = dict(spec)
    kind = spec.pop('type', None)
    if kind not in _BUILDERS:
        raise ValueError(f'unknown fixed-norm spec type {kind!r}; expected one of '
                         f'{sorted(_BUILDERS)}')
    return _BUILDERS[kind](**spec)


def describe(spec: dict) -> str:
    kind = spec['type']
    if kind == 'GroupNorm':
        return f"GroupNorm({spec['num_groups']}, {spec['num_channels']})"
    if kind == 'SNInstanceNorm':
        return f"SNInstanceNorm = GroupNorm({spec['num_channels']}, {spec['num_channels']}), " \
               f"{spec['in_variance']}"
    if kind == 'Conv2d':
        return f"grouped 1x1 Conv2d({spec['in_channels']}, groups={spec['groups']}) (SW)"
    if kind == 'FixedMixtureNorm':
        fmt = lambda w: '/'.join(f'{x:.3g}' for x in w)  # noqa: E731
        return f"FixedMixtureNorm(mean {fmt(spec['mean_weights'])}, var " \
               f"{fmt(spec['var_weights'])})"
    return kind


def _filled(layer: SwitchableNorm, spec: dict) -> nn.Module:
    new = build_fixed(spec).to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        new.bias.copy_(layer.bias)
        if hasattr(new, 'running_mean') and new.running_mean is not None:
            new.running_mean.copy_(layer.running_mean)
            new.running_var.copy_(layer.running_var)
    new.weight.requires_grad_(layer.weight.requires_grad)
    new.bias.requires_grad_(layer.bias.requires_grad)
    return new.train(layer.training)


# ------------------------------------------------------------------ conv/norm pairs
def conv_norm_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """``(conv, norm)`` submodule names where the model feeds the conv's output straight
    (and only) into the norm:

    - consecutive children of an ``nn.Sequential`` (ResNet ``downsample``, deep stems);
    - mmcv ``ConvModule`` (attributes ``conv``, ``norm_name``, ``order`` with ``'norm'``
      right after ``'conv'``; not with spectral norm);
    - mmdet/mmseg ResNet stems and blocks: ``conv{i}`` with ``norm{i}_name`` (``sn{i}``).

    Only plain ``nn.Conv2d`` convolutions (not transposed, deformable, ...) are returned.
    """
    pairs = []

    def join(prefix, name):
        return f'{prefix}.{name}' if prefix else name

    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (a, conv), (b, _) in zip(children, children[1:]):
                if _plain_conv(conv):
                    pairs.append((join(prefix, a), join(prefix, b)))
        if all(hasattr(module, a) for a in ('conv', 'norm_name', 'order')) \
                and not getattr(module, 'with_spectral_norm', False):
            order = list(module.order)
            if 'norm' in order and 'conv' in order and \
                    order.index('norm') == order.index('conv') + 1 and _plain_conv(module.conv):
                pairs.append((join(prefix, 'conv'), join(prefix, module.norm_name)))
        for i in (1, 2, 3):
            norm_name = getattr(module, f'norm{i}_name', None)
            conv = getattr(module, f'conv{i}', None)
            if isinstance(norm_name, str) and _plain_conv(conv):
                pairs.append((join(prefix, f'conv{i}'), join(prefix, norm_name)))
    return pairs


def _plain_conv(module) -> bool:
    return isinstance(module, nn.Conv2d) and not hasattr(module, 'weight_orig')


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``conv`` <- ``bn(conv(x))`` (eval-mode ``bn``), computed in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    new_bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype),
                                 requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))


# -------------------------------------------------------------------- conversion
class _Checker:
    """Forward hooks measuring, call by call, each replacement against the original layer
    (memory: one pending conv output at a time, not every layer's input).

    A folded pair compares the folded conv's output with the original SN's output on the
    original conv's output; it only counts as *direct* if the norm received exactly the
    conv's output tensor on every call.
    """

    def __init__(self, modules, replacements, folds):
        # replacements: name -> module; folds: norm name -> (conv name, folded conv)
        self.replacements, self.folds = replacements, folds
        self.deviation: Dict[str, Optional[float]] = {}
        self.calls: Dict[str, int] = {}
        self.direct = {norm: True for norm in folds}
        self.last_out, self.pending = {}, {}
        self.handles = []
        for name in replacements:
            self.deviation[name], self.calls[name] = None, 0
            self.handles.append(modules[name].register_forward_pre_hook(self._pre(name)))
            self.handles.append(modules[name].register_forward_hook(self._post(name)))
        for norm, (conv, folded) in folds.items():
            self.handles.append(modules[conv].register_forward_hook(self._conv(norm, folded)))

    def _conv(self, norm, folded):
        def hook(module, args, output):
            self.last_out[norm] = output
            self.pending[norm] = folded(args[0])
        return hook

    def _pre(self, name):
        def hook(module, args):
            if name in self.folds and self.last_out.pop(name, None) is not args[0]:
                self.direct[name] = False
        return hook

    def _post(self, name):
        def hook(module, args, output):
            if name in self.folds:
                new = self.pending.pop(name, None)
                if new is None or not self.direct[name]:
                    return
            else:
                new = self.replacements[name](args[0])
            self.calls[name] += 1
            dev = _max_dev([(output, new)])
            old = self.deviation[name]
            self.deviation[name] = dev if old is None else max(old, dev)
        return hook

    def close(self):
        for h in self.handles:
            h.remove()
        self.last_out.clear()
        self.pending.clear()


def check_no_exemplar_norm(modules: Dict[str, nn.Module]) -> None:
    """Raise if the model has Exemplar Normalization layers: they cannot be made fixed.

    EN's importance ratios are computed from each input by its ratio network, so no fixed
    layer (BN, IN, LN or a fixed mixture) reproduces it: the error names the layers.
    """
    from sn_mm.ops.exemplar_norm import ExemplarNorm
    found = [(n or '<root>', type(m).__name__) for n, m in modules.items()
             if isinstance(m, ExemplarNorm)]
    if found:
        shown = ', '.join(f'{n} ({t})' for n, t in found[:5])
        if len(found) > 5:
            shown += f', ... ({len(found)} layers)'
        raise ValueError(
            f'cannot convert Exemplar Normalization layer(s) {shown} '
            'to fixed layers: EN computes its importance ratios from every input (per '
            'sample), so no fixed normalizer reproduces it. Deploy the model as it is '
            '(it exports to ONNX), or train it with SN/SSN to deploy fixed layers.')


def to_fixed_norms(model: nn.Module, tol: float = 0.0,
                   forward: Optional[Callable[[nn.Module], object]] = None,
                   fold: bool = True, inplace: bool = False) -> Conversion:
    """Replace every SN/SSN layer of ``model`` by fixed layers (module docstring).

    Args:
        model: any ``nn.Module`` containing :class:`~sn_mm.ops.SwitchableNorm` layers.
        tol: a weight vector with ``1 - max(w) <= tol`` counts as one-hot (0: exact only).
        forward: ``forward(model)`` runs one batch through the model (no grad, eval mode
            is set here). With it, each layer's largest output deviation (converted vs
            original, on the inputs that reached it, call by call) is measured, and a
            conv/norm pair is folded only if the norm saw nothing but that conv's output.
        fold: fold BN choices into their convolution (:func:`conv_norm_pairs`).
        inplace: convert ``model`` itself (default: a deep copy).

    Returns:
        :class:`Conversion` with the converted model (eval mode) and one
        :class:`LayerReport` per layer, in module order.
    """
    if not (isinstance(tol, (int, float)) and 0.0 <= tol < 1.0):
        raise ValueError(f'tol must be a number in [0, 1), got {tol!r}')
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()  # the converted model is an inference model
    modules = dict(model.named_modules())
    check_no_exemplar_norm(modules)
    sn_names = [n for n, m in modules.items()
                if isinstance(m, (SwitchableNorm, SwitchableWhitening))]
    if not sn_names:
        raise ValueError(f'no SwitchableNorm / SSN / SW layer found in {type(model).__name__}')
    reports, replacements = {}, {}
    for name in sn_names:
        layer = modules[name]
        if isinstance(layer, SwitchableWhitening):
            try:
                spec, mean_w, var_w = sw_spec_of(layer)
            except ValueError as err:
                raise ValueError(f'layer {name!r}: {err}') from None
            replacements[name] = to_grouped_conv(layer).eval()
        else:
            spec, mean_w, var_w = spec_of(layer, tol)
            replacements[name] = _filled(layer, spec).eval()
        reports[name] = LayerReport(name, mean_w, var_w, spec, describe(spec))
    folds = {}  # norm -> (conv, the conv with the BN or SW map folded in)
    if fold:
        for conv_name, norm_name in conv_norm_pairs(model):
            new = replacements.get(norm_name)
            conv = modules[conv_name]
            used = {c for c, _ in folds.values()}
            if norm_name in folds or conv_name in used:
                continue
            if isinstance(new, nn.BatchNorm2d):
                folded = copy.deepcopy(conv)
                fold_bn_into_conv(folded, new)
                folds[norm_name] = (conv_name, folded)
            elif isinstance(modules[norm_name], SwitchableWhitening) and _plain_conv(conv) \
                    and conv.groups == 1:
                folds[norm_name] = (conv_name, fold_into_conv(conv, modules[norm_name]))
    checker = None
    if forward is not None:
        checker = _Checker(modules, replacements, folds)
        try:
            with torch.no_grad():
                forward(model)
        finally:
            checker.close()
        folds = {n: f for n, f in folds.items() if checker.direct[n]}
    for name in sn_names:
        report = reports[name]
        if name in folds:
            conv_name, folded = folds[name]
            model.set_submodule(conv_name, folded)
            model.set_submodule(name, nn.Identity())
            report.folded_into = conv_name
            kind = 'SW map' if report.spec['type'] == 'Conv2d' else 'BatchNorm2d'
            report.became = f'{kind} folded into {conv_name}'
        else:
            model.set_submodule(name, replacements[name])
        if checker is not None:
            report.max_deviation, report.calls = checker.deviation[name], checker.calls[name]
    return Conversion(model, [reports[n] for n in sn_names])


def _max_dev(pairs) -> Optional[float]:
    worst = None
    for a, b in pairs:
        d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        worst = d if worst is None else max(worst, d)
    return worst


def plan_of(layers: Sequence[LayerReport]) -> dict:
    """Structure edits: ``layers`` = [dict(name, spec)], ``conv_biases`` = [conv names]."""
    edits, biases = [], []
    for r in layers:
        if r.folded_into is not None:
            edits.append(dict(name=r.name, spec=dict(type='Identity')))
            biases.append(r.folded_into)
        else:
            edits.append(dict(name=r.name, spec=dict(r.spec)))
    return dict(layers=edits, conv_biases=biases)


def apply_plan(model: nn.Module, layers: Sequence[dict], conv_biases: Sequence[str] = ()
               ) -> nn.Module:
    """Give a freshly built model the converted structure (values come from a checkpoint).

    ``layers``: ``[dict(name=..., spec=...)]`` replacing SN/SSN layers; ``conv_biases``:
    convolutions that carry a folded BN and so need a bias parameter.
    """
    modules = dict(model.named_modules())
    for edit in layers:
        name = edit['name']
        old = modules.get(name)
        if not isinstance(old, (SwitchableNorm, SwitchableWhitening)):
            raise ValueError(f'plan names {name!r}, which is not an SN/SSN layer (nor SW) of '
                             f'{type(model).__name__} (found {type(old).__name__}); '
                             'is the config the one the model was converted from?')
        model.set_submodule(name, build_fixed(edit['spec']).to(old.weight.device))
    for name in conv_biases:
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f'plan folds a BN into {name!r}, which is not an nn.Conv2d '
                             f'(found {type(conv).__name__})')
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype,
                                                 device=conv.weight.device))
    return model


def format_report(layers: Sequence[LayerReport]) -> str:
    """A text table: layer, chosen shares, what it became, max deviation."""
    def fmt(w):
        return '/'.join(f'{x:.2f}' for x in w)

    width = max(len(r.name) for r in layers)
    lines = [f'{"layer":<{width}}  mean IN/LN/BN   var IN/LN/BN    became  (max |dev|)']
    for r in layers:
        dev = '-' if r.max_deviation is None else f'{r.max_deviation:.2e}'
        lines.append(f'{r.name:<{width}}  {fmt(r.mean):<15}  {fmt(r.var):<14}  '
                     f'{r.became}  ({dev})')
    counts: Dict[str, int] = {}
    for r in layers:
        key = ('SW (folded)' if r.spec['type'] == 'Conv2d' else 'BatchNorm2d (folded)') \
            if r.folded_into else r.spec['type']
        counts[key] = counts.get(key, 0) + 1
    lines.append('totals: ' + ', '.join(f'{k} {v}' for k, v in sorted(counts.items())))
    return '\n'.join(lines)
