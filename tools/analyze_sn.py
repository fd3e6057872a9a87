#!/usr/bin/env python
"""Per-layer SN (and SW) importance ratios of one or more checkpoints: table, CSV/JSON, figure.

    python tools/analyze_sn.py CKPT [CKPT ...] [--labels A B ...] [--out table.csv|.json]
                               [--plot fig.png|.pdf] [--title TEXT] [--quiet]
                               [--branches IN,LN,BN,GN]
    python tools/analyze_sn.py --compare [CKPT|results.json ...] [--labels ...] [--out t.md]
    python tools/analyze_sn.py --compare LABEL=CKPT[,CKPT...] ... [--out t.md]  # seeds
    python tools/analyze_sn.py --trajectories WORK_DIR [--layers] [--groups G ...] [--plot f.png]
    python tools/analyze_sn.py --en-ratios CONFIG CKPT [--max-batches N] [--out summary.json]

Reads mmengine checkpoints (``{'state_dict': {'backbone.layer1.0.sn1.mean_weight': ...}}``)
and official SN checkpoints (``module.`` keys, 3 or 2 logits), prints the softmaxed
[IN, LN, BN] shares of means and variances of every SN layer in depth order with their
average over layers, and draws the paper-style stacked-bar figure (one column per
checkpoint, side by side). Switchable Whitening layers (``sw_mean_weight``/``sw_var_weight``
logits) get their own table, the softmaxed weights of the means and of the covariances in
the authors' order [BW, IW, BN, IN, LN] (the branches of the layer's sw_type), and are rows
and bars of the same CSV/JSON file and figure (``sn_mm.analysis.sw_ratios``). Files are
loaded with ``torch.load(weights_only=True)`` plus the allowlist of objects mmengine
writes (``sn_mm.checkpoint.safe_load``).

``--compare``: the cross-task figure and table (``sn_mm.analysis.compare``), by default
from the detection demo, the two segmentation demos and the digits study outputs.
``LABEL=a.pth,b.pth,c.pth`` (or one ``--labels`` value repeated for several files) makes
the checkpoints one task over seeds: mean shares, every seed shown, and a leaning named
only where every seed makes it.
``--trajectories``: share curves over training from a run's ``vis_data/scalars.json``
(``SNRatioHook``; ``sn_mm.analysis.trajectories``).
``--en-ratios``: the distribution of Exemplar Normalization's per-sample ratios over the
config's val set, per EN layer and per class (``sn_mm.analysis.exemplar``).

``--branches``: the pool (names of ``sn_mm.ops.pool``, in logit order) of the layers with
as many logits; a checkpoint holds logits, not names, so counts other than 3 and 2 need it
(a GN branch adds ``mean_GN``/``var_GN`` columns and a GN bar).
"""
import argparse
import os
import pickle
import sys

