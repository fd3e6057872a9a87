"""Which normalizer each layer chose, per task: the paper's question (c) on our own runs.

Luo et al. (arXiv 1811.07727) ask whether different tasks and datasets prefer different
normalizers. :func:`load_tasks` reads one *task* per source and :func:`compare` puts
them side by side:

- an SN checkpoint (``.pth``, any layout :func:`sn_mm.analysis.ratios_from_checkpoint`
  reads) is one task;
- several checkpoints under one label (``LABEL=a.pth,b.pth,c.pth`` on the command line,
  :func:`parse_sources`; or the same label given for each) are one task over seeds: its
  ``layers`` are the mean over the runs, its ``runs`` every seed's layers; the figure
  shows every seed, the table every seed's shares per stage, and a stage "leans to" a
  normalizer only where every seed agrees (:func:`group_leanings`, by the one rule of
  the seed comparisons, :func:`sn_mm.analysis.seed_spread.agreed_leaning`);
- a digits-study ``results.json`` (``tools/study.py``) gives one task per per-device
  batch size of its SN baseline (default: the smallest and the largest), each layer's
  shares averaged over the seeds, every seed one of the task's runs (so the same
  agreement rules apply; the batch trend is claimed only when the two batch sizes' seed
  ranges of the BN share do not overlap). The baseline is the SN setting with the most
  runs (the accuracy sweep; the one-factor variants have fewer).

Conventions:

- Shares are softmaxed [IN, LN, BN]; ``both`` is the mean of the mean and variance
  shares, as in :func:`sn_mm.analysis.average_shares`; averages are unweighted over layers.
- Stages are canonical across tasks (:data:`STAGES`): a ``backbone.`` prefix is dropped,
  the layers before the first residual stage are ``stem`` (mmdet's ``sn1``, mmseg's deep
  ``stem.{1,4,7}``, the study's ``sn1``), and every layer outside the backbone (FPN, RPN/RoI
  heads, decode and auxiliary heads) is ``heads``.
- A group (stage, or all layers) "leans to" a normalizer by
  :func:`sn_mm.analysis.seed_spread.agreed_leaning` on its 'both' shares: the largest
  share above 1/3 + :data:`UNDECIDED`, on every seed.
- The per-layer comparison uses backbone layer names without ``backbone.``; a layer shows
  up for the tasks that have it (the study's ResNet has only ``layer1``-``layer2``).
- The paper's learned shares averaged over layers (ResNet-50, ImageNet, (GPUs,
  images/GPU)) are in :data:`PAPER_SHARES`, quoted from the paper.

Matplotlib is imported only by :func:`plot_compare`.
"""
import glob
import json
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .layers import depth_order, stage_of
from .ratios import BRANCHES, LayerRatios, average_shares, ratios_from_checkpoint
from .seed_spread import UNDECIDED_TOL, agreed_leaning

STAGES = ('stem', 'layer1', 'layer2', 'layer3', 'layer4', 'heads')
KINDS = ('mean', 'var', 'both')
# arXiv 1811.07727: learned importance ratios averaged over the layers of ResNet-50 on
# ImageNet, (8 GPUs, images per GPU) -> share (IN, LN, BN).
PAPER_SHARES = OrderedDict([
    ('ImageNet (8,32)', (0.16, 0.25, 0.58)),
    ('ImageNet (8,8)', (0.21, 0.39, 0.40)),
    ('ImageNet (8,2)', (0.30, 0.55, 0.14)),
    ('ImageNet (8,1)', (0.52, 0.48, 0.0)),
])
# The demo outputs `compare` reads when it is given no sources: label -> (glob, how to make it)
DEFAULT_SOURCES = OrderedDict([
    ('detection', ('work_dirs/demo_mask-rcnn_r18_fpn_sn-all_coco-demo/iter_*.pth',
                   'python tools/demo.py')),
    ('seg Cityscapes', ('work_dirs/seg_demo/deeplabv3_r18-d8-sn_demo-cityscapes/iter_*.pth',
                        'python tools/demo_seg.py --layout cityscapes')),
    ('seg ADE20K', ('work_dirs/seg_demo/deeplabv3_r18-d8-sn_demo-ade20k/iter_*.pth',
                    'python tools/demo_seg.py --layout ade20k')),
    ('digits', ('work_dirs/sn_study/results.json', 'python tools/study.py')),
])
# The same tasks over seeds, written by the comparison tools: used instead of the single
# demo run when present (one checkpoint per seed folder).
DEFAULT_SEED_SOURCES = OrderedDict([
    ('detection', 'work_dirs/compare_norms_det/sn/seed*/iter_*.pth'),
    ('seg Cityscapes', 'work_dirs/compare_norms_seg/deeplabv3/cityscapes/sn/seed*/iter_*.pth'),
    ('seg ADE20K', 'work_dirs/compare_norms_seg/deeplabv3/ade20k/sn/seed*/iter_*.pth'),
])
_STUDY_BASELINE = dict(norm='SN', depth=1, init='kaiming', schedule='cosine', solver='sgd',
                       ratios='per-layer')
