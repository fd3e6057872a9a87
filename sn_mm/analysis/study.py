"""Small-scale study of what SN layers learn, on scikit-learn's bundled ``load_digits``.

Run it with ``python tools/study.py`` (``make study``); :func:`run_study` is the whole
study, the other functions its parts (model, training, sweep plan, statistics, figures,
report). See docs/analysis.md.

Data: the 1797 8x8 grey digits of ``sklearn.datasets.load_digits`` (bundled, no
download); a fixed split of 1297 training and 500 test images, pixels scaled to [0, 1]
and standardized with the training mean and std.

Model: a ResNet-style ConvNet named like mmdet's ResNet: stem ``conv1``/``sn1`` (width
16, 8x8), ``layer1`` (``depth`` BasicBlocks, 16 channels, 8x8), ``layer2`` (``depth``
BasicBlocks, 32 channels, 4x4, ``layer2.0.downsample.1``), global average pool, linear.
Every normalization layer is ``sn_mm.ops.SwitchableNorm`` (or BN / IN / LN / GN for the
comparison: ``BatchNorm2d``, ``InstanceNorm2d(affine=True)``, ``GroupNorm(1, C)``,
``GroupNorm(4, C)``).

Per-device batch size ``b``: every step takes a batch of ``--total-batch`` (32) images and
normalizes them in ``32 / b`` independent chunks of ``b`` ("devices" without synchronized
statistics; gradients summed as data parallel training does). The optimization (steps,
learning rate, total batch) is therefore identical for every ``b``: only the batch that the
BN statistics see changes — the quantity the paper varies.

Training: ``--epochs`` epochs (default 4, 40 steps each), SGD (momentum 0.9, lr 0.05) or
Adam (lr 2e-3), cosine / step (x0.1 at 50% and 75%) / constant schedule; weight decay 1e-4
on conv and linear weights only (none on norm parameters, as the official detection and
segmentation code). The SN logits get ``--logit-lr-mult`` (default 10) times the learning
rate: the paper uses the same rate, but over ~500k ImageNet steps; in 160 steps the logits
hardly move at 1x (the sweep includes ``logit_lr_mult=1`` to show it). Initialization:
``kaiming`` (He normal, fan_out) or ``xavier`` conv weights with the SN logits at 1
(shares 1/3), or kaiming with the logits starting at [0, 0, 1] (``bn-start``: BN share
0.58) or [1, 0, 0] (``in-start``).

Sweeps:
- accuracy (``--seeds``, default 0 1 2): SN and BN at every per-device batch size; IN, LN
  and GN once (per-sample normalizers: identical training for every batch size here);
- factors (SN only, the first ``--factor-seeds`` seeds, default 1), at the smallest and
  largest batch size, one factor changed at a time from the baseline (depth 1, kaiming,
  cosine, SGD, per-layer ratios, logit lr x10): depth 2, init xavier / bn-start /
  in-start, schedule step / constant, solver Adam, one set of ratios shared by all layers
  (``ratios=shared``: the ablation for question (a)), logit lr x1.

Outputs in ``--out``: ``results.json`` (every run: settings, test accuracy, per-layer
shares, per-epoch average shares), ``report.md`` (tables and the answers to the paper's
questions (a) and (b), computed from the numbers), ``accuracy.png``, ``shares.png`` and
``layers.png`` (per-layer ratios at the smallest vs largest batch size).
"""
import json
import math
import os
import statistics
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import BRANCHES, SwitchableNorm
from .plot import COLORS, new_figure, plot_ratios
from .ratios import LayerRatios, average_shares, ratios_from_model

