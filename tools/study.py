#!/usr/bin/env python
"""Small-scale study of what SN layers learn, on scikit-learn's bundled ``load_digits``.

    python tools/study.py [--out work_dirs/sn_study] [--quick] [--workers 1] [--epochs N]
                          [--seeds 0 1 2] [--batch-sizes 2 4 8 16 32]

SN and BN at per-device batch sizes 2..32 (IN, LN, GN once), plus one-factor-at-a-time
SN sweeps (depth, initialization, schedule, solver, shared ratios, logit lr); writes
``results.json``, ``report.md`` and three figures to ``--out``. The model, training,
statistics and figures are in ``sn_mm.analysis.study`` (its docstring has the details);
docs/analysis.md discusses the results.
"""
import argparse

from sn_mm.analysis.study import BASE, QUICK, run_study


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='work_dirs/sn_study', help='output directory')
    parser.add_argument('--quick', action='store_true',
                        help='smoke run (batch sizes 2 and 8, SN/BN/GN, 1 seed, 1 epoch on '
                        '192 images, one value per factor): every step in well under a minute')
    parser.add_argument('--batch-sizes', type=int, nargs='+', help='images per device')
    parser.add_argument('--seeds', type=int, nargs='+', help='random seeds (accuracy sweep)')
    parser.add_argument('--factor-seeds', type=int, default=1,
                        help='how many of the seeds the factor sweeps use (default 1)')
    parser.add_argument('--epochs', type=int, help='training epochs per run (default 4)')
    parser.add_argument('--logit-lr-mult', type=float, default=BASE['logit_lr_mult'],
                        help='learning-rate multiplier of the SN logits in the baseline')
    parser.add_argument('--total-batch', type=int, default=32, help='images per step')
    parser.add_argument('--workers', type=int, default=1, help='parallel processes')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per process')
    args = parser.parse_args(argv)
    q = QUICK if args.quick else dict(batch_sizes=(2, 4, 8, 16, 32), seeds=(0, 1, 2),
                                      epochs=4, num_train=None)
    args.batch_sizes = sorted(set(args.batch_sizes or q['batch_sizes']))
    args.seeds = args.seeds or list(q['seeds'])
    args.epochs = q['epochs'] if args.epochs is None else args.epochs
    args.num_train = q['num_train']
    for b in args.batch_sizes:
        if b < 2 or args.total_batch % b:
            parser.error(f'--batch-sizes: {b} must be >= 2 and divide --total-batch '
                         f'{args.total_batch}')
    for name in ('epochs', 'workers', 'threads', 'factor_seeds'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.logit_lr_mult <= 0:
        parser.error(f'--logit-lr-mult must be > 0, got {args.logit_lr_mult}')
    return args


def main(argv=None):
    a = parse_args(argv)
    return run_study(a.out, a.batch_sizes, a.seeds, a.factor_seeds, a.epochs, a.logit_lr_mult,
                     a.total_batch, a.workers, a.threads, a.quick, a.num_train,
                     log=lambda line: print(line, flush=True))


if __name__ == '__main__':
    main()