_ITER_RE = re.compile(r'iter_(\d+)\.pth$')
_HEAD_PARTS = ('neck', 'rpn_head', 'roi_head', 'bbox_head', 'mask_head', 'decode_head',
               'auxiliary_head', 'head', 'cls_head')


@dataclass(frozen=True)
class Task:
    """One task's learned shares: ``layers`` in depth order, ``source`` the file(s) read.

    A task read from several checkpoints (the same label given for each: one run per
    seed) has ``runs``, the layers of every run, and ``layers``, their mean over the runs;
    claims about it (:func:`findings`) are made only where every run agrees.
    """

    label: str
    layers: Tuple[LayerRatios, ...]
    source: str
    runs: Tuple[Tuple[LayerRatios, ...], ...] = ()


# ------------------------------------------------------------------------ loading
def canonical_stage(layer: LayerRatios) -> str:
    """The layer's stage in :data:`STAGES` (see the module docstring)."""
    name, stage = layer.name, layer.stage
    if name.startswith('backbone.'):
        stage = stage[len('backbone.'):] if stage.startswith('backbone.') else stage
    elif '.' in name and name.split('.')[0] in _HEAD_PARTS:
        return 'heads'
    if stage in STAGES[:-1]:
        return stage
    match = re.match(r'^(?:layer|stage|res_layer|res)(\d+)$', stage)
    if match:
        return f'layer{match.group(1)}'
    return 'heads'


def backbone_name(layer: LayerRatios) -> Optional[str]:
    """Name of a backbone layer without ``backbone.``; None for neck/head layers."""
    if canonical_stage(layer) == 'heads':
        return None
    name = layer.name
    return name[len('backbone.'):] if name.startswith('backbone.') else name


def latest_checkpoint(pattern: str) -> Optional[str]:
    """The ``iter_N.pth`` with the largest N among the files matching ``pattern``."""
    found = [p for p in glob.glob(pattern) if os.path.isfile(p)]
    if not found:
        return None

    def key(path):
        match = _ITER_RE.search(path)
        return (int(match.group(1)) if match else -1, os.path.getmtime(path))

    return max(found, key=key)


def study_tasks(path: str, label: str = 'digits',
                batches: Optional[Sequence[int]] = None) -> List[Task]:
    """Tasks from a ``tools/study.py`` ``results.json``: ``{label} b={batch}`` per batch.

    ``batches`` defaults to the smallest and largest per-device batch of the baseline.
    Raises ``ValueError`` naming the file if it holds no SN baseline run with layers, or a
    requested batch size is absent.
    """
    with open(path) as f:
        data = json.load(f)
    runs = data.get('runs') if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise ValueError(f'{path}: expected a tools/study.py results.json with a "runs" list')
    base = [r for r in runs if isinstance(r, dict) and r.get('layers')
            and all(r.get(k) == v for k, v in _STUDY_BASELINE.items())]
    if not base:
        raise ValueError(f'{path}: no SN baseline run with per-layer shares '
                         f'(settings {_STUDY_BASELINE})')
    counts: Dict[float, int] = {}
    for r in base:
        counts[r.get('logit_lr_mult')] = counts.get(r.get('logit_lr_mult'), 0) + 1
    lr_mult = max(counts, key=counts.get)
    base = [r for r in base if r.get('logit_lr_mult') == lr_mult]
    available = sorted({int(r['batch']) for r in base})
    if batches is None:
        batches = sorted({available[0], available[-1]})
    tasks = []
    for batch in batches:
        chosen = [r for r in base if int(r['batch']) == batch]
        if not chosen:
            raise ValueError(f'{path}: no SN baseline run at batch {batch}; available '
                             f'batch sizes {available}')
        runs = tuple(tuple(_mean_layers([r], path)) for r in chosen) if len(chosen) > 1 \
            else ()
        tasks.append(Task(f'{label} b={batch}', tuple(_mean_layers(chosen, path)), path, runs))
    return tasks


