r"""Exemplar Normalization: the distribution of the per-sample importance ratios.

EN's claim is that samples and categories choose different normalizers. This module
collects, over a dataset, the ``(mean, variance)`` weights every EN layer gives every
sample it normalizes (a forward hook per EN layer, which recomputes the layer's ratios
from its input with :meth:`~sn_mm.ops.exemplar_norm.ExemplarNorm.sample_ratios`: no
change to the model or its outputs) and summarizes them per layer: mean, standard
deviation and quantiles of each branch's weight over the samples, and, where the batch
carries labels, the mean weights per class.

A *sample* is a row of the layer's input: an image for backbone and neck layers, a RoI
for the RoI heads of a detector. Per-class statistics are kept only for calls whose
sample count equals the batch's number of images; an image counts for every class it
contains (detection: the classes of its boxes; segmentation: the classes of its pixels
except ``ignore_index``; classification: its label).
"""
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from ..ops.exemplar_norm import ExemplarNorm

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class LayerSamples:
    """Every sample's weights at one EN layer: ``(S, K)`` float64 tensors."""

    branches: Sequence[str]
    mean: List[torch.Tensor] = field(default_factory=list)
    var: List[torch.Tensor] = field(default_factory=list)
    labels: List[Optional[frozenset]] = field(default_factory=list)  # one per sample

    def weights(self, kind: str) -> torch.Tensor:
        rows = getattr(self, kind)
        return torch.cat(rows) if rows else torch.empty(0, len(self.branches),
                                                        dtype=torch.float64)


class ENRatioCollector:
    """Forward hooks on every EN layer of ``model`` recording per-sample ratios.

    Use as a context manager; call :meth:`next_batch` with the batch's per-image label
    sets (or ``None``) before each forward.
    """

    def __init__(self, model: nn.Module):
        self.layers: 'OrderedDict[str, LayerSamples]' = OrderedDict()
        self._handles = []
        self._labels: Optional[List[frozenset]] = None
        for name, module in model.named_modules():
            if isinstance(module, ExemplarNorm):
                self.layers[name] = LayerSamples(module.branches)
                self._handles.append(module.register_forward_hook(self._hook(name)))
        if not self.layers:
            raise ValueError(f'no Exemplar Normalization (EN/SyncEN) layer found in '
                             f'{type(model).__name__}')

    def _hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            mean_w, var_w = module.sample_ratios(inputs[0])
            record = self.layers[name]
            record.mean.append(mean_w.detach().double().cpu())
            record.var.append(var_w.detach().double().cpu())
            same = self._labels is not None and len(self._labels) == len(mean_w)
            record.labels.extend(self._labels if same else [None] * len(mean_w))
        return hook

    def next_batch(self, labels: Optional[Sequence[Iterable[int]]] = None) -> None:
        self._labels = None if labels is None else [frozenset(int(c) for c in s)
                                                    for s in labels]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def collect_en_ratios(model: nn.Module, batches: Iterable, forward: Callable,
                      labels_of: Optional[Callable] = None) -> 'OrderedDict[str, LayerSamples]':
    """Run ``forward(model, batch)`` over ``batches`` (no grad) and collect EN ratios.

    ``labels_of(batch)`` gives the per-image label sets of a batch (or ``None``).
    """
    with ENRatioCollector(model) as collector, torch.no_grad():
        for batch in batches:
            collector.next_batch(labels_of(batch) if labels_of is not None else None)
            forward(model, batch)
    return collector.layers


def _stats(w: torch.Tensor, quantiles: Sequence[float]) -> dict:
    if not len(w):
        return dict(mean=None, std=None, quantiles={})
    q = torch.quantile(w, torch.tensor(quantiles, dtype=w.dtype), dim=0)
    return dict(mean=w.mean(0).tolist(),
                std=(w.std(0, correction=0)).tolist(),
                quantiles={f'{p:g}': row.tolist() for p, row in zip(quantiles, q)})


