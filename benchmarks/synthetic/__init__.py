"""Deterministic synthetic scenes in the ImageNet, COCO 2017 and ADE20K layouts.

Used by the demo and the tests so that the real dataset loaders run on small, fast data:
`synthesize(out_dir, num_images, size, seed)` writes everything and returns a summary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.synthetic.layouts import (
    COCO_CATEGORY_IDS,
    GENERATOR_VERSION,
    LAYOUT_DIRS,
    META_FILE,
    LayoutWriter,
)
from benchmarks.synthetic.scenes import (
    GROUND_ID,
    IGNORE_ID,
    OBJECT_CLASSES,
    SEMANTIC_CLASSES,
    SKY_ID,
    Instance,
    Scene,
    render_scene,
)
from engine.errors import OutputExistsError, UserInputError

__all__ = [
    "COCO_CATEGORY_IDS", "GENERATOR_VERSION", "GROUND_ID", "IGNORE_ID", "META_FILE", "OBJECT_CLASSES",
    "SEMANTIC_CLASSES", "SKY_ID", "Instance", "Scene", "render_scene", "synthesize", "validation_indices",
]


def synthesize(out_dir: str | os.PathLike[str], num_images: int, size: int, seed: int,
               val_fraction: float = 0.2, progress: bool | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Render `num_images` square scenes of `size` px and write all three layouts under `out_dir`.

    Image i depends only on (seed, i). `progress=None` shows a bar for 200 images or more.
    `overwrite=True` replaces earlier synthetic output in a non-empty `out_dir`.
    Returns the metadata of synth_meta.json (without per-image records) plus absolute paths.
    """
    _check_arguments(num_images, size, seed, val_fraction)
    root = _prepare(Path(out_dir), overwrite)
    validation = set(validation_indices(num_images, val_fraction))
    writer = LayoutWriter(root, size)
    show = num_images >= 200 if progress is None else progress
    for index in tqdm(range(num_images), desc="synthesising", unit="img", disable=not show):
        split = "val" if index in validation else "train"
        writer.add(index, split, render_scene(seed, index, size))
    meta = writer.finish({"seed": seed, "size": size, "num_images": num_images, "val_fraction": val_fraction})
    paths = {name: str(root / name) for name in LAYOUT_DIRS}
    return {**meta, "out_dir": str(root), "paths": {**paths, "meta": str(root / META_FILE)}}


def validation_indices(num_images: int, val_fraction: float) -> list[int]:
    """About `val_fraction` of the indices, evenly spread; at least one when there are two images."""
    if num_images < 2:
        return []
    count = min(max(round(num_images * val_fraction), 1), num_images - 1)
    return [int((k + 0.5) * num_images / count) for k in range(count)]


def _check_arguments(num_images: int, size: int, seed: int, val_fraction: float) -> None:
    for name, value in (("num_images", num_images), ("size", size), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if num_images < 1:
        raise UserInputError(f"num_images must be >= 1, got {num_images}")
    if size < 32 or size % 16:
        raise UserInputError(f"size must be a multiple of 16 and >= 32, got {size}")
    if seed < 0:
        raise UserInputError(f"seed must be >= 0, got {seed}")
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserInputError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")


def _prepare(root: Path, overwrite: bool) -> Path:
    """Create `root`, refusing to mix with existing content unless asked to replace ours."""
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"output path {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"output directory {root} is not empty; pass overwrite=True to replace it")
        for name in LAYOUT_DIRS:
            shutil.rmtree(root / name, ignore_errors=True)
        (root / META_FILE).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()