def _mean_layers(runs: Sequence[dict], path: str) -> List[LayerRatios]:
    by_name: 'OrderedDict[str, List[dict]]' = OrderedDict()
    for run in runs:
        for layer in run['layers']:
            by_name.setdefault(layer['name'], []).append(layer)
    out = []
    for name, group in by_name.items():
        if len(group) != len(runs):
            raise ValueError(f'{path}: layer {name!r} is missing from some runs')
        first = group[0]
        mean = tuple(math.fsum(g['mean'][k] for g in group) / len(group) for k in range(3))
        var = tuple(math.fsum(g['var'][k] for g in group) / len(group) for k in range(3))
        out.append(LayerRatios(name, mean, var, bool(first.get('using_bn', True)),
                               first.get('stage', ''), first.get('block', '')))
    order = {n: i for i, n in enumerate(depth_order([l.name for l in out]))}
    return sorted(out, key=lambda l: order[l.name])


def load_tasks(sources: Optional[Sequence[Tuple[str, str]]] = None) -> List[Task]:
    """Tasks from ``[(label, path), ...]``; ``None``: the demo outputs (:data:`DEFAULT_SOURCES`).

    A ``.json`` path is a study ``results.json`` (:func:`study_tasks`), anything else a
    checkpoint. A missing default output is an error naming the command that makes it.
    """
    if sources is None:
        sources, missing = [], []
        for label, (pattern, command) in DEFAULT_SOURCES.items():
            seeds = seed_checkpoints(DEFAULT_SEED_SOURCES.get(label))
            if seeds:
                sources += [(label, path) for path in seeds]
                continue
            path = latest_checkpoint(pattern) if '*' in pattern else (
                pattern if os.path.isfile(pattern) else None)
            if path is None:
                missing.append(f'{label}: no {pattern} (run `{command}`)')
            else:
                sources.append((label, path))
        if missing:
            raise FileNotFoundError('missing run outputs for the cross-task comparison:\n  '
                                    + '\n  '.join(missing))
    if not sources:
        raise ValueError('no sources to compare: expected (label, path) pairs')
    tasks: List[Task] = []
    by_label: 'OrderedDict[str, List[str]]' = OrderedDict()
    for label, path in sources:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{label}: {path!r} does not exist (or is not a file)')
        if path.lower().endswith('.json'):
            tasks.extend(study_tasks(path, label))
            continue
        if path in by_label.get(label, []):
            raise ValueError(f'{label}: {path!r} given twice; one checkpoint per run (seed)')
        if label not in by_label:
            by_label[label] = []
            tasks.append(Task(label, (), ''))  # placeholder keeps the order
        by_label[label].append(path)
    for i, task in enumerate(tasks):
        if task.source == '' and task.label in by_label:
            paths = by_label[task.label]
            runs = tuple(tuple(ratios_from_checkpoint(p)) for p in paths)
            if len(runs) == 1:
                tasks[i] = Task(task.label, runs[0], paths[0])
            else:
                tasks[i] = Task(task.label, tuple(mean_over_runs(runs, task.label)),
                                ' + '.join(paths), runs)
    labels = [t.label for t in tasks]
    if len(set(labels)) != len(labels):
        raise ValueError(f'task labels must be unique, got {labels}')
    return tasks


def seed_checkpoints(pattern: Optional[str]) -> List[str]:
    """The latest checkpoint of every folder matching ``pattern``'s directory part
    (``.../seed*/iter_*.pth``: one per seed), sorted; ``[]`` when none."""
    if not pattern:
        return []
    folders = sorted({os.path.dirname(p) for p in glob.glob(pattern)})
    found = [latest_checkpoint(os.path.join(f, os.path.basename(pattern))) for f in folders]
    return [p for p in found if p]


def mean_over_runs(runs: Sequence[Sequence[LayerRatios]], label: str) -> List[LayerRatios]:
    """Each layer's shares averaged over ``runs`` (the same layers in every run)."""
    names = [l.name for l in runs[0]]
    for run in runs[1:]:
        if [l.name for l in run] != names:
            raise ValueError(f'{label}: the runs have different SN layers; expected the same '
                             'model trained with different seeds')
    out = []
    for i, first in enumerate(runs[0]):
        mean = tuple(math.fsum(r[i].mean[k] for r in runs) / len(runs) for k in range(3))
        var = tuple(math.fsum(r[i].var[k] for r in runs) / len(runs) for k in range(3))
        out.append(LayerRatios(first.name, mean, var, first.using_bn, first.stage, first.block))
    return out


# ---------------------------------------------------------------------- summaries
def stage_shares(task: Task) -> 'OrderedDict[str, Dict[str, Tuple[float, float, float]]]':
    """:func:`average_shares` per canonical stage present in the task, in :data:`STAGES` order."""
    groups: Dict[str, List[LayerRatios]] = {}
    for layer in task.layers:
        groups.setdefault(canonical_stage(layer), []).append(layer)
    return OrderedDict((s, average_shares(groups[s])) for s in STAGES if s in groups)


