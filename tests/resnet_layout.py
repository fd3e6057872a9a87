"""The ResNet-50 v1 key layout of the SN and SW authors' ImageNet checkpoints (torchvision's
names: 7x7 stem ``conv1``, bottlenecks ``layer{i}.{j}.conv{1,2,3}``, ``downsample.{0,1}``,
``fc``), with random values, for tests that load such checkpoints.

Not a test module: tests call :func:`resnet50_state` with their own norm writer, since the
norm layers' names and tensors are what differ between the two authors' layouts.
"""
from typing import Callable

import torch


def resnet50_state(gen: torch.Generator, norm: Callable) -> dict:
    """``{key: tensor}`` of a ResNet-50 v1 (no ``module.`` prefix), drawn from ``gen``.

    Convolutions get ``weight`` only (``randn * 0.05``); after each one
    ``norm(state, parent, index, channels, stage, block)`` writes the norm layer's
    entries into ``state``: ``parent`` is ``''`` for the stem (``stage == 0``) and
    ``'layer{stage}.{block}'`` in a bottleneck; ``index`` is 1, 2, 3 after ``conv1..3``
    and ``'downsample'`` after ``downsample.0``. Draw order: stem conv, its norm, then per
    block conv1, norm, conv2, norm, conv3, norm, [downsample conv, norm], then ``fc``.
    """
    state = {}

    def conv(name, cin, cout, k):
        state[f'{name}.weight'] = torch.randn(cout, cin, k, k, generator=gen) * 0.05

    conv('conv1', 3, 64, 7)
    norm(state, '', 1, 64, 0, 0)
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for j in range(blocks):
            p = f'layer{i}.{j}'
            conv(f'{p}.conv1', inplanes, planes, 1)
            norm(state, p, 1, planes, i, j)
            conv(f'{p}.conv2', planes, planes, 3)
            norm(state, p, 2, planes, i, j)
            conv(f'{p}.conv3', planes, planes * 4, 1)
            norm(state, p, 3, planes * 4, i, j)
            if j == 0:
                conv(f'{p}.downsample.0', inplanes, planes * 4, 1)
                norm(state, p, 'downsample', planes * 4, i, j)
            inplanes = planes * 4
    state['fc.weight'] = torch.randn(1000, 2048, generator=gen)
    state['fc.bias'] = torch.randn(1000, generator=gen)
    return state


def norm_name(parent: str, index, kind: str) -> str:
    """The module name of a norm layer: ``{parent}.{kind}{index}`` (``{kind}1`` for the
    stem), ``{parent}.downsample.1`` after a downsampling convolution."""
    if index == 'downsample':
        return f'{parent}.downsample.1'
    return f'{parent}.{kind}{index}' if parent else f'{kind}{index}'
