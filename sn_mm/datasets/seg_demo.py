"""Deterministic synthetic semantic-segmentation data in the real Cityscapes and ADE20K layouts.

The files are read by MMSegmentation's own ``CityscapesDataset`` and ``ADE20KDataset``
(no custom dataset class), so a config written for the demo differs from a real one only
in ``data_root``, the crop size and the schedule.

Layouts (exactly those of the official datasets, see ``mmseg/datasets/{cityscapes,ade}.py``):

- **Cityscapes** (``layout='cityscapes'``)::

      leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png   (RGB)
      gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelTrainIds.png

  Labels are *train ids* 0..18 in mmseg's ``CityscapesDataset`` class order (road,
  sidewalk, building, ..., bicycle) and 255 = ignore (here: the ego-vehicle hood at the
  bottom of some images, as in the real data). Images are ``width x height`` (2:1).

- **ADE20K** (``layout='ade20k'``)::

      images/{training,validation}/ADE_{train,val}_<i:08d>.jpg                     (RGB, JPEG)
      annotations/{training,validation}/ADE_{train,val}_<i:08d>.png

  Labels are 0..150 with 0 = "other" and ``k`` = class ``k - 1`` of mmseg's
  ``ADE20KDataset``; with ``reduce_zero_label=True`` (mmseg's default for ADE20K)
  0 becomes 255 (ignored) and ``k`` becomes ``k - 1``. Image sizes vary per image,
  as in ADE20K.

Scenes: the Cityscapes demo paints street scenes (sky, building rows with window grids,
vegetation, road with sidewalks, terrain, walls, fences, poles with signs and lights,
cars/trucks/buses/trains scaled by perspective, people, riders on bicycles and
motorcycles) using all 19 train ids; the ADE20K demo paints rooms (ceiling, walls,
floor, windows with curtains, paintings, doors, cabinets, shelves, rugs, beds, sofas
with cushions, tables, chairs, lamps, plants, people) using :data:`ADE20K_DEMO_CLASSES`
(18 of the 150 classes) plus "other" (0). Each class has a base colour and a texture
(window grid, bricks, tiles, stripes, blotches, pixel noise, gradient); colours are
jittered per instance, several classes share colour families (road/sidewalk,
wall/floor/ceiling colours are drawn per image in ADE20K), and every image gets a
random exposure (gain, offset, colour cast) and sensor noise — so the model must use
texture, shape and context, and per-image statistics vary (where IN/LN help).

Determinism: the output is a pure function of the arguments; every image has its own
random stream derived from ``(seed, layout, split, index)``. ``meta.json`` at the
root records the arguments, and :func:`ensure_seg_demo` regenerates only when they
differ.
"""
import json
import math
import os
import os.path as osp
import shutil
from typing import Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

LAYOUTS = ('cityscapes', 'ade20k')
FORMAT_VERSION = 2  # bump whenever the generated pixels change
IGNORE_INDEX = 255

#: mmseg ``CityscapesDataset`` classes, index = train id.
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole',
                      'traffic light', 'traffic sign', 'vegetation', 'terrain', 'sky',
                      'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
                      'bicycle')
CITYSCAPES_TRAIN_CITIES = ('aachen', 'bremen', 'zurich')
CITYSCAPES_VAL_CITIES = ('frankfurt', 'lindau')

#: ADE20K classes used by the demo: name -> index in mmseg's ``ADE20KDataset`` classes
#: (0-based, i.e. after ``reduce_zero_label``); the annotation PNG stores index + 1.
ADE20K_DEMO_CLASSES = {
    'wall': 0, 'floor': 3, 'ceiling': 5, 'bed ': 7, 'windowpane': 8, 'cabinet': 10,
    'person': 12, 'door': 14, 'table': 15, 'plant': 17, 'curtain': 18, 'chair': 19,
    'painting': 22, 'sofa': 23, 'shelf': 24, 'rug': 28, 'lamp': 36, 'cushion': 39,
}
ADE20K_NUM_CLASSES = 150
ADE20K_OTHER = 0  # value in the annotation file; ignored after reduce_zero_label


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
    return int(value)