def shared_backbone_layers(tasks: Sequence[Task]) -> List[str]:
    """Backbone layer names (no ``backbone.``) of any task, in depth order."""
    names = []
    for task in tasks:
        for layer in task.layers:
            name = backbone_name(layer)
            if name is not None and name not in names:
                names.append(name)
    return depth_order(names)


def layer_shares(task: Task) -> Dict[str, LayerRatios]:
    """The task's backbone layers by :func:`backbone_name`."""
    return {backbone_name(l): l for l in task.layers if backbone_name(l) is not None}


UNDECIDED = UNDECIDED_TOL  # a group "chose" a branch when its largest share exceeds 1/3 by this


def seed_runs(task: Task) -> Tuple[Tuple[LayerRatios, ...], ...]:
    """The task's runs (one per seed); a single-checkpoint task is one run."""
    return task.runs or (task.layers,)


def run_names(task: Task) -> List[str]:
    """A name per run: the ``seed<k>`` folder of its checkpoint when the paths have one,
    else ``run 1``, ``run 2``, ..."""
    paths = task.source.split(' + ') if task.runs else [task.source]
    names = [os.path.basename(os.path.dirname(p)) for p in paths]
    if len(names) == len(seed_runs(task)) and all(re.fullmatch(r'seed\d+', n) for n in names) \
            and len(set(names)) == len(names):
        return names
    return [f'run {i + 1}' for i in range(len(seed_runs(task)))]


def group_leanings(task: Task) -> 'OrderedDict[str, dict]':
    """Per stage of the task (and ``all``: every layer): ``{'mean': shares 'both' of the
    mean over runs, 'per_seed': [shares 'both' per run], 'leans': branch | 'undecided' |
    'seeds disagree'}``, the leaning by :func:`sn_mm.analysis.seed_spread.agreed_leaning`
    (the rule of the seed comparisons: the largest share on every seed, above 1/3 + tol on
    every seed)."""
    runs = [Task(task.label, r, task.source) for r in seed_runs(task)]
    groups = [('all', average_shares(task.layers),
               [average_shares(r.layers)['both'] for r in runs])]
    per_run = [stage_shares(r) for r in runs]
    groups += [(stage, sh, [p[stage]['both'] for p in per_run])
               for stage, sh in stage_shares(task).items()]
    return OrderedDict((g, dict(mean=sh['both'], per_seed=seeds,
                                leans=agreed_leaning(seeds, UNDECIDED_TOL)))
                       for g, sh, seeds in groups)


def never_left_third(task: Task) -> List[str]:
    """Names of the task's layers whose mean and variance shares all stay within
    :data:`UNDECIDED` of 1/3 on every run (:func:`sn_mm.apis.compare.undecided_layers`)."""
    from sn_mm.apis.compare import undecided_layers
    return undecided_layers([[dict(name=l.name, mean=list(l.mean), var=list(l.var))
                              for l in run] for run in seed_runs(task)], UNDECIDED)


def _sign_claim(values: Sequence[float], yes: str, no: str) -> str:
    """``yes`` when every run's value is > 0, ``no`` when none is, else 'seeds disagree'."""
    if all(v > 0 for v in values):
        return yes
    if not any(v > 0 for v in values):
        return no
    return 'seeds disagree'


