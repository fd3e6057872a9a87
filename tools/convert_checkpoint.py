"""Convert and inspect SN ResNet checkpoints (library: ``sn_mm.checkpoint_convert``).

    # official SN ImageNet checkpoint -> clean mmengine checkpoint (backbone init_cfg)
    python tools/convert_checkpoint.py official resnet50v1_sn_top1_76.92.pth r50_sn.pth
    #   ... keys prefixed for ``load_from`` of a whole detector/segmentor:
    python tools/convert_checkpoint.py official IN.pth OUT.pth --prefix backbone.

    # torchvision-layout BN ResNet -> SN initialization (logits uniform, or BN share p)
    python tools/convert_checkpoint.py from-bn resnet50-0676ba61.pth r50_sn_init.pth
    python tools/convert_checkpoint.py from-bn resnet50-0676ba61.pth OUT.pth --bn-share 0.6

    # list each SN layer's importance shares [IN, LN, BN] (mean | var; softmax, sparsestmax for SSN)
    python tools/convert_checkpoint.py print r50_sn.pth        # or: --print r50_sn.pth
    #   ... a model with another pool (any count but 3 or 2 logits needs it):
    python tools/convert_checkpoint.py print gn_sn.pth --branches IN,LN,BN,GN

Inputs may be local paths or any mmengine scheme (https://, torchvision://, ...); they
are loaded with ``weights_only=True`` and sn_mm's allowlist.
"""
import argparse
import json
import os.path as osp
import sys

import torch

from sn_mm.checkpoint import branches_arg
from sn_mm.checkpoint_convert import (bn_to_sn, describe_sn, format_sn_table,
                                      official_to_mmengine, read_checkpoint,
                                      split_checkpoint, strip_prefix)


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == '--print':  # --print FILE == print FILE
        argv[0] = 'print'
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    off = sub.add_parser('official', help='official SN checkpoint -> clean mmengine checkpoint')
    off.add_argument('src')
    off.add_argument('dst')
    off.add_argument('--prefix', default='', help="key prefix, e.g. 'backbone.'")
    off.add_argument('--keep-fc', action='store_true', help='keep the ImageNet fc.* weights')

    bn = sub.add_parser('from-bn', help='BN ResNet (torchvision layout) -> SN initialization')
    bn.add_argument('src')
    bn.add_argument('dst')
    bn.add_argument('--bn-share', type=float, default=None,
                    help='softmax share of BN in (0, 1) for mean and variance (IN, LN get '
                         'the rest equally); default: uniform logits (1/3 each)')
    bn.add_argument('--no-bn-branch', action='store_true',
                    help='SN with using_bn=False: 2 logits [IN, LN], running stats dropped')
    bn.add_argument('--strip-prefix', default='module.',
                    help="prefix removed from the input keys (default 'module.')")
    bn.add_argument('--prefix', default='', help="key prefix, e.g. 'backbone.'")
    bn.add_argument('--keep-fc', action='store_true', help='keep the ImageNet fc.* weights')

    show = sub.add_parser('print', help="list each SN layer's importance shares")
    show.add_argument('src')
    show.add_argument('--json', action='store_true', help='machine-readable output')
    show.add_argument('--branches', type=branches_arg, default=None, metavar='IN,LN,BN,GN',
                      help='the pool of the SN layers (names of sn_mm.ops.pool, in logit '
                           'order) for layers with as many logits; needed for counts other '
                           'than 3 [IN, LN, BN] and 2 [IN, LN]')
    return parser.parse_args(argv)


def _save(obj, dst):
    if osp.abspath(dst) == osp.abspath(getattr(_save, 'src', '')):
        raise ValueError(f'refusing to overwrite the input file {dst}')
    torch.save(obj, dst)
    print(f'wrote {dst}: {len(obj["state_dict"])} tensors')


def main(argv=None):
    args = parse_args(argv)
    from sn_mm.checkpoint import NotACheckpointError
    try:
        ckpt = read_checkpoint(args.src)
    except (NotACheckpointError, FileNotFoundError) as err:  # no traceback for a bad file
        sys.exit(f'error: {err}')
    _save.src = args.src
    if args.command == 'official':
        out = official_to_mmengine(ckpt, prefix=args.prefix, keep_fc=args.keep_fc,
                                   source=args.src)
        _save(out, args.dst)
        print(f'{out["meta"]["num_sn_layers"]} SN layers, using_bn={out["meta"]["using_bn"]}')
    elif args.command == 'from-bn':
        state_dict, _ = split_checkpoint(ckpt)
        state_dict = strip_prefix(state_dict, args.strip_prefix)
        converted = bn_to_sn(state_dict, bn_share=args.bn_share,
                             using_bn=not args.no_bn_branch, keep_fc=args.keep_fc,
                             prefix=args.prefix)
        meta = dict(converted_by='sn_mm tools/convert_checkpoint.py from-bn', source=args.src,
                    bn_share=args.bn_share, using_bn=not args.no_bn_branch)
        _save(dict(meta=meta, state_dict=converted), args.dst)
    else:
        state_dict, _ = split_checkpoint(ckpt)
        try:
            rows = describe_sn(strip_prefix(state_dict, 'module.'), args.branches)
        except ValueError as err:
            sys.exit(f'error: {args.src}: {err}')
        print(json.dumps(rows, indent=1) if args.json else format_sn_table(rows))


if __name__ == '__main__':
    main()
