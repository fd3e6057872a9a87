"""Export an mmseg segmentor or an mmdet detector's backbone + neck with SN to ONNX, and
check it with onnxruntime (library: ``sn_mm.apis.export``).

    python tools/export_onnx.py CONFIG CHECKPOINT --out FILE [--shape H W] [--opset 18]
                                [--part {tensor,features,backbone}] [--batch 1]
                                [--tol 1e-4] [--cfg-options k=v ...]

What is exported (``--part``; the default depends on the model):
  tensor    model(x, mode='tensor'): the whole network without post-processing. Default
            for an mmseg segmentor (decode head logits at the head's resolution, before
            the resize and argmax of predict).
  features  model.extract_feat(x): backbone + neck (FPN). Default for an mmdet detector:
            a two-stage detector's heads (RPN proposals with NMS, RoIAlign) need mmcv ops
            and data-dependent shapes that standard ONNX ops do not express, so they are
            not exported.
  backbone  model.backbone(x) only.

The graph's input is the batch after the data preprocessor (normalized, padded):
(batch, 3, H, W) float32, a static shape. SN exports in eval mode as standard ONNX ops
(SyncSN as SN). The tool checks that the graph uses the default ONNX domain only, runs
onnxruntime (CPUExecutionProvider) and PyTorch on the same random input, prints the max
abs deviation, and exits with status 1 when it exceeds --tol (the file is kept).
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

import sn_mm  # noqa: F401  registers SN/SyncSN and safe checkpoint loading
from sn_mm.apis.export import DEFAULT_OPSET, PARTS, ParityError, export_and_check


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 2)[2])
    parser.add_argument('config', help='config file path (mmseg or mmdet)')
    parser.add_argument('checkpoint', help='checkpoint file (local path or mmengine URI)')
    parser.add_argument('--out', required=True, help='the ONNX file to write')
    parser.add_argument('--shape', nargs=2, type=positive_int, metavar=('H', 'W'),
                        help="input height and width (default: the data preprocessor's "
                             'size, else 800 1344); mmdet pads to multiples of 32')
    parser.add_argument('--batch', type=positive_int, default=1, help='batch size (1)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset, >= 17 (default {DEFAULT_OPSET}: torch\'s dynamo '
                             'exporter writes 18 or newer)')
    parser.add_argument('--part', choices=PARTS, default=None,
                        help="what to export (default: 'tensor' for a segmentor, "
                             "'features' = backbone + neck for a detector)")
    parser.add_argument('--tol', type=float, default=1e-4,
                        help='max abs deviation allowed between onnxruntime and PyTorch')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value (xxx=yyy format)')
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config {args.config!r} does not exist (or is not a file)')
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        parser.error(f'checkpoint {args.checkpoint!r} does not exist (or is not a file)')
    out_dir = osp.dirname(osp.abspath(args.out))
    if not osp.isdir(out_dir):
        parser.error(f'--out {args.out!r}: directory {out_dir!r} does not exist')
    if args.opset < 17:
        parser.error(f'--opset must be >= 17, got {args.opset}')
    if not args.tol >= 0:
        parser.error(f'--tol must be >= 0, got {args.tol}')
    return args


def main(argv=None):
    args = parse_args(argv)
    from sn_mm.checkpoint import NotACheckpointError
    try:
        report = export_and_check(args.config, args.checkpoint, args.out, shape=args.shape,
                                  opset=args.opset, part=args.part,
                                  cfg_options=args.cfg_options, tol=args.tol,
                                  batch=args.batch)
    except ParityError as error:
        print(error, file=sys.stderr)
        sys.exit(1)
    except NotACheckpointError as error:  # damaged, truncated or foreign file
        sys.exit(f'error: {error}')
    print(report.summary())


if __name__ == '__main__':
    main()