NORMS = ('SN', 'BN', 'IN', 'LN', 'GN')
# Normalize each sample on its own: with the total batch fixed, training is the same for
# every per-device batch size (only the chunking differs), so they are trained once.
PER_SAMPLE_NORMS = ('IN', 'LN', 'GN')
INITS = ('kaiming', 'xavier', 'bn-start', 'in-start')
SCHEDULES = ('cosine', 'step', 'constant')
SOLVERS = ('sgd', 'adam')
RATIOS = ('per-layer', 'shared')
BASE = OrderedDict(norm='SN', depth=1, init='kaiming', schedule='cosine', solver='sgd',
                   ratios='per-layer', logit_lr_mult=10.0)
# one factor at a time, SN only, at the smallest and largest per-device batch size
VARIANTS = OrderedDict(depth=(2,), init=INITS[1:], schedule=SCHEDULES[1:], solver=SOLVERS[1:],
                       ratios=RATIOS[1:], logit_lr_mult=(1.0,))
#: ``--quick``: a smoke run whose every step takes well under a minute.
QUICK = dict(batch_sizes=(2, 8), seeds=(0,), epochs=1, num_train=192, quick=True)
QUICK_VARIANTS = OrderedDict(depth=(2,), init=('bn-start',), schedule=('step',),
                             solver=('adam',), ratios=('shared',), logit_lr_mult=(1.0,))
# Learned shares averaged over the layers of ResNet-50 on ImageNet (paper, (8, b)).
PAPER_SHARES = OrderedDict([(32, dict(BN=0.58, IN=0.16, LN=0.25)),
                            (8, dict(BN=0.40, IN=0.21, LN=0.39)),
                            (2, dict(BN=0.14, IN=0.30, LN=0.55))])

