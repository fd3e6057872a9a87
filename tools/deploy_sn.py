#!/usr/bin/env python
"""Turn a trained SN/SSN checkpoint into a model built only of plain, fixed layers.

    python tools/deploy_sn.py CONFIG CHECKPOINT --out FILE.pth [--tol T] [--no-check]
                              [--cfg-options k=v ...]

Writes ``FILE.pth`` (the converted state dict; the per-layer report in its ``meta``) and
``FILE.py``, a config that ``tools/test.py FILE.py FILE.pth`` runs (an ordinary config:
mmdet's own ``tools/test.py`` runs it too): the original config with its model wrapped in
``dict(type='FixedNormModel', model=..., layers=..., conv_biases=...)``.

Every SN/SSN layer whose mean and variance importances are one-hot on the same
normalizer (within ``--tol``: ``1 - max share <= T``; SSN layers are exactly one-hot,
SN layers need ``T > 0`` and are then approximated) becomes BatchNorm2d (folded into its
convolution where the model pairs them), GroupNorm(C, C) (IN) or GroupNorm(1, C) (LN),
with Bessel-corrected variants in SN's default ``'unbiased'`` mode; every other layer a
fixed mixture (no logits, no softmax). Prints per layer what it became and its largest
output deviation on the first test batch (``--no-check``: no batch, no deviations), and
the whole model's largest deviation on that batch. See docs/ssn.md.
"""
import argparse
import sys

from mmengine.config import DictAction

from sn_mm.deploy import format_report
from sn_mm.deploy.mm import deploy_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='SN/SSN checkpoint (.pth)')
    parser.add_argument('--out', required=True, help='converted checkpoint (.pth); the config '
                        'is written next to it (.py)')
    parser.add_argument('--tol', type=float, default=0.0,
                        help='count a share vector as one-hot when 1 - max <= TOL (default 0)')
    parser.add_argument('--no-check', action='store_true',
                        help='do not run a test batch (no deviations are measured)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    args = parser.parse_args(argv)
    if not 0.0 <= args.tol < 1.0:
        parser.error(f'--tol must be in [0, 1), got {args.tol}')
    if not args.out.endswith('.pth'):
        parser.error(f'--out must end in .pth, got {args.out!r}')
    return args


def main(argv=None):
    args = parse_args(argv)
    from sn_mm.checkpoint import NotACheckpointError
    try:
        result = deploy_checkpoint(args.config, args.checkpoint, args.out, tol=args.tol,
                                   cfg_options=args.cfg_options, check=not args.no_check)
    except NotACheckpointError as err:  # damaged, truncated or foreign file: no traceback
        sys.exit(f'error: {err}')
    print(format_report(result['conversion'].layers))
    deviation = result['model_max_deviation']
    print('model outputs on the first test batch, max |converted - original|: '
          + ('not measured' if deviation is None else f'{deviation:.3e}'))
    print(f'checkpoint: {result["checkpoint"]}')
    print(f'config:     {result["config"]}')
    return result


if __name__ == '__main__':
    main()