def findings(tasks: Sequence[Task]) -> List[str]:
    """Sentences computed from the numbers, for the comparison with the paper."""
    out = []
    overall = {t.label: average_shares(t.layers) for t in tasks}
    for kind_label, k in (('IN', 0), ('LN', 1), ('BN', 2)):
        values = {label: avg['both'][k] for label, avg in overall.items()}
        lo, hi = min(values, key=values.get), max(values, key=values.get)
        out.append(f'{kind_label} share (averaged over layers, mean and variance): from '
                   f'{values[lo]:.2f} ({lo}) to {values[hi]:.2f} ({hi}), spread '
                   f'{values[hi] - values[lo]:.2f}.')
    for t in tasks:
        avg = overall[t.label]
        runs = [Task(t.label, r, t.source) for r in seed_runs(t)]
        lean = group_leanings(t)
        parts = [f'{stage} {v["leans"]}' for stage, v in lean.items() if stage != 'all']
        seeds = f' ({len(runs)} seeds; a leaning is named only where every seed leans so)' \
            if t.runs else ''
        out.append(f'{t.label}: largest share overall {lean["all"]["leans"]} '
                   f'({"/".join(f"{v:.2f}" for v in avg["both"])} IN/LN/BN){seeds}; per stage: '
                   + ', '.join(parts) + '.')
        drops = [average_shares(r.layers) for r in runs]
        drops = [a['mean'][2] - a['var'][2] for a in drops]
        drop_bn = avg['mean'][2] - avg['var'][2]
        per = f'; per seed {", ".join(f"{d:+.2f}" for d in drops)}' if t.runs else ''
        out.append(f'{t.label}: BN share of the means {avg["mean"][2]:.2f}, of the variances '
                   f'{avg["var"][2]:.2f} (the variance share is '
                   f'{_sign_claim(drops, "lower", "not lower")}: {drop_bn:+.2f}{per}).')
        ends_middle = [_ln_ends_middle(r) for r in runs]
        if all(e is not None for e in ends_middle):
            ends, middle = _ln_ends_middle(t)
            diffs = [e - m for e, m in ends_middle]
            per = f'; per seed {", ".join(f"{d:+.2f}" for d in diffs)}' if t.runs else ''
            out.append(f'{t.label}: LN share of the first and last backbone layers '
                       f'{ends:.2f} vs {middle:.2f} in between ('
                       + _sign_claim(diffs, 'leaning to LN', 'not leaning to LN') + f'{per}).')
        stuck = never_left_third(t)
        n_stages = {canonical_stage(l) for l in t.layers if l.name in stuck}
        out.append(f'{t.label}: {len(stuck)} of {len(t.layers)} SN layers never leave 1/3 '
                   f'(every share within {UNDECIDED} of 1/3{" on every seed" if t.runs else ""})'
                   + (f', in {", ".join(s for s in STAGES if s in n_stages)}' if stuck else '')
                   + '.')
    study = [t for t in tasks if re.search(r' b=(\d+)$', t.label)]
    if len(study) >= 2:
        by_batch = sorted(study, key=lambda t: int(re.search(r' b=(\d+)$', t.label).group(1)))
        bn = [overall[t.label]['both'][2] for t in by_batch]
        small, large = ([average_shares(r)['both'][2] for r in seed_runs(t)]
                        for t in (by_batch[0], by_batch[-1]))
        if max(small) < min(large):
            trend = 'the smaller per-device batch gives less BN'
        elif min(small) >= max(large):
            trend = 'the smaller per-device batch gives not less BN'
        else:  # the seeds of the two batch sizes overlap: no claim
            trend = 'the seeds of the two batch sizes overlap, no claim'
        seeds = (f' (per seed {", ".join(f"{v:.2f}" for v in small)} vs '
                 f'{", ".join(f"{v:.2f}" for v in large)})' if len(small) + len(large) > 2
                 else '')
        out.append('digits: BN share ' + ' -> '.join(
            f'{v:.2f} ({t.label.split()[-1]})' for v, t in zip(bn, by_batch))
            + f'{seeds}: {trend}.')
    return out


def _ln_ends_middle(task: Task) -> Optional[Tuple[float, float]]:
    """LN share ('both') of the first and last backbone layers, and of those in between;
    None with fewer than 4 backbone layers."""
    layers = [l for l in task.layers if canonical_stage(l) != 'heads']
    if len(layers) < 4:
        return None
    ln = [(l.mean[1] + l.var[1]) / 2 for l in layers]
    return (ln[0] + ln[-1]) / 2, math.fsum(ln[1:-1]) / (len(ln) - 2)


# -------------------------------------------------------------------------- table
def _fmt(shares) -> str:
    return ' / '.join(f'{v:.2f}' for v in shares)


