"""Deterministic synthetic instance-segmentation data in real COCO format.

Each image is a textured background (two-colour gradient, oriented stripes, smooth
blotches, pixel noise) with 1..``max_objects`` filled, shaded shapes of four categories
(``circle``, ``square``, ``triangle``, ``star``) at random scales and rotations.
Shapes are painted back to front, so later ones occlude earlier ones.

Conventions (those of the COCO annotation format and ``pycocotools``):

- Every shape is a polygon in absolute pixel coordinates (circles are 48-gons); its
  pixel mask is the polygon rasterized by ``pycocotools.mask.frPyObjects`` — the
  same rasterization COCO evaluation applies to polygon annotations, so the painted
  pixels and the annotation agree exactly.
- ``segmentation`` is the *visible* region: the polygon ``[[x1, y1, x2, y2, ...]]``
  when nothing occludes the shape, otherwise the visible pixel mask as compressed
  RLE (``{"size": [h, w], "counts": str}``), which can hold holes and several parts.
- ``area`` is the visible pixel count, ``bbox`` the tight ``[x, y, w, h]`` box of the
  visible pixels (``pycocotools.mask.area`` / ``toBbox``), ``iscrowd`` is 0.
- About 40% of the shapes are placed near an earlier one, so occlusion is common.
- Placement is rejected (and retried) if it would leave any shape less than
  ``min_visible`` of its own area visible or fewer than ``MIN_VISIBLE_PIXELS``
  pixels, so every annotation is a recognisable object.

The output is a pure function of the arguments: the train and val splits use
independent random streams derived from ``seed``. Layout under ``root``::

    train/000000.jpg ...           val/000000.jpg ...
    annotations/instances_train.json, annotations/instances_val.json
    meta.json                      (generation parameters, for cache checks)
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CLASSES = ('circle', 'square', 'triangle', 'star')
PALETTE = [(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 180, 0)]
MIN_VISIBLE_PIXELS = 48
SPLITS = ('train', 'val')
FORMAT_VERSION = 2


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
    return int(value)


# ----------------------------------------------------------------------- shapes
def shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float,
                  aspect: float = 1.0) -> np.ndarray:
    """(K, 2) polygon of one shape: centre, circumradius, rotation (rad), aspect."""
    if kind == 'circle':
        t = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t) * aspect, np.sin(t) / aspect], 1)
    elif kind == 'square':
        t = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif kind == 'triangle':
        t = np.array([-0.5, 1 / 6, 5 / 6]) * math.pi
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif kind == 'star':
        t = -0.5 * math.pi + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
    else:
        raise ValueError(f'unknown shape {kind!r}; expected one of {CLASSES}')
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return pts @ rot.T * radius + np.array([cx, cy])


def polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 mask of a polygon, rasterized exactly as COCO evaluation does."""
    rle = mask_utils.frPyObjects([polygon.reshape(-1).tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rle))


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a (H, W) binary mask, JSON-ready (``counts`` is str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


# ------------------------------------------------------------------- textures
def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) smooth noise in [0, 1]: a small random grid upsampled bicubically."""
    grid = rng.random((cells, cells)).astype(np.float32)
    out = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float RGB texture in [0, 1]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0.15, 0.85, (2, 3))
    a = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(a) + yy * math.sin(a))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    img = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    b = rng.uniform(0, 2 * math.pi)
    period = rng.uniform(6, 40)
    stripes = np.sin(2 * math.pi * (xx * math.cos(b) + yy * math.sin(b)) / period
                     + rng.uniform(0, 2 * math.pi))
    img = img + rng.uniform(0.03, 0.15) * stripes[..., None] * rng.uniform(-1, 1, 3)
    blot = _smooth_noise(rng, height, width, int(rng.integers(3, 9))) - 0.5
    img = img + rng.uniform(0.1, 0.4) * blot[..., None] * rng.uniform(-1, 1, 3)
    img = img + rng.normal(0, rng.uniform(0.01, 0.05), (height, width, 3))
    return img


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray,
           polygon: np.ndarray) -> None:
    """Fill ``mask`` with a shaded, lightly textured colour contrasting with ``img``."""
    region = img[mask.astype(bool)]
    local = region.mean(0) if len(region) else np.full(3, 0.5)
    for _ in range(20):
        colour = rng.uniform(0.0, 1.0, 3)
        if np.abs(colour - local).max() > 0.35:
            break
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    cx, cy = polygon.mean(0)
    span = max(float(np.ptp(polygon, 0).max()), 1.0)
    shade = ((xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)) / span
    fill = colour + rng.uniform(0.1, 0.3) * shade[..., None]
    fill = fill + rng.normal(0, 0.02, (h, w, 3))
    sel = mask.astype(bool)
    img[sel] = fill[sel]


# --------------------------------------------------------------------- images
def _place_objects(rng: np.random.Generator, height: int, width: int, num: int,
                   min_size: float, max_size: float, min_visible: float
                   ) -> List[Tuple[int, np.ndarray, np.ndarray]]:
    """Back-to-front list of (class index, polygon, full mask) satisfying visibility."""
    placed: List[Tuple[int, np.ndarray, np.ndarray]] = []
    for _ in range(num):
        for _attempt in range(30):
            cls = int(rng.integers(len(CLASSES)))
            size = math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
            radius = size / 2
            if placed and rng.random() < 0.4:  # overlap an earlier shape on purpose
                px, py = placed[int(rng.integers(len(placed)))][1].mean(0)
                cx = float(np.clip(px + rng.normal(0, radius), 0, width))
                cy = float(np.clip(py + rng.normal(0, radius), 0, height))
            else:
                cx = rng.uniform(radius * 0.6, width - radius * 0.6)
                cy = rng.uniform(radius * 0.6, height - radius * 0.6)
            aspect = rng.uniform(0.85, 1.15) if CLASSES[cls] == 'circle' else 1.0
            poly = shape_polygon(CLASSES[cls], cx, cy, radius, rng.uniform(0, 2 * math.pi),
                                 aspect)
            poly[:, 0] = np.clip(poly[:, 0], 0, width)
            poly[:, 1] = np.clip(poly[:, 1], 0, height)
            poly = np.round(poly, 2)  # exactly the coordinates written to the json
            full = polygon_mask(poly, height, width)
            if full.sum() < MIN_VISIBLE_PIXELS * 2:
                continue
            candidate = placed + [(cls, poly, full)]
            if _visible_ok([m for _, _, m in candidate], min_visible):
                placed = candidate
                break
    return placed


def _visible_masks(full_masks: List[np.ndarray]) -> List[np.ndarray]:
    """Visible part of each back-to-front mask (minus the union of those above it)."""
    visible, above = [], np.zeros_like(full_masks[0]) if full_masks else None
    for m in reversed(full_masks):
        visible.append(m & (1 - above))
        above = above | m
    return visible[::-1]


def _visible_ok(full_masks: List[np.ndarray], min_visible: float) -> bool:
    for full, vis in zip(full_masks, _visible_masks(full_masks)):
        area = int(vis.sum())
        if area < MIN_VISIBLE_PIXELS or area < min_visible * int(full.sum()):
            return False
    return True


def render_image(rng: np.random.Generator, height: int, width: int, max_objects: int,
                 min_size: float, max_size: float, min_visible: float
                 ) -> Tuple[np.ndarray, List[dict]]:
    """One RGB uint8 image and its annotations (without ids)."""
    img = _background(rng, height, width)
    objects = _place_objects(rng, height, width, int(rng.integers(1, max_objects + 1)),
                             min_size, max_size, min_visible)
    for _, poly, full in objects:
        _paint(rng, img, full, poly)
    anns = []
    if objects:
        visible = _visible_masks([m for _, _, m in objects])
        for (cls, poly, full), vis in zip(objects, visible):
            if np.array_equal(vis, full):
                segmentation = [[float(v) for v in poly.reshape(-1)]]
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            else:
                segmentation = encode_rle(vis)
                rle = mask_utils.encode(np.asfortranarray(vis))
            anns.append(dict(category_id=cls + 1, segmentation=segmentation,
                             area=float(mask_utils.area(rle)),
                             bbox=[round(float(v), 2) for v in mask_utils.toBbox(rle)],
                             iscrowd=0))
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), anns


# ---------------------------------------------------------------------- dataset
def default_params(**overrides) -> Dict:
    """Generation parameters (defaults of :func:`make_coco_demo`) with overrides."""
    params = dict(num_train=400, num_val=80, image_size=256, max_objects=5,
                  min_size=20.0, max_size=110.0, min_visible=0.4, seed=0)
    unknown = set(overrides) - set(params)
    if unknown:
        raise TypeError(f'unknown coco-demo parameter(s) {sorted(unknown)}; '
                        f'expected some of {sorted(params)}')
    params.update(overrides)
    return params


def _validate(p: Dict) -> None:
    _check_int('num_train', p['num_train'], 1)
    _check_int('num_val', p['num_val'], 1)
    _check_int('image_size', p['image_size'], 32)
    _check_int('max_objects', p['max_objects'], 1)
    _check_int('seed', p['seed'], 0)
    if not 4 <= p['min_size'] <= p['max_size'] <= p['image_size']:
        raise ValueError(f'need 4 <= min_size <= max_size <= image_size, got min_size='
                         f'{p["min_size"]!r}, max_size={p["max_size"]!r}, '
                         f'image_size={p["image_size"]!r}')
    if not 0.0 < p['min_visible'] <= 1.0:
        raise ValueError(f'min_visible must be in (0, 1], got {p["min_visible"]!r}')


def coco_json(split_images: List[dict], split_anns: List[dict]) -> dict:
    return dict(
        info=dict(description='sn_mm synthetic shapes (COCO format)', version='1.0',
                  year=2024, contributor='sn_mm', date_created='2024-01-01'),
        licenses=[dict(id=1, name='CC0 1.0', url='https://creativecommons.org/publicdomain/zero/1.0/')],
        images=split_images, annotations=split_anns,
        categories=[dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CLASSES)])


def ann_file(root: str, split: str) -> str:
    return osp.join(root, 'annotations', f'instances_{split}.json')


def make_coco_demo(root: str, **params) -> Dict[str, str]:
    """Write the dataset under ``root`` (overwriting); returns the annotation paths.

    Params (see :func:`default_params`): ``num_train``, ``num_val``, ``image_size``
    (square images, pixels), ``max_objects`` per image, ``min_size``/``max_size``
    (shape extent in pixels, log-uniform), ``min_visible`` (fraction), ``seed``.
    """
    p = default_params(**params)
    _validate(p)
    size = int(p['image_size'])
    seeds = np.random.SeedSequence(int(p['seed'])).spawn(len(SPLITS))
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    out = {}
    for split, seq in zip(SPLITS, seeds):
        rng = np.random.default_rng(seq)
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, anns = [], []
        for idx in range(int(p[f'num_{split}'])):
            img, objs = render_image(rng, size, size, int(p['max_objects']),
                                     float(p['min_size']), float(p['max_size']),
                                     float(p['min_visible']))
            name = f'{idx:06d}.jpg'
            cv2.imwrite(osp.join(root, split, name), img[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=idx + 1, file_name=name, width=size, height=size,
                               license=1))
            for obj in objs:
                anns.append(dict(id=len(anns) + 1, image_id=idx + 1, **obj))
        path = ann_file(root, split)
        with open(path, 'w') as f:
            json.dump(coco_json(images, anns), f)
        out[split] = path
    with open(osp.join(root, 'meta.json'), 'w') as f:
        json.dump(dict(format_version=FORMAT_VERSION, **p), f, indent=1, sort_keys=True)
    return out


def is_generated(root: str, **params) -> bool:
    """True if ``root`` holds a complete dataset made with exactly these parameters."""
    p = default_params(**params)
    try:
        with open(osp.join(root, 'meta.json')) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    if meta != dict(format_version=FORMAT_VERSION, **p):
        return False
    for split in SPLITS:
        if not osp.isfile(ann_file(root, split)):
            return False
        n = int(p[f'num_{split}'])
        if not osp.isfile(osp.join(root, split, f'{n - 1:06d}.jpg')):
            return False
    return True


def ensure_coco_demo(root: str, **params) -> Tuple[Dict[str, str], bool]:
    """Generate the dataset unless an identical one exists; returns (paths, generated)."""
    if is_generated(root, **params):
        return {s: ann_file(root, s) for s in SPLITS}, False
    return make_coco_demo(root, **params), True


def load_split(root: str, split: str) -> Optional[dict]:
    with open(ann_file(root, split)) as f:
        return json.load(f)
