"""Synthetic checkpoints in the official SN ImageNet layout (they cannot be downloaded here).

Layout (see docs/checkpoints.md): ``{'state_dict': ..., ['epoch', 'best_prec1',
'optimizer']}``, keys optionally prefixed ``module.``, ResNet-v1 names ``conv1``,
``sn1``, ``layer{1-4}.{i}.conv{1,2,3}`` / ``.sn{1,2,3}``, ``layer{k}.0.downsample.{0,1}``,
``fc``; per SN layer ``weight``/``bias`` (1,C,1,1), ``running_mean``/``running_var``
(1,C,1), ``mean_weight``/``var_weight`` (3,) — or (2,) and no running statistics
for ``using_bn=False`` ((8,1)) models. Also a torchvision-layout BN ResNet.
All values are seeded random numbers, distinct per tensor.
"""
from collections import OrderedDict

import torch

ARCH = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
        50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3))}


def resnet_layout(depth):
    """Yield ``(conv_name, out, in, k)`` and ``(norm_name, C)`` entries of a ResNet-v1."""
    kind, blocks = ARCH[depth]
    expansion = 4 if kind == 'bottleneck' else 1
    convs, norms = [('conv1', 64, 3, 7)], [('1', 64)]
    inplanes = 64
    for stage, num in enumerate(blocks):
        planes = 64 * 2 ** stage
        for i in range(num):
            base = f'layer{stage + 1}.{i}'
            if kind == 'bottleneck':
                shapes = [(planes, inplanes, 1), (planes, planes, 3),
                          (planes * 4, planes, 1)]
            else:
                shapes = [(planes, inplanes, 3), (planes, planes, 3)]
            for j, (out, inp, k) in enumerate(shapes, 1):
                convs.append((f'{base}.conv{j}', out, inp, k))
                norms.append((f'{base}.{j}', out))
            if i == 0 and (stage > 0 or inplanes != planes * expansion):
                convs.append((f'{base}.downsample.0', planes * expansion, inplanes, 1))
                norms.append((f'{base}.downsample.1', planes * expansion))
            inplanes = planes * expansion
    return convs, norms, inplanes


def _norm_name(entry, abbr):
    """'1' -> 'sn1'; 'layer1.0.2' -> 'layer1.0.sn2'; downsample names unchanged."""
    if '.downsample.' in entry:
        return entry
    head, _, idx = entry.rpartition('.')
    return f'{head}.{abbr}{idx}' if head else f'{abbr}{idx}'


def official_sn_state_dict(depth=50, using_bn=True, seed=0, module_prefix=True,
                           num_classes=1000, metadata=True):
    """An official-layout SN ResNet state dict (values random, seeded)."""
    gen = torch.Generator().manual_seed(seed)
    convs, norms, feat = resnet_layout(depth)
    sd = OrderedDict()
    for name, out, inp, k in convs:
        sd[f'{name}.weight'] = torch.randn(out, inp, k, k, generator=gen) * 0.05
    for entry, c in norms:
        name = _norm_name(entry, 'sn')
        sd[f'{name}.weight'] = torch.rand(1, c, 1, 1, generator=gen) + 0.5
        sd[f'{name}.bias'] = torch.randn(1, c, 1, 1, generator=gen) * 0.1
        n = 3 if using_bn else 2
        sd[f'{name}.mean_weight'] = torch.randn(n, generator=gen)
        sd[f'{name}.var_weight'] = torch.randn(n, generator=gen)
        if using_bn:
            sd[f'{name}.running_mean'] = torch.randn(1, c, 1, generator=gen) * 0.1
            sd[f'{name}.running_var'] = torch.rand(1, c, 1, generator=gen) + 0.5
    sd['fc.weight'] = torch.randn(num_classes, feat, generator=gen) * 0.01
    sd['fc.bias'] = torch.randn(num_classes, generator=gen) * 0.01
    prefix = 'module.' if module_prefix else ''
    out = OrderedDict((prefix + k, v) for k, v in sd.items())
    if metadata:  # torch >= 0.4 state_dicts carry per-module versions (SN: version 1)
        out._metadata = OrderedDict(
            (prefix + k.rpartition('.')[0], {'version': 1}) for k in sd)
    return out


def official_sn_checkpoint(depth=50, using_bn=True, seed=0, module_prefix=True,
                           extras=True):
    """``{'state_dict': ..., 'epoch', 'best_prec1', 'optimizer'}`` like the released files."""
    sd = official_sn_state_dict(depth, using_bn, seed, module_prefix)
    ckpt = {'state_dict': sd}
    if extras:
        params = list(range(len(sd)))
        ckpt.update(epoch=100, arch=f'resnet{depth}v1sn', best_prec1=torch.tensor(76.92),
                    optimizer={'state': {0: {'momentum_buffer': torch.zeros(3)}},
                               'param_groups': [{'lr': 0.0, 'momentum': 0.9,
                                                 'dampening': 0, 'weight_decay': 1e-4,
                                                 'nesterov': False, 'params': params}]})
    return ckpt


def torchvision_bn_state_dict(depth=50, seed=0):
    """A torchvision-layout BN ResNet state dict (``bn1``, ``layerK.i.bnJ``, ``fc``)."""
    gen = torch.Generator().manual_seed(seed)
    convs, norms, feat = resnet_layout(depth)
    sd = OrderedDict()
    for name, out, inp, k in convs:
        sd[f'{name}.weight'] = torch.randn(out, inp, k, k, generator=gen) * 0.05
    for entry, c in norms:
        name = _norm_name(entry, 'bn')
        sd[f'{name}.weight'] = torch.rand(c, generator=gen) + 0.5
        sd[f'{name}.bias'] = torch.randn(c, generator=gen) * 0.1
        sd[f'{name}.running_mean'] = torch.randn(c, generator=gen) * 0.1
        sd[f'{name}.running_var'] = torch.rand(c, generator=gen) + 0.5
        sd[f'{name}.num_batches_tracked'] = torch.tensor(12345)
    sd['fc.weight'] = torch.randn(1000, feat, generator=gen) * 0.01
    sd['fc.bias'] = torch.randn(1000, generator=gen) * 0.01
    return sd
