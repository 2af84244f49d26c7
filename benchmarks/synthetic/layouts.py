"""Write rendered scenes in the ImageNet, COCO 2017 and ADE20K layouts, plus synth_meta.json.

The layouts mirror the real datasets closely enough that the real loaders (torchvision
ImageFolder, pycocotools / faster-coco-eval, mmseg's ADE20K dataset) read them unchanged.
Each image is JPEG-encoded once and hard-linked into the other layouts. Every output byte
depends only on the generator arguments, so equal seeds give identical files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_api

from benchmarks.synthetic.scenes import IGNORE_ID, OBJECT_CLASSES, SEMANTIC_CLASSES, Instance, Scene
from engine.safe_io import write_json_atomic

GENERATOR_VERSION = "1.1"
# Gaps like COCO's own ids, so code that maps category ids to contiguous labels is exercised.
COCO_CATEGORY_IDS: tuple[int, ...] = (1, 2, 3, 5, 7, 8, 10, 11)
SPLITS = ("train", "val")
META_FILE = "synth_meta.json"
LAYOUT_DIRS = ("imagenet", "coco", "ade")

_COCO_DIRS = {"train": "train2017", "val": "val2017"}
_ADE_DIRS = {"train": ("training", "ADE_train"), "val": ("validation", "ADE_val")}
_ADE_ROOT = Path("ade", "ADEChallengeData2016")
_JPEG_OPTIONS = {"format": "JPEG", "quality": 90, "subsampling": "4:2:0", "optimize": False}
_RLE_EVERY = 5  # every n-th annotation that could be a polygon is stored as RLE, as in real data


class LayoutWriter:
    """Writes images as they come and collects annotations; `finish` writes the json files."""

    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size = root, size
        self.records: list[dict[str, Any]] = []
        self.coco: dict[str, dict[str, list]] = {s: {"images": [], "annotations": []} for s in SPLITS}
        self.next_annotation_id = 1
        for split in SPLITS:
            # Every class folder in both splits, even empty ones, so class indices agree across splits at
            # any N; read small sets with ImageFolder(..., allow_empty=True).
            for folder in (*(Path("imagenet", split, name) for name in OBJECT_CLASSES),
                           Path("coco", _COCO_DIRS[split]), _ADE_ROOT / "images" / _ADE_DIRS[split][0],
                           _ADE_ROOT / "annotations" / _ADE_DIRS[split][0]):
                (root / folder).mkdir(parents=True, exist_ok=True)
        (root / "coco" / "annotations").mkdir(exist_ok=True)

    def add(self, index: int, split: str, scene: Scene) -> None:
        """Write image `index` (COCO/ADE number index + 1) with its labels into every layout."""
        image_id, class_name = index + 1, OBJECT_CLASSES[scene.image_class]
        ade_dir, ade_prefix = _ADE_DIRS[split]
        paths = {
            "coco": Path("coco", _COCO_DIRS[split], f"{image_id:012d}.jpg"),
            "imagenet": Path("imagenet", split, class_name, f"{class_name}_{image_id:08d}.JPEG"),
            "ade_image": _ADE_ROOT / "images" / ade_dir / f"{ade_prefix}_{image_id:08d}.jpg",
            "ade_label": _ADE_ROOT / "annotations" / ade_dir / f"{ade_prefix}_{image_id:08d}.png",
        }
        Image.fromarray(scene.image).save(self.root / paths["coco"], **_JPEG_OPTIONS)
        _link(self.root / paths["coco"], self.root / paths["imagenet"])
        _link(self.root / paths["coco"], self.root / paths["ade_image"])
        Image.fromarray(scene.labels).save(self.root / paths["ade_label"], format="PNG", compress_level=1)

        coco = self.coco[split]
        coco["images"].append({"id": image_id, "file_name": paths["coco"].name, "width": self.size,
                               "height": self.size, "license": 1})
        for instance in scene.instances:
            coco["annotations"].append(self._annotation(instance, image_id))
        self.records.append({"index": index, "id": image_id, "split": split, "class": class_name,
                             "instances": len(scene.instances),
                             **{key: path.as_posix() for key, path in paths.items()}})

    def finish(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Write both COCO json files and synth_meta.json; returns the metadata without per-image records."""
        categories = [{"id": cid, "name": name, "supercategory": "shape"}
                      for cid, name in zip(COCO_CATEGORY_IDS, OBJECT_CLASSES, strict=True)]
        annotation_files = {}
        for split in SPLITS:
            annotation_files[split] = f"coco/annotations/instances_{_COCO_DIRS[split]}.json"
            write_json_atomic(self.root / annotation_files[split], indent=None, obj={
                "info": {"description": "droppos-bench synthetic scenes", "version": GENERATOR_VERSION,
                         "year": 2017, "contributor": "droppos-bench", "url": "", "date_created": ""},
                "licenses": [{"id": 1, "name": "CC0 1.0",
                              "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
                "categories": categories,
                **self.coco[split],
            })
        meta = {
            **arguments,
            "version": GENERATOR_VERSION,
            "splits": {s: sum(r["split"] == s for r in self.records) for s in SPLITS},
            "imagenet": {"root": "imagenet", "classes": list(OBJECT_CLASSES),
                         "classes_present": {s: sorted({r["class"] for r in self.records if r["split"] == s})
                                             for s in SPLITS}},
            "coco": {"root": "coco", "categories": categories, "annotation_files": annotation_files,
                     "annotations": {s: len(self.coco[s]["annotations"]) for s in SPLITS}},
            "ade": {"root": _ADE_ROOT.as_posix(), "ignore_id": IGNORE_ID,
                    "labels": [{"id": i, "name": n} for i, n in enumerate(SEMANTIC_CLASSES)],
                    # mmseg's reduce_zero_label maps id 0 to ignore and id k to class k - 1
                    "reduce_zero_label_classes": list(SEMANTIC_CLASSES[1:])},
        }
        write_json_atomic(self.root / META_FILE, {**meta, "images": self.records}, indent=None)
        return meta

    def _annotation(self, instance: Instance, image_id: int) -> dict[str, Any]:
        annotation_id, self.next_annotation_id = self.next_annotation_id, self.next_annotation_id + 1
        segmentation = coco_segmentation(instance, prefer_rle=annotation_id % _RLE_EVERY == 0)
        rle = segmentation_rle(segmentation, self.size, self.size)
        return {"id": annotation_id, "image_id": image_id, "category_id": COCO_CATEGORY_IDS[instance.category],
                "segmentation": segmentation, "area": float(mask_api.area(rle)),
                "bbox": [float(v) for v in mask_api.toBbox(rle)], "iscrowd": int(instance.iscrowd)}


def coco_segmentation(instance: Instance, prefer_rle: bool = False) -> list[list[float]] | dict[str, Any]:
    """COCO segmentation that decodes exactly to the instance mask.

    Crowds get uncompressed RLE like real COCO crowds; others a polygon when one reproduces
    the mask exactly (the drawn outline, or the pixel outline of an occluded object), else
    compressed RLE.
    """
    if instance.iscrowd:
        return uncompressed_rle(instance.mask)
    polygon = None if prefer_rle else instance.polygon or pixel_outline(instance.mask)
    if polygon is not None:
        return [polygon]
    rle = mask_api.encode(np.asfortranarray(instance.mask, dtype=np.uint8))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def segmentation_rle(segmentation: list | dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of a stored segmentation, converted the way COCO.annToRLE does."""
    if isinstance(segmentation, list):
        return mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_api.frPyObjects(segmentation, height, width)
    return segmentation


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """Column-major run lengths starting with a run of zeros, as in COCO crowd annotations."""
    flat = mask.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": list(mask.shape), "counts": counts}


def pixel_outline(mask: np.ndarray) -> list[float] | None:
    """Polygon along the pixel edges of a mask that is one piece without holes, else None.

    Vertices lie on pixel corners (pixel (x, y) spans [x, x+1] x [y, y+1], COCO's convention).
    Boundary edges are ordered by following successor links with pointer doubling, so the
    walk costs a few vectorised steps instead of a Python loop per edge.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, x0 = rows[0], cols[0]
    padded = np.zeros((rows[-1] - y0 + 3, cols[-1] - x0 + 3), dtype=bool)
    inside = padded[1:-1, 1:-1]
    inside[...] = mask[y0:rows[-1] + 1, x0:cols[-1] + 1]
    width = inside.shape[1] + 1  # corners per row
    starts, ends, directions = [], [], []
    # Clockwise on screen (inside on the right): top edges run +x, right +y, bottom -x, left -y.
    neighbours = (padded[:-2, 1:-1], padded[1:-1, 2:], padded[2:, 1:-1], padded[1:-1, :-2])
    corner_offsets = ((0, 0), (0, 1), (1, 1), (1, 0))  # (row, column) of each pixel corner, clockwise
    for direction, neighbour in enumerate(neighbours):
        r, c = np.nonzero(inside & ~neighbour)
        (sr, sc), (er, ec) = corner_offsets[direction], corner_offsets[(direction + 1) % 4]
        starts.append((r + sr) * width + c + sc)
        ends.append((r + er) * width + c + ec)
        directions.append(np.full(r.size, direction))
    start, end, direction = np.concatenate(starts), np.concatenate(ends), np.concatenate(directions)
    successor = _successors(start, end, direction)
    n = start.size
    walk, jump = np.zeros(1, dtype=np.int64), successor
    while walk.size < n:  # walk[k] = successor^k(0); doubles each step
        walk, jump = np.concatenate([walk, jump[walk]]), jump[jump]
    walk = walk[:n]
    if np.unique(walk).size != n:  # several boundaries: several pieces or holes
        return None
    heading = direction[walk]
    corners = start[walk][heading != np.concatenate([heading[-1:], heading[:-1]])]  # where it turns
    polygon = np.stack([corners % width + x0, corners // width + y0], axis=1).astype(float).ravel().tolist()
    exact = mask_api.decode(segmentation_rle([polygon], *mask.shape)).astype(bool)
    return polygon if np.array_equal(exact, mask) else None


def _successors(start: np.ndarray, end: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Index of the edge that continues each edge; at corners touched by two diagonal pixels
    it turns right, which keeps pieces that only touch diagonally apart."""
    order = np.argsort(start, kind="stable")
    sorted_start = start[order]
    first = np.searchsorted(sorted_start, end)
    second = np.minimum(first + 1, start.size - 1)
    successor, alternative = order[first], order[second]
    turns_right = (sorted_start[second] == end) & (direction[alternative] == (direction + 1) % 4)
    return np.where(turns_right, alternative, successor)


def _link(source: Path, target: Path) -> None:
    """Hard-link to save disk space and time; copy where the filesystem cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