def markdown_table(tasks: Sequence[Task]) -> str:
    """Markdown: overall shares per task beside the paper's, then per stage, then findings."""
    lines = ['# Which normalizer each layer chose, per task', '',
             'Shares IN / LN / BN after softmax, unweighted mean over layers; "both" is the '
             'mean of the mean and variance shares.', '',
             '| task | SN layers | both | mean | variance | source |',
             '|---|---:|---|---|---|---|']
    for t in tasks:
        avg = average_shares(t.layers)
        lines.append(f'| {t.label} | {len(t.layers)} | {_fmt(avg["both"])} | '
                     f'{_fmt(avg["mean"])} | {_fmt(avg["var"])} | '
                     + (f'{len(t.runs)} seeds (sources below)' if t.runs else f'`{t.source}`')
                     + ' |')
    for label, shares in PAPER_SHARES.items():
        lines.append(f'| paper: {label} | 53 | {_fmt(shares)} | | | arXiv 1811.07727 |')
    lines += ['', '## Per stage (both)', '',
              '| task | ' + ' | '.join(STAGES) + ' |', '|---' * (len(STAGES) + 1) + '|']
    for t in tasks:
        per = stage_shares(t)
        lines.append(f'| {t.label} | ' + ' | '.join(
            _fmt(per[s]['both']) if s in per else '' for s in STAGES) + ' |')
    lines += ['', '## Leaning per stage (both)', '',
              f'A seed leans to the normalizer with its largest share when that share is above '
              f'1/3 + {UNDECIDED}. A task leans only where every seed leans the same way; '
              '"undecided" where some seed leans to nothing, "seeds disagree" where two seeds '
              'lean to different normalizers (`sn_mm.analysis.seed_spread.agreed_leaning`, '
              'the rule of the seed comparisons). In brackets: each seed\'s own leaning.', '',
              '| task | seeds | all layers | ' + ' | '.join(STAGES) + ' |',
              '|---' * (len(STAGES) + 3) + '|']
    for t in tasks:
        lean = group_leanings(t)
        lines.append(f'| {t.label} | {len(seed_runs(t))} | ' + ' | '.join(
            _lean_cell(lean[g]) if g in lean else '' for g in ('all',) + STAGES) + ' |')
    multi = [t for t in tasks if t.runs]
    if multi:
        lines += ['', '## Per stage and seed (both)', '',
                  '| task | seed | all layers | ' + ' | '.join(STAGES) + ' |',
                  '|---' * (len(STAGES) + 3) + '|']
        for t in multi:
            lean = group_leanings(t)
            for i, name in enumerate(run_names(t)):
                lines.append(f'| {t.label} | {name} | ' + ' | '.join(
                    _fmt(lean[g]['per_seed'][i]) if g in lean else ''
                    for g in ('all',) + STAGES) + ' |')
        lines += ['', 'Sources: ' + '; '.join(
            f'{t.label}: ' + (', '.join(f'{n} `{p}`' for n, p in
                                        zip(run_names(t), t.source.split(' + ')))
                              if ' + ' in t.source else f'{len(t.runs)} runs of `{t.source}`')
            for t in multi) + '.']
    lines += ['', f'## Layers that never leave 1/3', '',
              f'Every mean and variance share within {UNDECIDED} of 1/3 (on every seed).', '']
    for t in tasks:
        stuck = never_left_third(t)
        lines.append(f'- {t.label}: {len(stuck)} of {len(t.layers)}'
                     + (': ' + ', '.join(f'`{n}`' for n in stuck) if stuck else '') + '.')
    lines += ['', '## Computed from these numbers', '']
    lines += [f'- {line}' for line in findings(tasks)]
    return '\n'.join(lines) + '\n'


def _lean_cell(group: dict) -> str:
    if len(group['per_seed']) == 1:
        return group['leans']
    each = [agreed_leaning([v], UNDECIDED) for v in group['per_seed']]
    if len(set(each)) == 1:
        return f'{group["leans"]} (all {len(each)} seeds)'
    return f'{group["leans"]} ({", ".join(each)})'


def table_rows(tasks: Sequence[Task]) -> List[dict]:
    """One row per task and stage (plus ``all``): task, stage, layers, seeds, the leaning
    (:func:`group_leanings`), kind_branch shares (mean over the seeds)."""
    out = []
    for t in tasks:
        groups = [('all', average_shares(t.layers), len(t.layers))]
        counts = {}
        for layer in t.layers:
            counts[canonical_stage(layer)] = counts.get(canonical_stage(layer), 0) + 1
        groups += [(s, sh, counts[s]) for s, sh in stage_shares(t).items()]
        lean = group_leanings(t)
        for stage, shares, n in groups:
            row = OrderedDict(task=t.label, stage=stage, layers=n, seeds=len(seed_runs(t)),
                              leans=lean[stage]['leans'])
            for kind in KINDS:
                for b, v in zip(BRANCHES, shares[kind]):
                    row[f'{kind}_{b}'] = round(v, 4)
            out.append(row)
    return out


