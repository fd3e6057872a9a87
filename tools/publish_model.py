"""Publish a checkpoint as OpenMMLab does: weights only, the SHA-256 prefix in the name.

    python tools/publish_model.py IN_FILE OUT_FILE
    # writes OUT_FILE-<first 8 hex digits of its sha256>.pth (OUT_FILE's .pth dropped)

The optimizer, schedulers, message hub and RNG states are dropped (``meta`` and
``state_dict`` kept). sn_mm verifies the hash in such a name whenever it loads the file
(``tools/test.py``, ``load_from``, ``init_cfg=Pretrained``, the converters), so a damaged
copy is an error that names the file, not a silently wrong model.
"""
import argparse
import sys

from sn_mm.checkpoint import publish_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description='Publish a checkpoint (weights + sha256 name)')
    parser.add_argument('in_file', help='input checkpoint (any layout sn_mm reads)')
    parser.add_argument('out_file', help='output name; -<sha256[:8]>.pth is appended')
    args = parser.parse_args(argv)
    try:
        path = publish_checkpoint(args.in_file, args.out_file)
    except (OSError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
