"""Datasets shipped with sn_mm: the synthetic COCO-format demo data and the synthetic
semantic-segmentation demo data in the real Cityscapes / ADE20K layouts."""
from .coco_demo import CLASSES, PALETTE, ensure_coco_demo, is_generated, make_coco_demo
from .seg_demo import ensure_seg_demo, make_seg_demo

__all__ = ['CLASSES', 'PALETTE', 'ensure_coco_demo', 'is_generated', 'make_coco_demo',
           'ensure_seg_demo', 'make_seg_demo']
