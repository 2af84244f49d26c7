"""Colour-ramp images: a patch's colour gives its position only relative to an unknown per-image origin.

On a grid of patch cells, red grows by `step` per column and green by `step` per row from a random origin drawn
per image, with one random blue level per image and pixel noise. Without a patch of known position the absolute
position is ambiguous; one anchor (its true position and its colour) pins the origin. The tests use them to show
that a tiny DropPos uses its anchors, and (ramps running in four directions as four classes) that its
pre-training helps a fine-tune with few labels.

The frozen protocols see the images only through the evaluation transform (resize the short side to size / 0.875,
centre-crop size). On a plain image of `size` px that crop cuts the patches across the cells, so every patch holds a
cell edge whose orientation gives the ramp's direction, which a random patch embedding reads linearly. Their tests
write `eval_aligned` images instead: bordered so that the crop is exactly the grid and every patch one flat cell.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.images import EVAL_CROP_RATIO


def write_ramp_images(folder: Path, count: int, rng: np.random.Generator, size: int = 64, grid: int = 4,
                      step: float = 0.08, flip_lr: bool = False, flip_ud: bool = False, noise: float = 0.04,
                      eval_aligned: bool = False) -> None:
    """`count` PNGs in `folder`, of `size` px on a `grid` x `grid` of cells: red = bx + step * column, green =
    by + step * row (columns counted from the right when `flip_lr`, rows from the bottom when `flip_ud`), the
    origin (bx, by) uniform in [0, 1 - (grid - 1) step] per image. `eval_aligned` adds a border (the edge cells
    extended) up to size / 0.875 px, placed where the evaluation transform's centre crop leaves exactly the grid."""
    folder.mkdir(parents=True)
    steps = step * np.arange(grid)
    across, down = (steps[::-1] if flip_lr else steps), (steps[::-1] if flip_ud else steps)
    cell = size // grid
    for i in range(count):
        bx, by = rng.uniform(0, 1 - (grid - 1) * step, 2)
        cells = np.empty((grid, grid, 3))
        cells[..., 0] = bx + across[None, :]
        cells[..., 1] = by + down[:, None]
        cells[..., 2] = rng.uniform(0.1, 0.9)
        pixels = cells.repeat(cell, 0).repeat(cell, 1) + rng.normal(0, noise, (size, size, 3))
        if eval_aligned:
            border = eval_border(size)
            pixels = np.pad(pixels, (border, border, (0, 0)), mode="edge")
        Image.fromarray((pixels.clip(0, 1) * 255).round().astype(np.uint8)).save(folder / f"{i:05d}.png")


def eval_border(size: int) -> tuple[int, int]:
    """The px before and after a `size` px grid in an image that the evaluation transform resizes to itself
    (size / 0.875 px) and centre-crops to the grid (torchvision rounds the crop's offset half to even)."""
    margin = int(size / EVAL_CROP_RATIO) - size
    before = round(margin / 2)
    return before, margin - before


# the direction task's classes: (flip_lr, flip_ud) of each class's ramps
DIRECTIONS = {"as_is": (False, False), "flip_lr": (True, False), "flip_ud": (False, True), "flip_both": (True, True)}


def write_unlabelled_ramps(root: Path, train: int, val: int, seed: int) -> None:
    """Ramps of one direction (red grows rightwards, green downwards), in the ImageNet layout of one class
    ("ramps"): what droppos_tiny_ramps pre-trains on and position accuracy is measured on."""
    for split, count, offset in (("train", train, 0), ("val", val, 1000)):
        write_ramp_images(root / split / "ramps", count, np.random.default_rng(seed + offset))


def write_direction_task(root: Path, per_class: int, val_per_class: int, seed: int, eval_aligned: bool = False) -> None:
    """The ramps' direction as 4 classes (DIRECTIONS) in the ImageNet layout: per_class labelled training images
    and val_per_class validation images per class (`eval_aligned`: see write_ramp_images)."""
    for split, count, offset in (("train", per_class, 1000), ("val", val_per_class, 2000)):
        rng = np.random.default_rng(seed + offset)
        for name, (flip_lr, flip_ud) in DIRECTIONS.items():
            write_ramp_images(root / split / name, count, rng, flip_lr=flip_lr, flip_ud=flip_ud,
                              eval_aligned=eval_aligned)