# ----------------------------------------------------------------------------- data
def load_data(num_train=None, seed=0):
    """(x_train, y_train, x_test, y_test); fixed split of 500 test images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError('the SN study needs scikit-learn (pip install scikit-learn)') from None
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:500], perm[500:]
    if num_train is not None:
        train = train[:num_train]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


# ---------------------------------------------------------------------------- model
def make_norm(kind, channels):
    if kind == 'SN':
        return SwitchableNorm(channels)
    if kind == 'BN':
        return nn.BatchNorm2d(channels)
    if kind == 'IN':
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == 'LN':
        return nn.GroupNorm(1, channels)
    if kind == 'GN':
        return nn.GroupNorm(4, channels)
    raise ValueError(f'unknown norm {kind!r}; expected one of {NORMS}')


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.sn1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.sn2 = make_norm(norm, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            make_norm(norm, cout))

    def forward(self, x):
        out = F.relu(self.sn1(self.conv1(x)))
        out = self.sn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class DigitsNet(nn.Module):
    """Stem + two stages of ``depth`` BasicBlocks (16 ch at 8x8, 32 ch at 4x4) + linear."""

    def __init__(self, norm='SN', depth=1, width=16, ratios='per-layer'):
        super().__init__()
        if ratios not in RATIOS:
            raise ValueError(f'unknown ratios mode {ratios!r}; expected one of {RATIOS}')
        if depth < 1:
            raise ValueError(f'depth must be >= 1 block per stage, got {depth}')
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.sn1 = make_norm(norm, width)
        self.layer1 = nn.Sequential(*[BasicBlock(width, width, 1, norm) for _ in range(depth)])
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2, norm), *[
            BasicBlock(2 * width, 2 * width, 1, norm) for _ in range(depth - 1)])
        self.fc = nn.Linear(2 * width, 10)
        if ratios == 'shared':  # one set of SN logits for every layer (ablation of (a))
            sns = [m for m in self.modules() if isinstance(m, SwitchableNorm)]
            for m in sns[1:]:
                m.mean_weight, m.var_weight = sns[0].mean_weight, sns[0].var_weight

    def forward(self, x):
        x = F.relu(self.sn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean((2, 3)))


def initialize(model, init):
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if init == 'xavier':
                nn.init.xavier_normal_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(module, SwitchableNorm) and init in ('bn-start', 'in-start'):
            logits = [0.0, 0.0, 1.0] if init == 'bn-start' else [1.0, 0.0, 0.0]
            with torch.no_grad():
                module.mean_weight.copy_(torch.tensor(logits))
                module.var_weight.copy_(torch.tensor(logits))
    if init not in INITS:
        raise ValueError(f'unknown init {init!r}; expected one of {INITS}')


# ------------------------------------------------------------------------- training
def make_optimizer(model, solver, lr=None, logit_lr_mult=1.0):
    """Conv/linear weights with weight decay 1e-4; the rest without; SN logits at
    ``logit_lr_mult`` times the learning rate."""
    decay, no_decay, logits, seen = [], [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # shared SN logits
                continue
            seen.add(id(param))
            if name in ('mean_weight', 'var_weight'):
                logits.append(param)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and name == 'weight':
                decay.append(param)
            else:
                no_decay.append(param)
    lr = lr or (0.05 if solver == 'sgd' else 2e-3)
    groups = [dict(params=decay, weight_decay=1e-4), dict(params=no_decay, weight_decay=0.0)]
    if logits:
        groups.append(dict(params=logits, weight_decay=0.0, lr=lr * logit_lr_mult))
    if solver == 'sgd':
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if solver == 'adam':
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f'unknown solver {solver!r}; expected one of {SOLVERS}')


def lr_factor(schedule, progress):
    """Multiplier of the base lr at training progress in [0, 1)."""
    if schedule == 'cosine':
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == 'step':
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    if schedule == 'constant':
        return 1.0
    raise ValueError(f'unknown schedule {schedule!r}; expected one of {SCHEDULES}')


def sn_shares(model):
    layers = ratios_from_model(model)
    return layers, average_shares(layers)


def run_one(cfg, data, epochs, total_batch):
    """Train one configuration; returns a result dict (settings, accuracy, shares)."""
    torch.manual_seed(cfg['seed'])
    x_train, y_train, x_test, y_test = data
    model = DigitsNet(cfg['norm'], cfg['depth'], ratios=cfg['ratios'])
    initialize(model, cfg['init'])
    optimizer = make_optimizer(model, cfg['solver'], logit_lr_mult=cfg['logit_lr_mult'])
    base_lrs = [g['lr'] for g in optimizer.param_groups]
    steps_per_epoch = len(x_train) // total_batch
    if steps_per_epoch < 1:
        raise ValueError(f'{len(x_train)} training images < total batch {total_batch}')
    total_steps, step = epochs * steps_per_epoch, 0
    generator = torch.Generator().manual_seed(cfg['seed'])
    history = []
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(steps_per_epoch):
            for group, base in zip(optimizer.param_groups, base_lrs):
                group['lr'] = base * lr_factor(cfg['schedule'], step / total_steps)
            idx = order[i * total_batch:(i + 1) * total_batch]
            xb, yb = x_train[idx], y_train[idx]
            # per-device normalization: each chunk of `batch` images is one forward
            loss = sum(F.cross_entropy(model(xc), yc, reduction='sum')
                       for xc, yc in zip(xb.split(cfg['batch']), yb.split(cfg['batch'])))
            optimizer.zero_grad(set_to_none=True)
            (loss / len(xb)).backward()
            optimizer.step()
            step += 1
        if cfg['norm'] == 'SN':
            history.append({k: list(v) for k, v in sn_shares(model)[1].items()})
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
    result = dict(cfg, accuracy=float((logits.argmax(1) == y_test).float().mean()),
                  final_loss=float(loss.detach()) / len(xb), seconds=time.perf_counter() - start)
    if cfg['norm'] == 'SN':
        layers, avg = sn_shares(model)
        result['average'] = {k: list(v) for k, v in avg.items()}
        result['layers'] = [layer.to_dict() for layer in layers]
        result['history'] = history
    return result


# --------------------------------------------------------------------------- sweeps
def plan(batch_sizes, seeds, factor_seeds, quick, base=BASE):
    """Run configurations: accuracy sweep (every norm and batch size, ``seeds``), then the
    one-factor-at-a-time SN sweeps at the smallest and largest batch size
    (``factor_seeds``; the baseline runs they are compared with are in the first sweep)."""
    runs = []

    def add(seed_list, **over):
        for seed in seed_list:
            cfg = dict(base, **over, seed=seed)
            if cfg not in runs:
                runs.append(cfg)

    norms = ('SN', 'BN', 'GN') if quick else NORMS
    for batch in batch_sizes:
        for norm in norms:
            if norm not in PER_SAMPLE_NORMS or batch == max(batch_sizes):
                add(seeds, norm=norm, batch=batch)
    for factor, values in (QUICK_VARIANTS if quick else VARIANTS).items():
        for value in values:
            for batch in sorted({min(batch_sizes), max(batch_sizes)}):
                add(factor_seeds, batch=batch, **{factor: value})
    return runs


def _cost(cfg):
    """Rough relative cost: forwards per epoch times normalization layers (SN ~5x)."""
    return (1.0 / cfg['batch']) * (4 * cfg['depth'] + 2) * (5 if cfg['norm'] == 'SN' else 1)


def _work(args):
    index, cfg, data_args, epochs, total_batch, threads = args
    torch.set_num_threads(threads)
    return index, run_one(cfg, load_data(*data_args), epochs, total_batch)


def execute(runs, data_args, epochs, total_batch, workers, threads, log=print):
    """Train every run (in ``workers`` processes, most expensive first); plan order kept."""
    results = [None] * len(runs)
    if workers <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            data = load_data(*data_args)
            for i, cfg in enumerate(runs):
                results[i] = run_one(cfg, data, epochs, total_batch)
                log(_progress(i, len(runs), results[i]))
        finally:
            torch.set_num_threads(previous)
        return results
    import multiprocessing as mp
    order = sorted(range(len(runs)), key=lambda i: -_cost(runs[i]))
    jobs = [(i, runs[i], data_args, epochs, total_batch, threads) for i in order]
    with mp.get_context('spawn').Pool(workers) as pool:
        for done, (i, result) in enumerate(pool.imap_unordered(_work, jobs)):
            results[i] = result
            log(_progress(done, len(runs), result))
    return results


def _progress(i, n, r):
    shares = ''
    if 'average' in r:
        shares = ' IN/LN/BN ' + '/'.join(f'{v:.2f}' for v in r['average']['both'])
    setting = ' '.join(f'{k}={r[k]}' for k in ('norm', 'batch', 'depth', 'init', 'schedule',
                                                   'solver', 'ratios', 'logit_lr_mult', 'seed'))
    return f'[{i + 1}/{n}] {setting}: acc {r["accuracy"]:.4f}{shares} ({r["seconds"]:.1f} s)'


# -------------------------------------------------------------------------- analysis
def _select(results, **match):
    return [r for r in results if all(r[k] == v for k, v in match.items())]


def _mean_std(values):
    values = list(values)
    if not values:
        return (float('nan'), float('nan'))
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def _both(layer, k):
    return (layer['mean'][k] + layer['var'][k]) / 2


def _range(values):
    values = [v for v in values if not math.isnan(v)]
    return max(values) - min(values) if len(values) > 1 else float('nan')


def summarize(results, batch_sizes, base=BASE):
    """Every number of the report (means and stds over seeds).

    - ``acc[norm][b]``: test accuracy, baseline settings;
    - ``shares[b]['{mean,var,both}_{IN,LN,BN}']``: shares averaged over layers (SN);
    - ``stages[b][stage]``: (IN, LN, BN) shares (mean and variance averaged) per stage;
    - ``diversity[b]``: std over layers of the BN share;
    - ``factors[factor][value][b]``: (BN share, accuracy) when one factor is changed,
      over the seeds that the factor sweeps used;
    - ``effects[factor]``: max - min of the BN share over the factor's values (for
      ``batch size``: over all batch sizes), the larger of the two end batch sizes.
    """
    fixed = {k: v for k, v in base.items() if k != 'norm'}
    ends = sorted({min(batch_sizes), max(batch_sizes)})
    norms = [n for n in NORMS if _select(results, norm=n, **{k: v for k, v in fixed.items()})]
    acc = OrderedDict()
    for n in norms:
        runs = {b: _select(results, norm=n, batch=b, **fixed) for b in batch_sizes}
        if n in PER_SAMPLE_NORMS:  # batch-independent: one set of runs stands for all b
            runs = {b: _select(results, norm=n, **fixed) for b in batch_sizes}
        acc[n] = OrderedDict((b, _mean_std(r['accuracy'] for r in runs[b])) for b in batch_sizes)
    sn = {b: _select(results, norm='SN', batch=b, **fixed) for b in batch_sizes}
    shares = OrderedDict((b, OrderedDict(
        (f'{kind}_{br}', _mean_std(r['average'][kind][k] for r in sn[b]))
        for kind in ('mean', 'var', 'both') for k, br in enumerate(BRANCHES)))
        for b in batch_sizes)
    stages = OrderedDict()
    for b in batch_sizes:
        per_stage = OrderedDict()
        for r in sn[b]:
            for layer in r['layers']:
                per_stage.setdefault(layer['stage'], []).append(layer)
        stages[b] = OrderedDict(
            (stage, tuple(statistics.fmean(_both(l, k) for l in layers) for k in range(3)))
            for stage, layers in per_stage.items())
    diversity = OrderedDict(
        (b, _mean_std(statistics.pstdev(_both(l, 2) for l in r['layers']) for r in sn[b])[0])
        for b in batch_sizes)
    varied = [r for r in results if r['norm'] == 'SN'
              and any(r[k] != v for k, v in fixed.items() if k not in ('batch',))]
    factor_seeds = sorted({r['seed'] for r in varied})
    factors = OrderedDict()
    for factor in VARIANTS:
        values = sorted({r[factor] for r in results if r['norm'] == 'SN'}, key=str)
        table = OrderedDict()
        for value in values:
            match = dict(fixed, **{factor: value})
            row = OrderedDict()
            for b in ends:
                runs = [r for r in _select(results, norm='SN', batch=b, **match)
                        if r['seed'] in factor_seeds]
                row[b] = (_mean_std(r['average']['both'][2] for r in runs)[0],
                          _mean_std(r['accuracy'] for r in runs)[0])
            table[value] = row
        if len(table) > 1:
            factors[factor] = table
    effects = OrderedDict([('batch size', _range([shares[b]['both_BN'][0]
                                                  for b in batch_sizes]))])
    noise = max(shares[b]['both_BN'][1] for b in ends)  # seed-to-seed std, baseline
    for factor, table in factors.items():
        effects[factor] = max(_range([row[b][0] for row in table.values()]) for b in ends)
    return dict(acc=acc, shares=shares, stages=stages, diversity=diversity, factors=factors,
                effects=effects, noise=noise, ends=ends, norms=norms,
                factor_seeds=factor_seeds,
                base=dict(base))


# ----------------------------------------------------------------------------- plots
def _figure(w, h, rows=1, cols=1):
    fig = new_figure(w, h)
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_accuracy(summary, batch_sizes, path):
    fig, axes = _figure(5.5, 3.6)
    ax = axes[0][0]
    xs = list(range(len(batch_sizes)))
    for norm, row in summary['acc'].items():
        ax.errorbar(xs, [100 * row[b][0] for b in batch_sizes],
                    yerr=[100 * row[b][1] for b in batch_sizes], marker='o', capsize=3,
                    label=norm, linewidth=2.4 if norm == 'SN' else 1.2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(b) for b in batch_sizes])
    ax.set_xlabel('images per device (batch the BN statistics see)')
    ax.set_ylabel('test accuracy (%)')
    ax.set_title('load_digits test accuracy (mean ± std over seeds)', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_shares(summary, batch_sizes, path):
    """Shares vs batch size (mean, variance; paper's points dotted) + BN share per factor."""
    fig, axes = _figure(13, 3.8, 1, 3)
    xs = list(range(len(batch_sizes)))
    for col, kind in enumerate(('mean', 'var')):
        ax = axes[0][col]
        for br in BRANCHES:
            vals = [summary['shares'][b][f'{kind}_{br}'] for b in batch_sizes]
            ax.errorbar(xs, [v[0] for v in vals], yerr=[v[1] for v in vals], marker='o',
                        capsize=3, color=COLORS[br], label=f'{br}, this study')
        if kind == 'mean':
            for br in BRANCHES:
                pts = [(i, PAPER_SHARES[b][br]) for i, b in enumerate(batch_sizes)
                       if b in PAPER_SHARES]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=':', marker='s',
                        color=COLORS[br], alpha=0.6, label=f'{br}, paper (mean+var)')
        ax.set_xticks(xs)
        ax.set_xticklabels([str(b) for b in batch_sizes])
        ax.set_xlabel('images per device')
        ax.set_ylim(0, 1)
        ax.set_title(f'{"mean" if kind == "mean" else "variance"} shares averaged over layers',
                     fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, ncol=2, loc='upper left')
    ax = axes[0][2]
    lo, hi = summary['ends'][0], summary['ends'][-1]
    labels, low, high = [], [], []
    for factor, table in summary['factors'].items():
        for value, row in table.items():
            labels.append(f'{factor}={value}')
            low.append(row[lo][0])
            high.append(row[hi][0])
    ys = list(range(len(labels)))
    ax.barh([y - 0.2 for y in ys], high, height=0.4, color=COLORS['BN'], label=f'b={hi}')
    ax.barh([y + 0.2 for y in ys], low, height=0.4, color='#E8A0A2', label=f'b={lo}')
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.axvline(1 / 3, color='0.5', linewidth=0.8, linestyle=':')
    ax.set_xlabel('BN share (mean and variance averaged over layers)')
    ax.set_title('one factor changed at a time', fontsize=9)
    ax.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_layers(results, summary, path):
    """Per-layer ratios (averaged over seeds) at the smallest vs largest batch size."""
    tables = []
    for b in summary['ends']:
        runs = _select(results, batch=b, **summary['base'])
        if not runs:
            continue
        layers = []
        for i, layer in enumerate(runs[0]['layers']):
            mean = tuple(statistics.fmean(r['layers'][i]['mean'][k] for r in runs)
                         for k in range(3))
            var = tuple(statistics.fmean(r['layers'][i]['var'][k] for r in runs)
                        for k in range(3))
            layers.append(LayerRatios(layer['name'], mean, var, layer['using_bn'],
                                      layer['stage'], layer['block']))
        tables.append((f'{b} images per device (mean of {len(runs)} seeds)', layers))
    return plot_ratios(tables, path, title='load_digits ConvNet: learned SN ratios per layer')


