"""Render one synthetic outdoor scene: sky over ground with shaded objects standing on it.

Scenes carry photo-like positional cues (sky on top, perspective ground texture, haze at
the horizon, objects growing toward the bottom) so position is learnable from appearance.
Everything is vectorised numpy. Objects are polygons rasterised by pycocotools itself, so
a stored COCO polygon decodes to exactly the pixels that were painted.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_api

# Alphabetical so torchvision ImageFolder (which sorts folder names) assigns the same indices.
OBJECT_CLASSES: tuple[str, ...] = (
    "circle", "cross", "diamond", "ellipse", "ring", "square", "star", "triangle",
)
IGNORE_ID, SKY_ID, GROUND_ID = 0, 1, 2
FIRST_OBJECT_ID = 3
SEMANTIC_CLASSES: tuple[str, ...] = ("unlabelled", "sky", "ground", *OBJECT_CLASSES)
MIN_AREA_FRACTION = 0.003

_SKIES = (  # (top, at the horizon) RGB: day, dusk, overcast
    ((40, 90, 190), (170, 205, 240)),
    ((50, 40, 110), (250, 150, 90)),
    ((120, 130, 145), (200, 200, 205)),
)
_GROUNDS = ((70, 120, 50), (120, 85, 55), (200, 175, 120))  # grass, soil, sand


def _regular(n: int) -> np.ndarray:
    angle = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


# Unit outlines (x right, y down); 36 vertices keep circles within 0.2 px of round at 224 px.
_CIRCLE = _regular(36)
_OUTLINES = {
    "cross": np.array([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3),
                       (.3, 1), (-.3, 1), (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3)]),
    "diamond": np.array([(0, -1), (0.65, 0), (0, 1), (-0.65, 0)]),
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * 0.85,
    "star": _regular(10) * np.where(np.arange(10) % 2, 0.45, 1.0)[:, None],
    "triangle": np.array([(0, -1), (1, 0.8), (-1, 0.8)]),
}


@dataclass(frozen=True)
class Instance:
    """One annotated object: its visible pixels and, when they are exactly one polygon, that polygon."""

    category: int  # index into OBJECT_CLASSES
    mask: np.ndarray  # bool (H, W), visible pixels after occlusion
    polygon: list[float] | None  # flat [x1, y1, ...] whose pycocotools rasterisation is `mask`
    iscrowd: bool = False


@dataclass(frozen=True)
class Scene:
    """A rendered image with its semantic label map and instances."""

    image: np.ndarray  # uint8 (H, W, 3)
    labels: np.ndarray  # uint8 (H, W), SEMANTIC_CLASSES ids
    instances: list[Instance]
    image_class: int  # category of the largest visible non-crowd instance


@dataclass(frozen=True)
class _Shape:
    """A drawn object, kept as a crop: whole-image masks per object would dominate the cost."""

    category: int
    box: tuple[slice, slice]  # rows, columns of the crop
    local: np.ndarray  # bool crop, every pixel the shape covers before occlusion
    polygon: list[float] | None
    centre: tuple[float, float]
    radius: float
    iscrowd: bool = False


def render_scene(seed: int, index: int, size: int) -> Scene:
    """Render image `index` of the dataset `seed`; it depends on nothing else."""
    rng = np.random.default_rng([seed, index])
    image = np.empty((size, size, 3), dtype=np.uint8)
    backdrop = _backdrop(rng, size)
    backdrop.paint(image)
    horizon = backdrop.horizon
    light = (rng.choice([-0.8, 0.8]), -0.6)  # sun on the left or right, above
    shapes = _crowd(rng, size, horizon) if rng.random() < 0.25 else []
    shapes += _objects(rng, size, horizon)
    labels = _background_labels(horizon, size)
    for shape in shapes:
        if not shape.iscrowd:
            _cast_shadow(image, shape)
        _paint(rng, image, shape, light)
        labels[shape.box][shape.local] = FIRST_OBJECT_ID + shape.category
    instances = _visible_instances(shapes, size)
    largest = max((i for i in instances if not i.iscrowd), key=lambda i: int(i.mask.sum()))
    return Scene(image, labels, instances, largest.category)


@dataclass(frozen=True)
class _Backdrop:
    """Random parameters of one sky-over-ground background, painted in bands of rows.

    Colours are linear mixes of a few scalar fields (one small matrix product). Bands keep
    temporaries small enough for malloc to recycle: fresh whole-image arrays are paged in
    anew for every image, which costs more than the arithmetic. Bands entirely above or
    below the horizon skip the other half.
    """

    horizon: np.ndarray  # (1, W) horizon row per column
    sky_mix: np.ndarray  # (4, 3) colours of the sky fields
    ground_mix: np.ndarray  # (2, 3) colours of the ground fields
    clouds: tuple[np.ndarray, np.ndarray]  # noise factors, see _value_noise
    cloud_threshold: float
    cloud_density: float
    soil: tuple[np.ndarray, np.ndarray]
    phase: np.ndarray  # (1, W) texture phase numerator, divided by the depth below the horizon

    def paint(self, image: np.ndarray) -> None:
        size = image.shape[0]
        step = max(1, 8192 // size)
        for y0 in range(0, size, step):
            y = np.arange(y0, min(y0 + step, size), dtype=np.float32)[:, None]
            rows, sky = slice(y0, y0 + len(y)), (y < self.horizon).astype(np.float32)
            colour = np.zeros((len(y) * size, 3), dtype=np.float32)
            if y0 < self.horizon.max():
                colour += self._sky(y, rows, sky).reshape(4, -1).T @ self.sky_mix
            if y0 + len(y) > self.horizon.min():
                colour += self._ground(y, rows, sky).reshape(2, -1).T @ self.ground_mix
            image[rows] = np.clip(colour, 0, 255, out=colour).reshape(len(y), size, 3)

    def _sky(self, y: np.ndarray, rows: slice, sky: np.ndarray) -> np.ndarray:
        """Fields of lerp(lerp(top, low, gradient), cloud, cover), zero below the horizon."""
        gradient = y / self.horizon
        gradient *= sky
        cover = self.clouds[0][rows] @ self.clouds[1]
        cover -= self.cloud_threshold
        np.clip(cover, 0, 0.25, out=cover)
        cover *= sky * np.float32(4 * self.cloud_density)
        return np.stack([sky, gradient, cover, gradient * cover])

    def _ground(self, y: np.ndarray, rows: slice, sky: np.ndarray) -> np.ndarray:
        """Fields of lerp(ground * light, low, haze), zero above the horizon."""
        size = self.horizon.shape[1]
        dist = np.maximum(y - self.horizon, 1.0)  # depth below the horizon: texture gets finer there
        light = np.sin(self.phase / dist)
        light *= 0.12
        light += self.soil[0][rows] @ self.soil[1]
        light += 0.8
        light *= 0.8 + 0.3 * y / size  # nearer ground is brighter
        haze = np.exp(dist * np.float32(-1 / (0.15 * size)))
        haze *= 0.6 * (1 - sky)
        light *= 1 - sky - haze
        return np.stack([light, haze])


def _backdrop(rng: np.random.Generator, size: int) -> _Backdrop:
    """Draw a horizon, sky (day, dusk or overcast) with clouds, and textured ground."""
    x = np.arange(size, dtype=np.float32)[None, :]
    wave = np.sin(rng.uniform(0.5, 2) * 2 * np.pi * x / size + rng.uniform(0, 2 * np.pi))
    horizon = (rng.uniform(0.35, 0.65) * size + rng.uniform(-0.08, 0.08) * (x - size / 2)
               + rng.uniform(0, 0.02) * size * wave)
    top, low = (_jitter(rng, c) for c in _SKIES[rng.integers(len(_SKIES))])
    ground = _jitter(rng, _GROUNDS[rng.integers(len(_GROUNDS))])
    clouds = _value_noise(rng, [(6, 3, 0.65), (12, 6, 0.35)], size)
    cloud_threshold, cloud_density = rng.uniform(0.45, 0.7), rng.uniform(0.3, 0.9)
    soil = _value_noise(rng, [(16, 16, 0.3), (size // 8, size // 8, 0.15)], size)
    if rng.random() < 0.5:  # furrows converging on a vanishing point
        phase = np.float32(rng.uniform(3, 7) * 2 * np.pi) * (x - np.float32(rng.uniform(0, size)))
    else:  # ripples whose spacing shrinks toward the horizon
        phase = np.full_like(x, rng.uniform(0.5, 1.5) * 2 * np.pi * size)
    sky_mix = np.stack([top, low - top, 0.5 * (low + 255) - top, top - low])
    return _Backdrop(horizon, sky_mix, np.stack([ground, low]), clouds, cloud_threshold, cloud_density,
                     soil, phase)


def _background_labels(horizon: np.ndarray, size: int) -> np.ndarray:
    """Sky above the horizon, ground below, ignore on the horizon line itself (it is ambiguous)."""
    labels = np.full((size, size), GROUND_ID, dtype=np.uint8)
    first, last = int(horizon.min()), min(int(horizon.max()) + 2, size)
    labels[:first] = SKY_ID
    y = np.arange(first, last, dtype=np.float32)[:, None]  # only rows the horizon crosses vary
    band = labels[first:last]
    band[y < horizon] = SKY_ID
    band[np.abs(y - horizon) < 0.75] = IGNORE_ID
    return labels


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)


def _value_noise(rng: np.random.Generator, octaves: list[tuple[int, int, float]],
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth noise as two thin factors, rows @ cols = the (size, size) field.

    Each octave (cells down, cells across, amplitude) is a random coarse grid upsampled by
    interpolation matrices; factored so any band of rows is one small matrix product.
    """
    rows, cols = [], []
    for cells_y, cells_x, amplitude in octaves:
        grid = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32) * np.float32(amplitude)
        rows.append(_upsampler(cells_y, size))
        cols.append(grid @ _upsampler(cells_x, size).T)
    return np.concatenate(rows, axis=1), np.concatenate(cols, axis=0)