from sn_mm.analysis import format_table, plot_ratios, write_table
from sn_mm.analysis.sw_ratios import format_sw_table, layers_from_checkpoint, split_kinds
from sn_mm.checkpoint import branches_arg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoints', nargs='*', help='checkpoint files (.pth); with '
                        '--compare also a tools/study.py results.json')
    parser.add_argument('--compare', action='store_true', help='cross-task comparison '
                        '(default sources: the demo and study outputs under work_dirs/)')
    parser.add_argument('--trajectories', metavar='RUN', help='plot the share trajectories '
                        'of a run (work_dir, vis_data folder or scalars.json)')
    parser.add_argument('--en-ratios', nargs=2, metavar=('CONFIG', 'CKPT'),
                        help='per-sample EN ratios of CONFIG + CKPT over its val set')
    parser.add_argument('--max-batches', type=int, default=None,
                        help='--en-ratios: only the first N val batches')
    parser.add_argument('--layers', action='store_true',
                        help='--trajectories: per-layer curves instead of stage averages')
    parser.add_argument('--groups', nargs='+', default=(),
                        help='--trajectories: only these stages/layers')
    parser.add_argument('--labels', nargs='+', help='one label per checkpoint '
                        '(default: file names)')
    parser.add_argument('--out', help='write the per-layer table to this .csv or .json file')
    parser.add_argument('--plot', help='write the figure to this .png, .pdf or .svg file')
    parser.add_argument('--title', default='', help='figure title')
    parser.add_argument('--quiet', action='store_true', help='do not print the tables')
    parser.add_argument('--branches', type=branches_arg, default=None, metavar='IN,LN,BN,GN',
                        help='the pool of the SN layers with as many logits (needed for '
                             'counts other than 3 [IN, LN, BN] and 2 [IN, LN])')
    args = parser.parse_args(argv)
    if sum(map(bool, (args.compare, args.trajectories, args.en_ratios))) > 1:
        parser.error('--compare, --trajectories and --en-ratios are separate commands; '
                     'give one')
    if args.branches and (args.compare or args.trajectories or args.en_ratios):
        parser.error('--branches applies to checkpoint files, not to --compare, '
                     '--trajectories or --en-ratios')
    if args.en_ratios and args.checkpoints:
        parser.error(f'--en-ratios takes CONFIG CKPT only, got extra {args.checkpoints}')
    if args.max_batches is not None and args.max_batches < 1:
        parser.error(f'--max-batches must be a positive int, got {args.max_batches}')
    if not (args.compare or args.trajectories or args.en_ratios or args.checkpoints):
        parser.error('expected checkpoint files, --compare or --trajectories RUN, or '
                     '--en-ratios CONFIG CKPT')
    tables = (('.csv', '.json', '.md') if args.compare else
              ('.json',) if args.en_ratios else ('.csv', '.json'))
    if args.out and os.path.splitext(args.out)[1].lower() not in tables:
        parser.error(f'--out must end in {" or ".join(tables)}, got {args.out!r}')
    if args.labels and len(args.labels) != len(args.checkpoints):
        parser.error(f'--labels got {len(args.labels)} labels for '
                     f'{len(args.checkpoints)} checkpoints; expected one per checkpoint')
    if args.plot and os.path.splitext(args.plot)[1].lower() not in ('.png', '.pdf', '.svg'):
        parser.error(f'--plot must end in .png, .pdf or .svg, got {args.plot!r}')
    return args


def default_labels(paths):
    names = [os.path.basename(p) for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def main(argv=None):
    args = parse_args(argv)
    if args.compare or args.trajectories or args.en_ratios:
        return extra_command(args)
    labels = args.labels or default_labels(args.checkpoints)
    tables = []
    for label, path in zip(labels, args.checkpoints):
        try:
            layers = layers_from_checkpoint(path, args.branches)
        except (ValueError, FileNotFoundError, pickle.UnpicklingError) as err:
            sys.exit(f'error: {err}')
        tables.append((label, layers))
        if not args.quiet:
            sn, sw = split_kinds(layers)
            for table in ([format_table(label, sn)] if sn else []) + (
                    [format_sw_table(label, sw)] if sw else []):
                print(table)
                print()
    if args.out:
        print(f'table written to {write_table(tables, args.out)}')
    if args.plot:
        print(f'figure written to {plot_ratios(tables, args.plot, title=args.title)}')
    return tables


def extra_command(args):
    from sn_mm.analysis.compare import run_compare
    from sn_mm.analysis.exemplar import run_en_ratios
    from sn_mm.analysis.trajectories import run_trajectories
    try:
        if args.en_ratios:
            return run_en_ratios(*args.en_ratios, max_batches=args.max_batches, out=args.out,
                                 quiet=args.quiet)
        if args.compare:
            return run_compare(args.checkpoints, args.labels, args.plot, args.out, args.title,
                               args.quiet)
        return run_trajectories(args.trajectories, args.plot, args.groups, args.layers,
                                args.title, args.quiet)
    except (ValueError, FileNotFoundError, pickle.UnpicklingError) as err:
        sys.exit(f'error: {err}')


if __name__ == '__main__':
    main()