def write_compare_table(tasks: Sequence[Task], path: str) -> str:
    """``.md`` (:func:`markdown_table`), ``.csv`` or ``.json`` (:func:`table_rows`)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in ('.md', '.csv', '.json'):
        raise ValueError(f'comparison table must end in .md, .csv or .json, got {path!r}')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext == '.md':
        with open(path, 'w') as f:
            f.write(markdown_table(tasks))
    elif ext == '.csv':
        import csv
        rows = table_rows(tasks)
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        with open(path, 'w') as f:
            json.dump(dict(branches=list(BRANCHES), rows=table_rows(tasks),
                           paper={k: list(v) for k, v in PAPER_SHARES.items()},
                           findings=findings(tasks),
                           per_seed={t.label: {g: v['per_seed'] for g, v in
                                               group_leanings(t).items()} for t in tasks},
                           never_left_third={t.label: never_left_third(t) for t in tasks},
                           sources={t.label: t.source for t in tasks}), f, indent=1)
    return path


# ------------------------------------------------------------------------- figure
def plot_compare(tasks: Sequence[Task], path: str, title: str = '') -> str:
    """The cross-task figure (see :mod:`sn_mm.analysis.plot` for the colours).

    Top: per stage (and "all layers", beside the paper's ImageNet averages), one stacked
    IN/LN/BN bar per task, mean shares left, variance shares right; for a task over seeds
    the bar is the mean and a black line on each boundary spans the seeds' range. Bottom:
    per backbone layer, the IN, LN and BN shares of every task (solid: mean, dashed:
    variance; faint marks: the single seeds).
    """
    from .plot import COLORS, new_figure

    if not tasks:
        raise ValueError('nothing to plot: expected at least one task')
    ext = os.path.splitext(path)[1].lower()
    if ext not in ('.png', '.pdf', '.svg'):
        raise ValueError(f'plot file must end in .png, .pdf or .svg, got {path!r}')
    names = shared_backbone_layers(tasks)
    fig = new_figure(max(14.0, 0.32 * len(names) + 3), 12.5)
    grid = fig.add_gridspec(3, 2, height_ratios=[1.25, 1, 1], hspace=0.75, wspace=0.12)
    markers = 'osD^vP*X'
    cmap = ['#222222', '#E17C05', '#5F4690', '#0F8554', '#38A6A5', '#CC503E', '#94346E',
            '#666666']
    width = 0.8 / (len(tasks) + 0.5)
    for col, kind in enumerate(('mean', 'var')):
        ax = fig.add_subplot(grid[0, col])
        groups = list(STAGES) + ['all layers']
        for ti, task in enumerate(tasks):
            per = stage_shares(task)
            per['all layers'] = average_shares(task.layers)
            for gi, group in enumerate(groups):
                if group not in per:
                    continue
                x = gi + (ti - (len(tasks) - 1) / 2) * width
                bottom = 0.0
                for k, branch in enumerate(BRANCHES):
                    v = per[group][kind][k]
                    ax.bar(x, v, width * 0.92, bottom=bottom, color=COLORS[branch],
                           linewidth=0, label=branch if (ti, gi) == (0, 0) else None)
                    bottom += v
                ax.text(x, 1.01, str(ti + 1), ha='center', va='bottom', fontsize=6)
                if task.runs:  # seed range of the IN and IN+LN boundaries
                    for cut in (1, 2):
                        vals = []
                        for r_layers in task.runs:
                            rt = Task(task.label, r_layers, task.source)
                            sh = (average_shares(rt.layers) if group == 'all layers'
                                  else stage_shares(rt).get(group))
                            if sh is not None:
                                vals.append(sum(sh[kind][:cut]))
                        if vals:
                            ax.plot([x, x], [min(vals), max(vals)], color='black',
                                    linewidth=0.8)
        # the paper's overall averages (one number per normalizer, mean and variance pooled)
        px = len(groups)
        pw = 0.8 / len(PAPER_SHARES)
        for pi, (plabel, shares) in enumerate(PAPER_SHARES.items()):
            x = px + (pi - (len(PAPER_SHARES) - 1) / 2) * pw
            bottom = 0.0
            for k, branch in enumerate(BRANCHES):
                ax.bar(x, shares[k], pw * 0.9, bottom=bottom, color=COLORS[branch],
                       linewidth=0, alpha=0.55)
                bottom += shares[k]
            ax.text(x, 1.01, plabel.split()[-1].strip('()').split(',')[1], ha='center',
                    va='bottom', fontsize=6)
        ax.set_xticks(range(len(groups) + 1))
        ax.set_xticklabels(groups + ['paper\nImageNet\n(8,b), both'], fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.axhline(1 / 3, color='white', linewidth=0.6, linestyle=':')
        ax.set_title(f'{"mean" if kind == "mean" else "variance"} shares per stage '
                     '(bars numbered by task; right: the paper, b = images/GPU)', fontsize=9)
        if col == 0:
            ax.set_ylabel('share')
            ax.legend(loc='upper left', bbox_to_anchor=(0, -0.28), ncol=3, fontsize=8,
                      frameon=False)
    key = '   '.join(f'{i + 1}: {t.label}' + (f' ({len(t.runs)} seeds)' if t.runs else '')
                       for i, t in enumerate(tasks))
    fig.text(0.5, 0.655, key, ha='center', fontsize=9)
    if any(t.runs for t in tasks):
        fig.text(0.99, 0.632, 'over seeds: bar = mean, black line = range of the IN and IN+LN '
                 'boundaries; per-layer panels: faint marks = single seeds', ha='right',
                 fontsize=8)
    # per layer of the shared backbone
    xs = {n: i for i, n in enumerate(names)}
    for k, branch in enumerate(BRANCHES):
        row, col = (1 + k // 2, k % 2) if k < 2 else (2, 0)
        ax = fig.add_subplot(grid[row, col])
        for ti, task in enumerate(tasks):
            per = layer_shares(task)
            pts = [(xs[n], per[n]) for n in names if n in per]
            color = cmap[ti % len(cmap)]
            for kind, style in (('mean', '-'), ('var', '--')):
                ax.plot([x for x, _ in pts], [getattr(l, kind)[k] for _, l in pts], style,
                        color=color, marker=markers[ti % len(markers)], markersize=3,
                        linewidth=1, label=f'{ti + 1}: {task.label}' if kind == 'mean' else None)
            for run in task.runs:  # one faint mark per seed around the mean line
                per_run = layer_shares(Task(task.label, run, task.source))
                for kind in ('mean', 'var'):
                    seed_pts = [(xs[n], per_run[n]) for n in names if n in per_run]
                    ax.plot([x for x, _ in seed_pts], [getattr(l, kind)[k] for _, l in seed_pts],
                            markers[ti % len(markers)], color=color, markersize=2, alpha=0.35,
                            markerfacecolor=color if kind == 'mean' else 'none', linestyle='')
        ax.axhline(1 / 3, color='0.6', linewidth=0.6, linestyle=':')
        ax.set_ylim(0, 1)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_title(f'{branch} share per backbone layer (solid: mean, dashed: variance)',
                     fontsize=9, color=COLORS[branch])
        stages = [canonical_stage(LayerRatios(n, (0, 0, 0), (0, 0, 0), True, _stage(n)))
                  for n in names]
        for i in range(1, len(names)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i - 0.5, color='black', linestyle='--', linewidth=0.8)
    ax_key = fig.add_subplot(grid[2, 1])
    ax_key.axis('off')
    handles, labels = fig.axes[-2].get_legend_handles_labels()
    ax_key.legend(handles, labels, loc='center', fontsize=9, frameon=False,
                  title='task (per-layer panels)')
    if title:
        fig.suptitle(title, fontsize=11, x=0.01, ha='left')
    fig.subplots_adjust(left=0.05, right=0.99, top=0.94 if title else 0.96, bottom=0.1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _stage(name: str) -> str:
    return stage_of(name)


def compare(sources: Optional[Sequence[Tuple[str, str]]] = None, plot: Optional[str] = None,
            table: Optional[str] = None, title: str = '') -> Tuple[List[Task], str]:
    """Load the tasks, write the figure/table if asked; returns (tasks, markdown)."""
    tasks = load_tasks(sources)
    if plot:
        plot_compare(tasks, plot, title)
    if table:
        write_compare_table(tasks, table)
    return tasks, markdown_table(tasks)


def parse_sources(paths: Sequence[str],
                  labels: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    """``[(label, path)]`` from the command line's sources.

    Two forms, not mixed: ``LABEL=A.pth,B.pth,C.pth`` (one task over the seeds A, B, C; a
    lone ``LABEL=A.pth`` is a one-checkpoint task), or plain files with ``labels`` (one
    label per file; a label repeated for several checkpoints makes them one task; default
    label: the file name). An argument that is an existing file is always a file, even with
    ``=`` in its name.
    """
    grouped = [p for p in paths if '=' in p and not os.path.isfile(p)]
    if grouped and len(grouped) != len(paths):
        plain = [p for p in paths if p not in grouped]
        raise ValueError(f'sources must all be LABEL=FILE[,FILE...] or all plain files; got '
                         f'{grouped} and {plain}')
    if grouped:
        if labels:
            raise ValueError(f'--labels {list(labels)} cannot be used with LABEL=FILES '
                             f'sources {grouped}: the label is before the "="')
        out = []
        for item in grouped:
            label, _, files = item.partition('=')
            files = [f for f in files.split(',')]
            if not label or not all(files):
                raise ValueError(f'expected LABEL=FILE[,FILE...], got {item!r}')
            out += [(label, f) for f in files]
        return out
    if labels and len(labels) != len(paths):
        raise ValueError(f'got {len(labels)} labels for {len(paths)} sources; expected one '
                         'per source')
    names = labels or [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return list(zip(names, paths))


def run_compare(paths: Sequence[str] = (), labels: Optional[Sequence[str]] = None,
                plot: Optional[str] = None, table: Optional[str] = None, title: str = '',
                quiet: bool = False, out_dir: str = 'work_dirs/sn_compare') -> List[Task]:
    """``tools/analyze_sn.py --compare``: sources ``paths`` (:func:`parse_sources`; default:
    the demo outputs), figure and table (default ``{out_dir}/cross_task.png`` and ``.md``),
    markdown printed."""
    sources = parse_sources(paths, labels) if paths else None
    plot = plot or os.path.join(out_dir, 'cross_task.png')
    table = table or os.path.join(out_dir, 'cross_task.md')
    tasks, text = compare(sources, plot, table, title)
    if not quiet:
        print(text)
    print(f'figure written to {plot}\ntable written to {table}')
    return tasks
