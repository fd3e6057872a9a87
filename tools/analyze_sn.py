#!/usr/bin/env python
"""Per-layer SN importance ratios of one or more checkpoints: table, CSV/JSON, figure.

    python tools/analyze_sn.py CKPT [CKPT ...] [--labels A B ...] [--out table.csv|.json]
                               [--plot fig.png|.pdf] [--title TEXT] [--quiet]

Reads mmengine checkpoints (``{'state_dict': {'backbone.layer1.0.sn1.mean_weight': ...}}``)
and official SN checkpoints (``module.`` keys, 3 or 2 logits), prints the softmaxed
[IN, LN, BN] shares of means and variances of every SN layer in depth order with their
average over layers, and draws the paper-style stacked-bar figure (one column per
checkpoint, side by side). Files are loaded with ``torch.load(weights_only=True)`` plus
the allowlist of objects mmengine writes (``sn_mm.engine.checkpoint.safe_load``).
"""
import argparse
import os
import pickle
import sys

from sn_mm.analysis import format_table, plot_ratios, ratios_from_checkpoint, write_table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoints', nargs='+', help='checkpoint files (.pth)')
    parser.add_argument('--labels', nargs='+', help='one label per checkpoint '
                        '(default: file names)')
    parser.add_argument('--out', help='write the per-layer table to this .csv or .json file')
    parser.add_argument('--plot', help='write the figure to this .png, .pdf or .svg file')
    parser.add_argument('--title', default='', help='figure title')
    parser.add_argument('--quiet', action='store_true', help='do not print the tables')
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.checkpoints):
        parser.error(f'--labels got {len(args.labels)} labels for '
                     f'{len(args.checkpoints)} checkpoints; expected one per checkpoint')
    if args.out and os.path.splitext(args.out)[1].lower() not in ('.csv', '.json'):
        parser.error(f'--out must end in .csv or .json, got {args.out!r}')
    if args.plot and os.path.splitext(args.plot)[1].lower() not in ('.png', '.pdf', '.svg'):
        parser.error(f'--plot must end in .png, .pdf or .svg, got {args.plot!r}')
    return args


def default_labels(paths):
    names = [os.path.basename(p) for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def main(argv=None):
    args = parse_args(argv)
    labels = args.labels or default_labels(args.checkpoints)
    tables = []
    for label, path in zip(labels, args.checkpoints):
        try:
            layers = ratios_from_checkpoint(path)
        except (ValueError, FileNotFoundError, pickle.UnpicklingError) as err:
            sys.exit(f'error: {err}')
        tables.append((label, layers))
        if not args.quiet:
            print(format_table(label, layers))
            print()
    if args.out:
        print(f'table written to {write_table(tables, args.out)}')
    if args.plot:
        print(f'figure written to {plot_ratios(tables, args.plot, title=args.title)}')
    return tables


if __name__ == '__main__':
    main()