@functools.lru_cache(maxsize=16)
def _upsampler(cells: int, size: int) -> np.ndarray:
    """(size, cells + 1) interpolation weights from a coarse grid axis to pixel centres."""
    pos = (np.arange(size) + 0.5) * (cells / size)
    lower = np.minimum(pos.astype(np.int64), cells - 1)
    frac = pos - lower
    frac = frac * frac * (3 - 2 * frac)  # smoothstep hides the grid
    weights = np.zeros((size, cells + 1), dtype=np.float32)
    weights[np.arange(size), lower] = 1 - frac
    weights[np.arange(size), lower + 1] = frac
    weights.flags.writeable = False
    return weights


def _outline(rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Unit-size outline of a category, randomly tilted, plus the hole for rings."""
    if name == "circle":
        return _CIRCLE, None
    if name == "ring":
        return _CIRCLE, _CIRCLE * 0.55
    if name == "ellipse":
        return _rotate(_CIRCLE * (1.0, rng.uniform(0.45, 0.7)), rng.uniform(-0.6, 0.6)), None
    return _rotate(_OUTLINES[name], rng.uniform(-0.3, 0.3)), None


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _to_pixels(unit: np.ndarray, centre: tuple[float, float], radius: float, size: int) -> list[float]:
    # Rounded before rasterising, so the coordinates written to json reproduce the mask exactly.
    return np.clip(np.round(unit * radius + centre, 2), 0, size - 1).ravel().tolist()


def _bounds(polygons: list[list[float]], size: int) -> tuple[slice, slice]:
    """Rows and columns holding every pixel the polygons can cover, with a safety margin."""
    xs = np.concatenate([p[0::2] for p in polygons])
    ys = np.concatenate([p[1::2] for p in polygons])
    return (slice(max(int(ys.min()) - 1, 0), min(int(ys.max()) + 3, size)),
            slice(max(int(xs.min()) - 1, 0), min(int(xs.max()) + 3, size)))


def _rasterise(polygons: list[list[float]], size: int, box: tuple[slice, slice]) -> np.ndarray:
    """Union of the polygons exactly as pycocotools rasterises them, cropped to `box`."""
    rle = mask_api.merge(mask_api.frPyObjects(polygons, size, size))
    return mask_api.decode(rle)[box].astype(bool)


def _shape(rng: np.random.Generator, category: int, centre: tuple[float, float], radius: float,
           size: int) -> _Shape:
    outer, hole = _outline(rng, OBJECT_CLASSES[category])
    polygon = _to_pixels(outer, centre, radius, size)
    box = _bounds([polygon], size)
    local = _rasterise([polygon], size, box)
    if hole is not None:  # a COCO polygon cannot have a hole: rings are annotated by mask only
        local &= ~_rasterise([_to_pixels(hole, centre, radius, size)], size, box)
        polygon = None
    return _Shape(category, box, local, polygon, centre, radius)


def _objects(rng: np.random.Generator, size: int, horizon: np.ndarray) -> list[_Shape]:
    """0-4 background objects standing on the ground, far ones first so near ones occlude them, then the
    main object in front of them all: object-centric like ImageNet, so it gives the image its class."""
    shapes = []
    for t in np.sort(rng.uniform(0.12, 1.0, int(rng.integers(0, 5)))):  # 0: horizon, 1: bottom edge
        shapes.append(_standing(rng, size, horizon, t, radius=size * (0.05 + 0.12 * t)))  # nearer is larger
    return shapes + [_standing(rng, size, horizon, rng.uniform(0.6, 1.0), radius=size * rng.uniform(0.2, 0.28))]


def _standing(rng: np.random.Generator, size: int, horizon: np.ndarray, t: float, radius: float) -> _Shape:
    """An object of a random category whose base lies at depth `t` (0: horizon, 1: bottom edge)."""
    cx = rng.uniform(radius, size - 1 - radius)
    ground_y = horizon[0, int(cx)]
    base = ground_y + t * (size - 1 - ground_y)
    category = int(rng.integers(len(OBJECT_CLASSES)))
    return _shape(rng, category, (cx, base - radius), radius, size)


def _crowd(rng: np.random.Generator, size: int, horizon: np.ndarray) -> list[_Shape]:
    """A distant group of small same-category objects, annotated as one COCO crowd region."""
    category = int(rng.choice([c for c, name in enumerate(OBJECT_CLASSES) if name != "ring"]))
    cx = rng.uniform(0.2, 0.8) * size
    cy = horizon[0, int(cx)] + rng.uniform(0.03, 0.1) * size
    members = [
        _to_pixels(_outline(rng, OBJECT_CLASSES[category])[0],
                   (cx + rng.normal(0, 0.06 * size), cy + rng.normal(0, 0.015 * size)),
                   size * rng.uniform(0.025, 0.035), size)
        for _ in range(int(rng.integers(4, 9)))
    ]
    box = _bounds(members, size)
    return [_Shape(category, box, _rasterise(members, size, box), None, (cx, cy), 0.1 * size, iscrowd=True)]


def _cast_shadow(image: np.ndarray, shape: _Shape) -> None:
    """Darken a soft ellipse on the ground under the object so it reads as standing there."""
    (cx, cy), r, size = shape.centre, shape.radius, image.shape[0]
    base = cy + r
    y0, y1 = max(int(base - 0.3 * r), 0), min(int(base + 0.3 * r) + 1, size)
    x0, x1 = max(int(cx - 1.3 * r), 0), min(int(cx + 1.3 * r) + 1, size)
    y = np.arange(y0, y1, dtype=np.float32)[:, None]
    x = np.arange(x0, x1, dtype=np.float32)[None, :]
    d = ((x - cx) / (1.2 * r)) ** 2 + ((y - base) / (0.25 * r)) ** 2
    region = image[y0:y1, x0:x1]
    region[...] = region * (1 - 0.45 * np.clip(1 - d, 0, 1))[..., None]


def _paint(rng: np.random.Generator, image: np.ndarray, shape: _Shape, light: tuple[float, float]) -> None:
    """Fill the shape's pixels with its own colour, lit from one side, plain or striped."""
    hsv = rng.random(), rng.uniform(0.5, 0.95), rng.uniform(0.55, 0.95)
    rgb = np.array(colorsys.hsv_to_rgb(*hsv), dtype=np.float32) * 255
    rows, cols = shape.box
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - np.float32(shape.centre[1])
    x = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - np.float32(shape.centre[0])
    shade = 1 + (x * light[0] + y * light[1]) * np.float32(0.35 / shape.radius)
    if rng.random() < 0.4:
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        shade *= 0.85 + 0.15 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * np.float32(2 * np.pi / period))
    colours = np.multiply.outer(np.clip(shade[shape.local], 0.5, 1.35), rgb)
    image[shape.box][shape.local] = np.minimum(colours, 255, out=colours)


def _visible_instances(shapes: list[_Shape], size: int) -> list[Instance]:
    """Visible part of each shape (later shapes are on top); drops the barely visible ones."""
    covered = np.zeros((size, size), dtype=bool)
    instances = []
    for shape in reversed(shapes):
        visible = shape.local & ~covered[shape.box]
        covered[shape.box] |= shape.local
        area = int(visible.sum())
        if area < MIN_AREA_FRACTION * size * size:
            continue
        mask = np.zeros((size, size), dtype=bool)
        mask[shape.box] = visible
        exact = shape.polygon if area == int(shape.local.sum()) else None
        instances.append(Instance(shape.category, mask, exact, shape.iscrowd))
    return instances[::-1]