def _check_size(name: str, value, low: int = 32) -> Tuple[int, int]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       and v >= low for v in value)):
        raise ValueError(f'{name} must be a (height, width) pair of ints >= {low}, got {value!r}')
    return int(value[0]), int(value[1])


# ---------------------------------------------------------------------- textures
def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    gh, gw = height // cell + 2, width // cell + 2
    coarse = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    fine = cv2.resize(coarse, (gw * cell, gh * cell), interpolation=cv2.INTER_LINEAR)
    return fine[:height, :width]


def _texture(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
             period: float) -> np.ndarray:
    """(H, W) pattern in about [-1, 1] for one painted instance."""
    h, w = yy.shape
    phase = rng.uniform(0, 2 * math.pi)
    if kind == 'flat':
        return np.zeros((h, w), np.float32)
    if kind == 'noise':
        return rng.standard_normal((h, w)).astype(np.float32) * 0.6
    if kind == 'blotch':
        return _smooth_noise(rng, h, w, max(2, int(period)))
    if kind == 'hstripes':
        return np.sin(2 * math.pi * yy / period + phase).astype(np.float32)
    if kind == 'vstripes':
        return np.sin(2 * math.pi * xx / period + phase).astype(np.float32)
    if kind == 'grid':  # window grid / tiles: dark cells on a lighter frame
        p = int(period)
        oy, ox = rng.integers(0, p, 2)
        cells = (((yy + oy) % p) < p * 0.55) & (((xx + ox) % p) < p * 0.55)
        return np.where(cells, -1.0, 0.6).astype(np.float32)
    if kind == 'bricks':
        p = int(period)
        row = (yy // p).astype(np.int64)
        mortar = ((yy % p) == 0) | (((xx + (row % 2) * p) % (2 * p)) == 0)
        return np.where(mortar, 1.0, -0.3).astype(np.float32)
    if kind == 'checker':
        p = int(period)
        return np.where(((yy // p) + (xx // p)) % 2 == 0, 0.8, -0.8).astype(np.float32)
    if kind == 'vgradient':
        return ((yy / max(h - 1, 1)) * 2 - 1).astype(np.float32)
    raise ValueError(f'unknown texture {kind!r}')


class _Canvas:
    """Label map + float RGB image; ``paint`` writes one instance of a class."""

    def __init__(self, height: int, width: int, rng: np.random.Generator,
                 styles: Dict[int, Tuple[Sequence[float], str, float, float]],
                 fill_label: int):
        self.h, self.w, self.rng, self.styles = height, width, rng, styles
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.label = np.full((height, width), fill_label, np.uint8)
        self.image = np.zeros((height, width, 3), np.float32)

    def paint(self, mask: np.ndarray, label: int, style_key: Optional[int] = None,
              color: Optional[Sequence[float]] = None, jitter: float = 18.0) -> None:
        if not mask.any():
            return
        base, kind, amp, period = self.styles[label if style_key is None else style_key]
        base = np.asarray(base if color is None else color, np.float32)
        base = base + self.rng.uniform(-jitter, jitter, 3)
        tex = _texture(kind, self.rng, self.yy, self.xx, period)
        value = base[None, None, :] + amp * tex[..., None]
        self.image[mask] = value[mask]
        self.label[mask] = label

    # shape helpers (boolean masks)
    def rect(self, x0, y0, x1, y1) -> np.ndarray:
        x0, x1 = sorted((int(round(x0)), int(round(x1))))
        y0, y1 = sorted((int(round(y0)), int(round(y1))))
        m = np.zeros((self.h, self.w), bool)
        m[max(y0, 0):max(min(y1, self.h), 0), max(x0, 0):max(min(x1, self.w), 0)] = True
        return m

    def ellipse(self, cx, cy, rx, ry) -> np.ndarray:
        return ((self.xx - cx) / max(rx, 0.5)) ** 2 + ((self.yy - cy) / max(ry, 0.5)) ** 2 <= 1.0

    def trapezoid(self, y0, y1, left0, right0, left1, right1) -> np.ndarray:
        """Rows y0..y1 with x-range interpolated from [left0, right0] to [left1, right1]."""
        t = np.clip((self.yy - y0) / max(y1 - y0, 1e-6), 0.0, 1.0)
        left = left0 + (left1 - left0) * t
        right = right0 + (right1 - right0) * t
        return (self.yy >= y0) & (self.yy < y1) & (self.xx >= left) & (self.xx < right)

    def finish(self, noise_sigma: float = 5.0) -> np.ndarray:
        """Apply the per-image exposure (gain, offset, colour cast) and sensor noise."""
        rng = self.rng
        gain = rng.uniform(0.6, 1.4)
        offset = rng.uniform(-25.0, 25.0)
        cast = rng.uniform(0.9, 1.1, 3).astype(np.float32)
        img = self.image * gain * cast[None, None, :] + offset
        img += rng.standard_normal(img.shape).astype(np.float32) * noise_sigma
        return np.clip(np.round(img), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------- cityscapes
# train id -> (base RGB, texture, texture amplitude, texture period)
_CS = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}
_CITYSCAPES_STYLES = {
    _CS['road']: ((95, 92, 100), 'noise', 14.0, 1),
    _CS['sidewalk']: ((135, 125, 125), 'grid', 16.0, 6),
    _CS['building']: ((120, 105, 95), 'grid', 30.0, 8),
    _CS['wall']: ((160, 145, 120), 'bricks', 25.0, 4),
    _CS['fence']: ((150, 125, 100), 'vstripes', 35.0, 4),
    _CS['pole']: ((125, 125, 130), 'flat', 0.0, 1),
    _CS['traffic light']: ((45, 45, 40), 'hstripes', 40.0, 5),
    _CS['traffic sign']: ((225, 200, 40), 'flat', 0.0, 1),
    _CS['vegetation']: ((70, 125, 45), 'blotch', 35.0, 3),
    _CS['terrain']: ((135, 150, 80), 'noise', 18.0, 1),
    _CS['sky']: ((135, 175, 225), 'vgradient', 25.0, 1),
    _CS['person']: ((200, 70, 80), 'noise', 12.0, 1),
    _CS['rider']: ((230, 95, 45), 'noise', 12.0, 1),
    _CS['car']: ((45, 65, 165), 'vgradient', 30.0, 1),
    _CS['truck']: ((70, 80, 100), 'hstripes', 15.0, 6),
    _CS['bus']: ((40, 120, 125), 'grid', 25.0, 7),
    _CS['train']: ((80, 95, 115), 'hstripes', 25.0, 3),
    _CS['motorcycle']: ((70, 45, 200), 'flat', 0.0, 1),
    _CS['bicycle']: ((150, 35, 70), 'flat', 0.0, 1),
    IGNORE_INDEX: ((30, 30, 32), 'vgradient', 10.0, 1),
}


def _cityscapes_scene(height: int, width: int, rng: np.random.Generator):
    c = _Canvas(height, width, rng, _CITYSCAPES_STYLES, _CS['sky'])
    H, W = float(height), float(width)
    c.paint(np.ones((height, width), bool), _CS['sky'], jitter=25.0)
    horizon = H * rng.uniform(0.38, 0.5)

    # Building row (with gaps and trees) along the horizon.
    x = rng.uniform(-0.1, 0.05) * W
    while x < W:
        bw = rng.uniform(0.1, 0.3) * W
        r = rng.random()
        if r < 0.65:
            c.paint(c.rect(x, rng.uniform(0.03, 0.3) * H, x + bw, horizon + 0.05 * H),
                    _CS['building'], jitter=30.0)
        elif r < 0.85:
            cx = x + bw / 2
            c.paint(c.ellipse(cx, horizon - 0.12 * H, bw / 2, rng.uniform(0.1, 0.22) * H),
                    _CS['vegetation'])
        x += bw

    # Ground: terrain, road trapezoid to the vanishing point, sidewalks beside it.
    c.paint(c.rect(0, horizon, W, H), _CS['terrain'])
    vx = W * rng.uniform(0.35, 0.65)
    spread = rng.uniform(0.45, 0.8) * W
    walk = rng.uniform(0.12, 0.25) * W
    c.paint(c.trapezoid(horizon, H, vx - 3, vx + 3, vx - spread - walk, vx + spread + walk),
            _CS['sidewalk'])
    c.paint(c.trapezoid(horizon, H, vx - 1, vx + 1, vx - spread, vx + spread), _CS['road'])

    def road_half_width(y):
        return 1 + (spread - 1) * (y - horizon) / (H - horizon)

    # Walls and fences along the horizon on the sides.
    for _ in range(rng.integers(1, 3)):
        side = rng.choice([-1, 1])
        x0 = vx + side * rng.uniform(0.2, 0.45) * W
        cls = _CS['wall'] if rng.random() < 0.5 else _CS['fence']
        hgt = rng.uniform(0.08, 0.18) * H
        y1 = horizon + rng.uniform(0.02, 0.12) * H
        c.paint(c.rect(x0, y1 - hgt, x0 + side * rng.uniform(0.15, 0.35) * W, y1), cls)

    # Trees (vegetation) at the roadside.
    for _ in range(rng.integers(0, 3)):
        cx = rng.choice([rng.uniform(0, 0.2), rng.uniform(0.8, 1.0)]) * W
        cy = horizon - rng.uniform(0.0, 0.1) * H
        c.paint(c.ellipse(cx, cy, rng.uniform(0.05, 0.12) * W, rng.uniform(0.12, 0.25) * H),
                _CS['vegetation'])

    # Poles with signs / traffic lights.
    for _ in range(rng.integers(1, 4)):
        base_y = horizon + rng.uniform(0.08, 0.45) * (H - horizon)
        side = rng.choice([-1, 1])
        px = vx + side * (road_half_width(base_y) + rng.uniform(2, 0.08 * W))
        top = base_y - rng.uniform(0.35, 0.6) * H * (base_y / H)
        pw = max(3.0, 0.012 * W * base_y / H * 2)
        c.paint(c.rect(px - pw / 2, top, px + pw / 2, base_y), _CS['pole'], jitter=10.0)
        s = max(7.0, 0.06 * H * base_y / H * 2)
        if rng.random() < 0.5:
            c.paint(c.rect(px - s / 2, top - 0.2 * s, px + s / 2, top + 0.8 * s),
                    _CS['traffic sign'], jitter=25.0)
        else:
            c.paint(c.rect(px - s / 3, top - 0.1 * s, px + s / 3, top + 1.4 * s),
                    _CS['traffic light'], jitter=10.0)

    # Vehicles, back to front (smaller y first): size grows with distance below horizon.
    vehicles = sorted(rng.uniform(0.15, 0.9, rng.integers(1, 4)))
    for frac in vehicles:
        y1 = horizon + frac * (H - horizon)
        scale = (y1 - horizon) / (H - horizon)
        r = rng.random()
        if r < 0.5:
            cls, vw, vh = _CS['car'], 0.35, 0.22
        elif r < 0.7:
            cls, vw, vh = _CS['truck'], 0.4, 0.38
        elif r < 0.88:
            cls, vw, vh = _CS['bus'], 0.6, 0.42
        else:
            cls, vw, vh = _CS['train'], 0.9, 0.4
        vw, vh = max(12.0, vw * W * scale * 0.8), max(7.0, vh * H * scale)
        cx = vx + rng.uniform(-0.7, 0.7) * road_half_width(y1)
        c.paint(c.rect(cx - vw / 2, y1 - vh, cx + vw / 2, y1), cls)
        if cls == _CS['car']:  # darker windows band, same label
            c.paint(c.rect(cx - vw * 0.35, y1 - vh, cx + vw * 0.35, y1 - vh * 0.6), cls,
                    color=(40, 45, 60), jitter=8.0)

    # People on the sidewalks, riders on two-wheelers on the road.
    for _ in range(rng.integers(1, 5)):
        y1 = horizon + rng.uniform(0.1, 0.9) * (H - horizon)
        scale = (y1 - horizon) / (H - horizon)
        ph = max(16.0, 0.5 * H * scale)
        side = rng.choice([-1, 1])
        on_road = rng.random() < 0.4
        if on_road:
            cx = vx + rng.uniform(-0.6, 0.6) * road_half_width(y1)
            wheel = _CS['bicycle'] if rng.random() < 0.5 else _CS['motorcycle']
            c.paint(c.ellipse(cx, y1 - ph * 0.17, ph * 0.38, ph * 0.17), wheel)
            c.paint(c.ellipse(cx, y1 - ph * 0.55, ph * 0.13, ph * 0.3), _CS['rider'])
            c.paint(c.ellipse(cx, y1 - ph * 0.9, ph * 0.07, ph * 0.07), _CS['rider'])
        else:
            cx = vx + side * (road_half_width(y1) + rng.uniform(1, 0.5 * walk + 2))
            c.paint(c.ellipse(cx, y1 - ph * 0.45, ph * 0.15, ph * 0.42), _CS['person'])
            c.paint(c.ellipse(cx, y1 - ph * 0.92, ph * 0.08, ph * 0.08), _CS['person'])

    # Ego-vehicle hood (ignored, 255) in some images, as in the real data.
    if rng.random() < 0.5:
        c.paint(c.ellipse(W / 2, H * 1.05, W * 0.7, H * rng.uniform(0.08, 0.14)),
                IGNORE_INDEX, jitter=5.0)
    return c.finish(), c.label


# ------------------------------------------------------------------------ ade20k
def _ade(name: str) -> int:
    """Annotation-file value of a demo ADE20K class (mmseg index + 1)."""
    return ADE20K_DEMO_CLASSES[name] + 1


_ADE20K_STYLES = {
    _ade('wall'): ((200, 190, 170), 'flat', 0.0, 1),
    _ade('floor'): ((150, 110, 70), 'hstripes', 18.0, 5),
    _ade('ceiling'): ((225, 225, 215), 'vgradient', 10.0, 1),
    _ade('bed '): ((210, 200, 220), 'blotch', 12.0, 6),
    _ade('windowpane'): ((170, 205, 240), 'grid', 30.0, 12),
    _ade('cabinet'): ((120, 85, 55), 'vstripes', 15.0, 10),
    _ade('person'): ((190, 80, 90), 'noise', 12.0, 1),
    _ade('door'): ((110, 75, 45), 'vstripes', 20.0, 4),
    _ade('table'): ((140, 95, 60), 'hstripes', 10.0, 3),
    _ade('plant'): ((60, 130, 55), 'blotch', 35.0, 2),
    _ade('curtain'): ((170, 60, 70), 'vstripes', 30.0, 3),
    _ade('chair'): ((90, 60, 40), 'flat', 0.0, 1),
    _ade('painting'): ((120, 120, 120), 'blotch', 70.0, 4),
    _ade('sofa'): ((70, 90, 140), 'noise', 10.0, 1),
    _ade('shelf'): ((130, 100, 70), 'bricks', 30.0, 6),
    _ade('rug'): ((160, 50, 50), 'checker', 35.0, 4),
    _ade('lamp'): ((240, 220, 150), 'vgradient', 20.0, 1),
    _ade('cushion'): ((230, 170, 60), 'noise', 10.0, 1),
    ADE20K_OTHER: ((100, 100, 100), 'noise', 30.0, 1),
}


def _ade20k_scene(height: int, width: int, rng: np.random.Generator):
    c = _Canvas(height, width, rng, _ADE20K_STYLES, _ade('wall'))
    H, W = float(height), float(width)
    wall_color = rng.uniform(110, 230, 3)
    c.paint(np.ones((height, width), bool), _ade('wall'), color=wall_color, jitter=0.0)
    ceil = rng.uniform(0.08, 0.2) * H
    c.paint(c.trapezoid(0, ceil, -W, 2 * W, 0.08 * W, 0.92 * W), _ade('ceiling'),
            color=np.clip(wall_color + 30, 0, 255))
    floor_y = rng.uniform(0.58, 0.75) * H
    c.paint(c.trapezoid(floor_y, H, 0.08 * W, 0.92 * W, -0.3 * W, 1.3 * W), _ade('floor'),
            color=rng.uniform(80, 200, 3))
    # Baseboard / clutter: "other" (0, ignored after reduce_zero_label).
    c.paint(c.rect(0, floor_y - 0.02 * H, W, floor_y + 0.01 * H), ADE20K_OTHER, jitter=20.0)

    # Wall objects: windows (with curtains), paintings, doors.
    x = rng.uniform(0.0, 0.1) * W
    while x < 0.9 * W:
        ow = rng.uniform(0.12, 0.3) * W
        r = rng.random()
        if r < 0.35:
            y0, y1 = ceil + rng.uniform(0.05, 0.12) * H, floor_y - rng.uniform(0.12, 0.25) * H
            c.paint(c.rect(x, y0, x + ow, y1), _ade('windowpane'))
            if rng.random() < 0.7:
                cw = ow * rng.uniform(0.15, 0.3)
                c.paint(c.rect(x - cw / 2, y0 - 2, x + cw, y1 + 4), _ade('curtain'))
                c.paint(c.rect(x + ow - cw, y0 - 2, x + ow + cw / 2, y1 + 4), _ade('curtain'))
        elif r < 0.6:
            y0 = ceil + rng.uniform(0.08, 0.18) * H
            c.paint(c.rect(x, y0, x + ow * 0.8, y0 + rng.uniform(0.12, 0.22) * H),
                    _ade('painting'), color=rng.uniform(40, 220, 3))
        elif r < 0.8:
            c.paint(c.rect(x, ceil + rng.uniform(0.05, 0.15) * H, x + min(ow, 0.18 * W),
                           floor_y + 0.01 * H), _ade('door'))
        x += ow + rng.uniform(0.04, 0.15) * W

    # Furniture against the wall.
    for _ in range(rng.integers(0, 3)):
        ow = rng.uniform(0.1, 0.25) * W
        x0 = rng.uniform(0, W - ow)
        cls = _ade('cabinet') if rng.random() < 0.5 else _ade('shelf')
        c.paint(c.rect(x0, floor_y - rng.uniform(0.15, 0.4) * H, x0 + ow, floor_y + 0.03 * H), cls)

    # Rug on the floor.
    if rng.random() < 0.6:
        c.paint(c.ellipse(rng.uniform(0.3, 0.7) * W, rng.uniform(0.8, 0.95) * H,
                          rng.uniform(0.15, 0.3) * W, rng.uniform(0.05, 0.1) * H), _ade('rug'),
                color=rng.uniform(60, 200, 3))

    # Floor furniture, back to front.
    items = sorted(rng.uniform(0.05, 0.95, rng.integers(1, 5)))
    for frac in items:
        y1 = floor_y + frac * (H - floor_y)
        s = 0.6 + 0.8 * frac
        cx = rng.uniform(0.1, 0.9) * W
        r = rng.random()
        if r < 0.18:  # bed
            bw, bh = 0.45 * W * s, 0.2 * H * s
            c.paint(c.rect(cx - bw / 2, y1 - bh, cx + bw / 2, y1), _ade('bed '))
            c.paint(c.rect(cx - bw / 2, y1 - bh * 1.6, cx - bw / 2 + bw * 0.08, y1), _ade('bed '),
                    color=(110, 80, 60))
        elif r < 0.36:  # sofa with cushions
            bw, bh = 0.4 * W * s, 0.18 * H * s
            c.paint(c.rect(cx - bw / 2, y1 - bh, cx + bw / 2, y1), _ade('sofa'),
                    color=rng.uniform(50, 180, 3))
            for k in range(rng.integers(1, 3)):
                kx = cx - bw / 2 + (k + 0.5) * bw / 3
                c.paint(c.rect(kx, y1 - bh * 1.2, kx + bw / 5, y1 - bh * 0.6), _ade('cushion'))
        elif r < 0.56:  # table: top slab and legs
            bw, bh = 0.3 * W * s, 0.16 * H * s
            m = c.rect(cx - bw / 2, y1 - bh, cx + bw / 2, y1 - bh * 0.8)
            m |= c.rect(cx - bw / 2 + 1, y1 - bh, cx - bw / 2 + 1 + max(1.5, bw * 0.05), y1)
            m |= c.rect(cx + bw / 2 - 1 - max(1.5, bw * 0.05), y1 - bh, cx + bw / 2 - 1, y1)
            c.paint(m, _ade('table'))
        elif r < 0.72:  # chair: back, seat, legs
            bw, bh = 0.1 * W * s, 0.2 * H * s
            m = c.rect(cx - bw / 2, y1 - bh, cx - bw / 2 + max(1.5, bw * 0.15), y1)
            m |= c.rect(cx - bw / 2, y1 - bh * 0.5, cx + bw / 2, y1 - bh * 0.4)
            m |= c.rect(cx + bw / 2 - max(1.5, bw * 0.12), y1 - bh * 0.5, cx + bw / 2, y1)
            c.paint(m, _ade('chair'))
        elif r < 0.82:  # lamp: stand and shade
            lh = 0.35 * H * s
            c.paint(c.rect(cx - 1, y1 - lh, cx + 1, y1), _ade('lamp'), color=(60, 60, 60))
            c.paint(c.trapezoid(y1 - lh * 1.2, y1 - lh * 0.9, cx - lh * 0.08, cx + lh * 0.08,
                                cx - lh * 0.18, cx + lh * 0.18), _ade('lamp'))
        elif r < 0.92:  # potted plant
            ph = 0.25 * H * s
            c.paint(c.rect(cx - ph * 0.12, y1 - ph * 0.3, cx + ph * 0.12, y1), _ade('plant'),
                    color=(150, 80, 50), jitter=10.0)
            c.paint(c.ellipse(cx, y1 - ph * 0.65, ph * 0.3, ph * 0.38), _ade('plant'))
        else:  # person
            ph = 0.5 * H * s
            c.paint(c.ellipse(cx, y1 - ph * 0.45, ph * 0.12, ph * 0.42), _ade('person'))
            c.paint(c.ellipse(cx, y1 - ph * 0.92, ph * 0.08, ph * 0.08), _ade('person'))
    return c.finish(), c.label


# ------------------------------------------------------------------------ writer
def _image_rng(seed: int, layout: str, split: str, index: int) -> np.random.Generator:
    tags = {'cityscapes': 1, 'ade20k': 2, 'train': 1, 'val': 2}
    return np.random.default_rng([int(seed), tags[layout], tags[split], int(index)])


def _write(path: str, array: np.ndarray, params: Sequence[int] = ()) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    if array.ndim == 3:
        array = array[..., ::-1]  # RGB -> BGR for cv2
    if not cv2.imwrite(path, np.ascontiguousarray(array), list(params)):
        raise OSError(f'could not write {path}')


def _cityscapes_paths(root: str, split: str, index: int) -> Tuple[str, str]:
    cities = CITYSCAPES_TRAIN_CITIES if split == 'train' else CITYSCAPES_VAL_CITIES
    city = cities[index % len(cities)]
    stem = f'{city}_{index // len(cities):06d}_{19 + index:06d}'
    return (osp.join(root, 'leftImg8bit', split, city, f'{stem}_leftImg8bit.png'),
            osp.join(root, 'gtFine', split, city, f'{stem}_gtFine_labelTrainIds.png'))


def _ade20k_paths(root: str, split: str, index: int) -> Tuple[str, str]:
    folder = 'training' if split == 'train' else 'validation'
    stem = f'ADE_{split}_{index + 1:08d}'
    return (osp.join(root, 'images', folder, f'{stem}.jpg'),
            osp.join(root, 'annotations', folder, f'{stem}.png'))


def default_size(layout: str) -> Tuple[int, int]:
    """Default (height, width): Cityscapes 128x256 (2:1 like 1024x2048); ADE20K up to 160x224."""
    return (128, 256) if layout == 'cityscapes' else (160, 224)


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
    return layout


def generate_sample(layout: str, split: str, index: int, seed: int = 0,
                    size: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, uint8 label map as stored in the file) pair.

    For ADE20K ``size`` is the largest (height, width); each image draws its own
    size between 75% and 100% of it (ADE20K images vary in size).
    """
    _check_layout(layout)
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    height, width = _check_size('size', size or default_size(layout))
    rng = _image_rng(seed, layout, split, index)
    if layout == 'cityscapes':
        return _cityscapes_scene(height, width, rng)
    h = int(rng.integers(max(32, int(height * 0.75)), height + 1))
    w = int(rng.integers(max(32, int(width * 0.75)), width + 1))
    return _ade20k_scene(h, w, rng)


def make_seg_demo(root: str, layout: str, num_train: int = 100, num_val: int = 20,
                  size: Optional[Tuple[int, int]] = None, seed: int = 0,
                  progress: Optional[Callable[[str], None]] = None) -> dict:
    """Write the demo dataset of ``layout`` under ``root`` (replacing its files).

    Returns the metadata also written to ``root/meta.json``.
    """
    _check_layout(layout)
    num_train = _check_int('num_train', num_train, 1)
    num_val = _check_int('num_val', num_val, 1)
    seed = _check_int('seed', seed, 0)
    size = _check_size('size', size or default_size(layout))
    meta = dict(format_version=FORMAT_VERSION, layout=layout, num_train=num_train,
                num_val=num_val, size=list(size), seed=seed)
    folders = ('leftImg8bit', 'gtFine') if layout == 'cityscapes' else ('images', 'annotations')
    for folder in folders:
        shutil.rmtree(osp.join(root, folder), ignore_errors=True)
    paths = _cityscapes_paths if layout == 'cityscapes' else _ade20k_paths
    for split, count in (('train', num_train), ('val', num_val)):
        for index in range(count):
            image, label = generate_sample(layout, split, index, seed, size)
            img_path, seg_path = paths(root, split, index)
            if layout == 'cityscapes':
                _write(img_path, image, (cv2.IMWRITE_PNG_COMPRESSION, 3))
            else:
                _write(img_path, image, (cv2.IMWRITE_JPEG_QUALITY, 92))
            _write(seg_path, label, (cv2.IMWRITE_PNG_COMPRESSION, 3))
        if progress is not None:
            progress(f'{layout}: wrote {count} {split} images under {root}')
    with open(osp.join(root, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    return meta


def is_generated(root: str, layout: str, num_train: int = 100, num_val: int = 20,
                 size: Optional[Tuple[int, int]] = None, seed: int = 0) -> bool:
    """True if ``root`` holds exactly this demo (same ``meta.json`` arguments)."""
    try:
        with open(osp.join(root, 'meta.json')) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    expected = dict(format_version=FORMAT_VERSION, layout=layout, num_train=num_train,
                    num_val=num_val, size=list(size or default_size(layout)), seed=seed)
    return meta == expected


def ensure_seg_demo(root: str, layout: str, num_train: int = 100, num_val: int = 20,
                    size: Optional[Tuple[int, int]] = None, seed: int = 0,
                    progress: Optional[Callable[[str], None]] = None) -> bool:
    """Generate the demo under ``root`` unless it is already there; True if generated."""
    if is_generated(root, layout, num_train, num_val, size, seed):
        if progress is not None:
            progress(f'{layout}: demo data already present under {root}')
        return False
    make_seg_demo(root, layout, num_train, num_val, size, seed, progress)
    return True