def summarize_en_ratios(layers: 'OrderedDict[str, LayerSamples]',
                        quantiles: Sequence[float] = QUANTILES) -> 'OrderedDict[str, dict]':
    """Per layer: sample count, per-branch mean/std/quantiles of the mean and variance
    weights, and per class (images that contain it) the mean weights and counts."""
    out = OrderedDict()
    for name, rec in layers.items():
        mean_w, var_w = rec.weights('mean'), rec.weights('var')
        per_class: Dict[int, List[int]] = {}
        for i, labels in enumerate(rec.labels):
            for c in labels or ():
                per_class.setdefault(c, []).append(i)
        out[name] = dict(
            branches=list(rec.branches), samples=len(mean_w),
            mean=_stats(mean_w, quantiles), var=_stats(var_w, quantiles),
            per_class={c: dict(samples=len(idx), mean=mean_w[idx].mean(0).tolist(),
                               var=var_w[idx].mean(0).tolist())
                       for c, idx in sorted(per_class.items())})
    return out


def _fmt(values) -> str:
    return '/'.join(f'{v:.3f}' for v in values) if values is not None else '-'


def format_en_summary(summary: Dict[str, dict], class_names: Optional[Sequence[str]] = None,
                      max_classes: int = 10) -> str:
    """A text table: per layer the mean +- std and median of each branch's weights, then
    the per-class mean weights of the layers that have them (first ``max_classes``)."""
    if not summary:
        return '(no EN layer)'
    width = max(len(n) for n in summary)
    branches = '/'.join(next(iter(summary.values()))['branches'])
    lines = [f'{"layer":<{width}}  samples  mean w ({branches}) +- std          '
             f'median          var w mean']
    for name, s in summary.items():
        m = s['mean']
        lines.append(f'{name:<{width}}  {s["samples"]:>7}  {_fmt(m["mean"])} +- '
                     f'{_fmt(m["std"])}  {_fmt(m["quantiles"].get("0.5"))}  '
                     f'{_fmt(s["var"]["mean"])}')
    for name, s in summary.items():
        if not s['per_class']:
            continue
        lines.append(f'per class, {name} (mean weights {branches}; images):')
        for c, row in list(s['per_class'].items())[:max_classes]:
            label = class_names[c] if class_names is not None and c < len(class_names) else c
            lines.append(f'  {str(label):<16} {_fmt(row["mean"])}  ({row["samples"]})')
    return '\n'.join(lines)


def labels_of_batch(batch, ignore_index: int = 255) -> Optional[List[frozenset]]:
    """Per-image class sets of an mmdet/mmseg/mmpretrain batch, or ``None``."""
    samples = batch.get('data_samples') if isinstance(batch, dict) else None
    if not samples:
        return None
    labels = []
    for ds in samples:
        if hasattr(ds, 'gt_instances') and 'labels' in ds.gt_instances:
            labels.append(frozenset(ds.gt_instances.labels.tolist()))
        elif hasattr(ds, 'gt_sem_seg'):
            values = ds.gt_sem_seg.data.unique().tolist()
            labels.append(frozenset(v for v in values if v != ignore_index))
        elif hasattr(ds, 'gt_label'):
            labels.append(frozenset(torch.as_tensor(ds.gt_label).reshape(-1).tolist()))
        else:
            return None
    return labels


def run_en_ratios(config: str, checkpoint: str, max_batches: Optional[int] = None,
                  out: Optional[str] = None, quiet: bool = False,
                  cfg_options: Optional[dict] = None) -> 'OrderedDict[str, dict]':
    """EN ratio distribution of a trained mm model over its config's val set.

    Loads ``checkpoint`` into ``config``'s model (strict), runs ``test_step`` over the
    first ``max_batches`` batches of ``val_dataloader``, prints the summary and writes it
    to ``out`` (.json) if given.
    """
    import copy
    from itertools import islice

    from mmengine.runner import Runner

    from ..deploy.mm import load_model

    cfg, model = load_model(config, checkpoint, cfg_options)
    loader_cfg = copy.deepcopy(cfg.val_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg)
    batches = islice(loader, max_batches) if max_batches else loader
    layers = collect_en_ratios(model, batches, lambda m, b: m.test_step(b), labels_of_batch)
    summary = summarize_en_ratios(layers)
    classes = (getattr(loader.dataset, 'metainfo', None) or {}).get('classes')
    if not quiet:
        print(format_en_summary(summary, classes))
    if out:
        if not out.endswith('.json'):
            raise ValueError(f'--out must be a .json file for EN ratios, got {out!r}')
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, 'w') as f:
            json.dump(dict(config=config, checkpoint=checkpoint, classes=classes,
                           layers=summary), f, indent=1)
        print(f'EN ratio summary written to {out}')
    return summary