# ---------------------------------------------------------------------------- report
def _pct(v):
    return f'{100 * v[0]:.2f} ± {100 * v[1]:.2f}'


def report(summary, batch_sizes, settings):
    """Markdown report; every sentence is derived from the measured numbers."""
    s = summary
    lo, hi = s['ends'][0], s['ends'][-1]
    base = ', '.join(f'{k} {v}' for k, v in s['base'].items() if k != 'norm')
    out = ['# SN on load_digits: what the layers learn', '', f'Settings: {settings}.', '',
           f'Baseline: {base}.', '',
           '## (a) Is it useful for each layer to select its own normalizer?', '',
           'Test accuracy (%, mean ± std over seeds) per images per device:', '',
           '| norm | ' + ' | '.join(f'b={b}' for b in batch_sizes) + ' |',
           '|---|' + '---|' * len(batch_sizes)]
    for norm, row in s['acc'].items():
        out.append(f'| {norm} | ' + ' | '.join(_pct(row[b]) for b in batch_sizes) + ' |')
    out.append('')
    per_sample = [n for n in s['acc'] if n in PER_SAMPLE_NORMS]
    if per_sample:
        out += [f'{", ".join(per_sample)} normalize each sample on its own: with the total batch '
                'fixed their training does not depend on the per-device batch, so they were '
                'trained once and the same numbers stand in every column.', '']
    notes = []
    for b in batch_sizes:
        best_val, best = max((row[b][0], n) for n, row in s['acc'].items())
        sn = s['acc'].get('SN', {}).get(b, (float('nan'),))[0]
        notes.append(f'b={b}: best {best} ({100 * best_val:.2f}), SN {100 * (best_val - sn):.2f} '
                     'points behind' if best != 'SN' else f'b={b}: SN best ({100 * sn:.2f})')
    out += ['- ' + '; '.join(notes) + '.']
    if 'BN' in s['acc'] and 'SN' in s['acc']:
        gap = [100 * (s['acc']['SN'][b][0] - s['acc']['BN'][b][0]) for b in (lo, hi)]
        out.append(f'- SN minus BN: {gap[0]:+.2f} points at b={lo}, {gap[1]:+.2f} at b={hi}.')
    if 'ratios' in s['factors']:
        row = s['factors']['ratios']
        out.append('- One set of ratios shared by all layers vs per-layer ratios (accuracy %, '
                   f'seeds {s["factor_seeds"]}): ' + '; '.join(
                       f'b={b}: shared {100 * row["shared"][b][1]:.2f}, per-layer '
                       f'{100 * row["per-layer"][b][1]:.2f}' for b in (lo, hi)) + '.')
    out.append('- Do layers choose differently? Std over layers of the BN share: ' +
               ', '.join(f'b={b}: {v:.3f}' for b, v in s['diversity'].items()) + '.')
    out += ['', '## (b) What drives the choice?', '',
            'Shares averaged over layers (mean ± std over seeds). Paper (ImageNet ResNet-50, '
            '(8, b), BN/IN/LN): b=32 0.58/0.16/0.25, b=8 0.40/0.21/0.39, b=2 0.14/0.30/0.55.',
            '', '| b | mean IN | mean LN | mean BN | var IN | var LN | var BN | BN (mean+var)/2 |',
            '|---|---|---|---|---|---|---|---|']
    for b in batch_sizes:
        row = s['shares'][b]
        cells = [f'{row[f"{k}_{br}"][0]:.3f} ± {row[f"{k}_{br}"][1]:.3f}'
                 for k in ('mean', 'var') for br in BRANCHES]
        out.append(f'| {b} | ' + ' | '.join(cells) + f' | {row["both_BN"][0]:.3f} |')
    stage_names = list(s['stages'][hi])
    out += ['', 'Layer depth: IN/LN/BN shares ((mean+var)/2) per stage:', '',
            '| b | ' + ' | '.join(stage_names) + ' |', '|---|' + '---|' * len(stage_names)]
    for b in batch_sizes:
        out.append(f'| {b} | ' + ' | '.join(
            '/'.join(f'{v:.2f}' for v in s['stages'][b][st]) if st in s['stages'][b] else '-'
            for st in stage_names) + ' |')
    out += ['', f'One factor changed at a time (seeds {s["factor_seeds"]}): BN share '
            '((mean+var)/2 over layers) and accuracy:', '',
            f'| factor | value | BN share b={lo} | BN share b={hi} | acc b={lo} | acc b={hi} |',
            '|---|---|---|---|---|---|']
    for factor, table in s['factors'].items():
        for value, row in table.items():
            mark = ' (baseline)' if value == s['base'][factor] else ''
            out.append(f'| {factor} | {value}{mark} | {row[lo][0]:.3f} | {row[hi][0]:.3f} | '
                       f'{100 * row[lo][1]:.2f} | {100 * row[hi][1]:.2f} |')
    bn_lo, bn_hi = s['shares'][lo]['both_BN'][0], s['shares'][hi]['both_BN'][0]
    var_drop = s['shares'][hi]['var_BN'][0] - s['shares'][lo]['var_BN'][0]
    mean_drop = s['shares'][hi]['mean_BN'][0] - s['shares'][lo]['mean_BN'][0]
    order = sorted(((v, k) for k, v in s['effects'].items() if not math.isnan(v)), reverse=True)
    out += ['', '## Answers (computed from the tables above)', '',
            f'- BN share averaged over layers: {bn_hi:.3f} at b={hi} -> {bn_lo:.3f} at b={lo} '
            f'({"falls" if bn_lo < bn_hi else "does not fall"}; paper 0.58 -> 0.14). '
            f'BN\'s variance share drops by {var_drop:.3f}, its mean share by {mean_drop:.3f} '
            f'(paper: the variance share drops faster).',
            '- How far each factor moves the BN share (max - min over its values): ' +
            ', '.join(f'{k} {v:.3f}' for v, k in order) + f'. For scale: the seed-to-seed '
            f'std of the baseline BN share is up to {s["noise"]:.3f}.', '']
    return '\n'.join(out)


