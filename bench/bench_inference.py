"""Inference time per image on CPU: SN vs SSN converted to fixed layers vs BN, interleaved.

Models are the demo configs (Mask R-CNN R18-FPN half width: backbone + FPN, i.e.
``extract_feat``; DeepLabV3 R18-D8 half width: backbone + decode head, i.e. the logits),
built three times with the same seed (so the same convolution weights):

- ``SN``: the SN demo config (eval mode: IN/LN moments still computed per image);
- ``SSN->fixed``: the SSN demo config, every layer made one-hot (``--choice``: ``bn``
  everywhere, the best case; or ``mixed``, layer i on IN / LN / BN in turn; or the
  choices of a trained SSN checkpoint ``--checkpoint``), then converted with
  :func:`sn_mm.deploy.to_fixed_norms` (BN folded into the convolutions);
- ``BN``: the BN demo config in eval mode, *not* folded (what mmdet/mmseg run by default).

One image per forward, ``--repeats`` rounds, each round runs every model once in a
rotated order; prints the median seconds per image, the ratio to SN, the date, the
load average before and after and the thread count (other work on the machine slows
every model; the interleaving spreads it evenly).

    python bench/bench_inference.py [--task det|seg] [--size 256] [--repeats 15]
                                    [--choice mixed|bn] [--checkpoint SSN.pth] [--threads N]
"""
import os

# Under CPU contention OpenMP's spinning barriers make multi-threaded torch far slower than
# it needs to be (as in tools/demo.py); set before torch is imported.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import os.path as osp  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import sn_mm  # noqa: F401,E402
from sn_mm.deploy import to_fixed_norms  # noqa: E402
from sn_mm.ops import SparseSwitchableNorm  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'det': ('mmdet', 'configs/mask_rcnn_demo/mask-rcnn_r18_fpn_{}_coco-demo.py',
            {'SN': 'sn-all', 'SSN': 'ssn-all', 'BN': 'bn-all'}),
    'seg': ('mmseg', 'configs/seg_demo/deeplabv3_r18-d8-{}_demo-cityscapes.py',
            {'SN': 'sn', 'SSN': 'ssn', 'BN': 'syncbn'}),
}


def build(task: str, norm: str):
    scope, pattern, names = CONFIGS[task]
    import importlib
    importlib.import_module(f'{scope}.models')
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    cfg = Config.fromfile(osp.join(ROOT, pattern.format(names[norm])))
    model_cfg = copy.deepcopy(cfg.model)
    if norm == 'BN' and task == 'seg':  # SyncBN on one process is BN
        for key in ('backbone', 'decode_head', 'auxiliary_head'):
            model_cfg[key]['norm_cfg'] = dict(type='BN', requires_grad=True)
    torch.manual_seed(0)
    model = registry.build(model_cfg)
    model.eval()
    return model


def make_one_hot(model, choice: str, checkpoint=None):
    """Freeze every SSN layer on one normalizer (``choice``) or load a trained checkpoint."""
    if checkpoint:
        from sn_mm.checkpoint import safe_load
        state = safe_load(checkpoint, map_location='cpu')
        model.load_state_dict(state.get('state_dict', state))
        return
    layers = [m for m in model.modules() if isinstance(m, SparseSwitchableNorm)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            k = 2 if choice == 'bn' else i % 3
            for logits in (layer.mean_weight, layer.var_weight):
                logits.zero_()
                logits[k] = 1.0
            layer.freeze_one_hot(torch.tensor(True))


def runner_of(task, model):
    if task == 'det':
        return lambda x: model.extract_feat(x)
    return lambda x: model.decode_head(model.extract_feat(x))


def load_average() -> str:
    try:
        return '/'.join(f'{x:.2f}' for x in os.getloadavg())
    except OSError:
        return 'n/a'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--task', choices=sorted(CONFIGS), default='det')
    p.add_argument('--size', type=int, default=256, help='square image size')
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--choice', choices=['mixed', 'bn'], default='mixed')
    p.add_argument('--checkpoint', help='a trained SSN checkpoint of the SSN demo config')
    p.add_argument('--threads', type=int, help='torch threads (default: torch default)')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    sn, bn = build(args.task, 'SN'), build(args.task, 'BN')
    ssn = build(args.task, 'SSN')
    make_one_hot(ssn, args.choice, args.checkpoint)
    x = torch.randn(1, 3, args.size, args.size)
    conversion = to_fixed_norms(ssn, forward=lambda m: runner_of(args.task, m)(x))
    fixed = conversion.model
    models = {'SN': sn, 'SSN->fixed': fixed, 'BN': bn}
    runs = {name: runner_of(args.task, m) for name, m in models.items()}
    times = {name: [] for name in models}
    names = list(models)
    with torch.no_grad():
        for name in names:  # warm-up
            runs[name](x)
            runs[name](x)
        for r in range(args.repeats):
            for name in names[r % 3:] + names[:r % 3]:
                start = time.perf_counter()
                runs[name](x)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    what = 'backbone + FPN' if args.task == 'det' else 'backbone + decode head'
    choice = f'checkpoint {args.checkpoint}' if args.checkpoint else args.choice
    print(f'# {args.task} demo model ({what}), 1 x 3 x {args.size} x {args.size}, CPU, '
          f'{args.repeats} interleaved rounds; SSN choices: {choice}')
    print(f'# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, '
          f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads, load average '
          f'{load_before} before, {load_average()} after')
    print(f'# SSN->fixed: {conversion.format().splitlines()[-1]}; max layer deviation '
          f'{conversion.max_deviation:.1e}')
    print('| model | median ms / image | vs SN |')
    print('|---|---|---|')
    for name in names:
        print(f'| {name} | {1000 * medians[name]:.1f} | {medians[name] / medians["SN"]:.2f} |')
    return medians


if __name__ == '__main__':
    main()