# --------------------------------------------------------------------------- study
def run_study(out='work_dirs/sn_study', batch_sizes=(2, 4, 8, 16, 32), seeds=(0, 1, 2),
              factor_seeds=1, epochs=4, logit_lr_mult=BASE['logit_lr_mult'], total_batch=32,
              workers=1, threads=1, quick=False, num_train=None, log=print):
    """The whole study: plan, train every run, summarize, write ``out``/results.json,
    report.md and three figures. Returns ``dict(results, summary, paths, report)``.

    ``factor_seeds``: how many of ``seeds`` the factor sweeps use; ``num_train``: training
    images (default all 1297); ``quick`` plans the smoke-run sweep (see :func:`plan`).
    """
    batch_sizes, seeds = sorted(set(batch_sizes)), list(seeds)
    for b in batch_sizes:
        if b < 2 or total_batch % b:
            raise ValueError(f'batch size {b} must be >= 2 and divide the total batch '
                             f'{total_batch}')
    os.makedirs(out, exist_ok=True)
    base = dict(BASE, logit_lr_mult=logit_lr_mult)
    runs = plan(batch_sizes, seeds, seeds[:factor_seeds], quick, base)
    settings = (f'{len(runs)} runs, {epochs} epochs of {num_train or 1297} training images'
                f' (total batch {total_batch}), 500 test images, batch sizes '
                f'{batch_sizes}, seeds {seeds}{", quick" if quick else ""}')
    log(f'SN study: {settings}')
    start = time.perf_counter()
    results = execute(runs, (num_train,), epochs, total_batch, workers, threads, log=log)
    elapsed = time.perf_counter() - start
    settings += (f'; wall time {elapsed:.0f} s with {workers} process(es) x '
                 f'{threads} torch thread(s)')
    summary = summarize(results, batch_sizes, base)
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(dict(settings=settings, runs=results, summary=summary), f, indent=1,
                  default=str)
    paths = [plot_accuracy(summary, batch_sizes, os.path.join(out, 'accuracy.png')),
             plot_shares(summary, batch_sizes, os.path.join(out, 'shares.png')),
             plot_layers(results, summary, os.path.join(out, 'layers.png'))]
    text = report(summary, batch_sizes, settings)
    text += '\nFigures: ' + ', '.join(os.path.basename(p) for p in paths) + '\n'
    with open(os.path.join(out, 'report.md'), 'w') as f:
        f.write(text)
    log(text)
    log(f'wrote {out}/report.md, results.json and {len(paths)} figures '
        f'({elapsed:.0f} s of training)')
    return dict(results=results, summary=summary, paths=paths, report=text)
