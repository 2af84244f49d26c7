"""COCO-layout instance segmentation data for ViTDet: the dataset, Large Scale Jitter (training), the test-time
resize, and the batch collation.

Every transform takes and returns an image and its target as tv_tensors (Image; BoundingBoxes, labels, Mask), so
torchvision's v2 ops move boxes and masks with the pixels, and also returns the meta entries it decides
(`image_size`: the valid, unpadded region at the top-left; `scale`: resized / original size, before the resized
sides are rounded to whole pixels).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.logging import print_log
from PIL import Image, ImageOps
from pycocotools import mask as mask_api
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from engine.errors import MissingInputError, UserInputError
from engine.images import SharedCounter, UnreadableImageError
from engine.seeding import seeded_randomness

MEAN_RGB = (123.675, 116.28, 103.53)  # ImageNet mean in 0-255 (ViTDet's pixel_mean)
PAD_RGB = tuple(round(v) for v in MEAN_RGB)  # padding that normalises to about zero
SKIP_HINT = "or set data.skip_invalid=True to leave such {} out"

Target = dict[str, torch.Tensor]
Transform = Callable[[tv_tensors.Image, Target], tuple[tv_tensors.Image, Target, dict[str, Any]]]


def coco_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of split `split` under a COCO 2017 root, or under `root/coco` (a
    synthetic dataset's root)."""
    root, name = Path(root), f"instances_{split}2017.json"
    base = next((path for path in (root, root / "coco") if (path / "annotations" / name).is_file()), root)
    annotation_file, image_dir = base / "annotations" / name, base / f"{split}2017"
    if not annotation_file.is_file():
        raise MissingInputError(f"{annotation_file}: COCO annotation file not found (expected "
                                f"{root}/annotations/{name} or {root}/coco/annotations/{name})")
    if not image_dir.is_dir():
        raise MissingInputError(f"{image_dir}: COCO image folder not found (the images of {annotation_file})")
    return annotation_file, image_dir


def lsj_transform(size: int, scale_range: tuple[float, float] = (0.1, 2.0)) -> Transform:
    """ViTDet's Large Scale Jitter: flip, fit into size x size times a random factor, crop a random window of
    at most size x size, pad bottom/right; boxes become the tight boxes of the cropped masks, and instances whose
    mask left the window are dropped with their labels."""
    return partial(_lsj, size=size, scale_range=tuple(scale_range))


def eval_transform(size: int) -> Transform:
    """ViTDet's test-time resize (detectron2's ResizeShortestEdge(size, max_size=size): the longer side to `size`,
    the sides rounded half up, PIL's bilinear filter), then pad bottom/right to size x size."""
    return partial(_fit_and_pad, size=size)


def fitted_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after ViTDet's test-time resize, computed as detectron2 does: the shorter side to `size`,
    then both scaled down so that the longer one is `size`, each rounded half up."""
    scale = size / min(height, width)
    new_height, new_width = (size, scale * width) if height < width else (scale * height, size)
    if max(new_height, new_width) > size:
        scale = size / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    return int(new_height + 0.5), int(new_width + 0.5)


def _lsj(image: tv_tensors.Image, target: Target, size: int,
         scale_range: tuple[float, float]) -> tuple[tv_tensors.Image, Target, dict[str, Any]]:
    image, target = v2.RandomHorizontalFlip()(image, target)
    low, high = scale_range
    scale = (low + float(torch.rand(())) * (high - low)) * size / max(image.shape[-2:])
    image, target = _resize(image, target, scale)
    height, width = image.shape[-2:]
    image, target = v2.RandomCrop((min(height, size), min(width, size)))(image, target)
    image_size = tuple(image.shape[-2:])
    image, target = _pad(image, target, size)
    return image, _fit_boxes_to_masks(target), {"image_size": image_size, "scale": scale}


def _fit_and_pad(image: tv_tensors.Image, target: Target, size: int) -> tuple[tv_tensors.Image, Target, dict]:
    height, width = image.shape[-2:]
    new_size = fitted_size(height, width, size)
    # a PIL image, so that v2.Resize filters it with PIL's bilinear resampling, as detectron2 resizes test images
    resized, target = v2.Resize(new_size)(F.to_pil_image(image), target)
    image, target = _pad(tv_tensors.Image(F.pil_to_tensor(resized)), target, size)
    return image, target, {"image_size": new_size, "scale": size / max(height, width)}


def _resize(image: tv_tensors.Image, target: Target, scale: float) -> tuple[tv_tensors.Image, Target]:
    height, width = image.shape[-2:]
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return v2.Resize(new_size, antialias=True)(image, target)  # masks: nearest, whatever the mode


def _pad(image: tv_tensors.Image, target: Target, size: int) -> tuple[tv_tensors.Image, Target]:
    """Pad bottom and right only, so the valid region keeps its pixel coordinates."""
    height, width = image.shape[-2:]
    pad = v2.Pad([0, 0, size - width, size - height], fill={tv_tensors.Image: PAD_RGB, tv_tensors.Mask: 0})
    return pad(image, target)


def _fit_boxes_to_masks(target: Target) -> Target:
    """Boxes = the tight pixel boxes of the masks, instances without a mask pixel left out (detectron2's
    recompute_boxes and filter_empty_instances, as ViTDet's LSJ runs them after its crop): a clipped annotation
    box can overhang what the crop left of the object, or hold none of it."""
    masks = target["masks"].bool()
    columns, rows = masks.any(dim=1), masks.any(dim=2)  # (N, W), (N, H): where each mask has a pixel
    first = [hits.to(torch.uint8).argmax(dim=1) for hits in (columns, rows)]
    end = [hits.shape[1] - hits.flip(1).to(torch.uint8).argmax(dim=1) for hits in (columns, rows)]
    boxes = torch.stack([first[0], first[1], end[0], end[1]], dim=1).to(target["boxes"].dtype)
    keep = columns.any(dim=1)
    return {key: value[keep] for key, value in dict(target, boxes=boxes).items()}


class CocoDetection(torch.utils.data.Dataset):
    """Images of a COCO instances file with their non-crowd boxes, contiguous labels and (`train`) masks.

    `train` leaves out images without a non-crowd annotation (they teach Mask R-CNN nothing); evaluation keeps
    every image. Bad input is an error naming the file and item, or with `skip_invalid` is left out and counted
    in `skipped`, shared by every loader worker: in training an unreadable or missing image is replaced by the next
    readable one, in evaluation it is dropped (the item is {"dropped_id": image id}; scoring another image in its
    place would count that one twice and the dropped one's objects as misses). Image files are first touched when
    read: `check_files` also looks for every one at start (one stat per image, slow for COCO's 118k on a network
    file system). An item is an index or (index, seed): the seed alone then decides the augmentation, which makes
    a resumed run exact.
    """

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike, transform: Transform, *,
                 train: bool, skip_invalid: bool = False, check_files: bool = False):
        self.annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        self.transform, self.train, self.skip_invalid = transform, train, skip_invalid
        self.skipped = SharedCounter()
        data = _read_annotation_file(self.annotation_file)
        categories = sorted(_checked(data["categories"], ("id", "name"), "category", self.annotation_file),
                            key=lambda category: category["id"])
        self.category_ids = [category["id"] for category in categories]
        self.classes = [category["name"] for category in categories]
        images = _checked(data["images"], ("id", "file_name"), "image", self.annotation_file)
        annotations = self._valid_annotations(data["annotations"], {image["id"] for image in images})
        records = self._records(self._existing(images) if check_files else images, annotations)
        if train:
            records = [record for record in records if len(record["labels"])]
        if not records:
            raise UserInputError(f"{self.annotation_file}: no images{' with annotations' if train else ''} to use")
        self.image_ids = [record.pop("image_id") for record in records]
        self._packed = _Packed(records)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = item if isinstance(item, (tuple, list)) else (item, None)
        for offset in range(len(self)):
            position = (int(index) + offset) % len(self)
            record = self._packed[position]
            image = self._read(record["file_name"])
            if image is not None:
                return self._sample(self.image_ids[position], record, image, seed)
            if not self.train:
                return {"dropped_id": self.image_ids[position]}
        raise UnreadableImageError(f"{self.image_dir}: not one readable image of {self.annotation_file}")

    def _read(self, file_name: str) -> tv_tensors.Image | None:
        """The image, or None for an unreadable one that `skip_invalid` lets us skip (counted and logged)."""
        path = self.image_dir / file_name
        try:
            return _read_rgb(path)
        except UnreadableImageError as error:
            if not self.skip_invalid:
                raise
            self.skipped.add(1)
            print_log(f"{path}: unreadable image {'replaced' if self.train else 'left out of the evaluation'} "
                      f"({error.__cause__})", logger="current", level=logging.WARNING)
            return None

    def _sample(self, image_id: int, record: dict, image: tv_tensors.Image, seed: int | None) -> dict[str, Any]:
        height, width = image.shape[-2:]
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(record["boxes"]), format="XYXY", canvas_size=(height, width))
        target = {"boxes": F.clamp_bounding_boxes(boxes), "labels": torch.from_numpy(record["labels"])}
        if self.train:
            target["masks"] = tv_tensors.Mask(torch.from_numpy(self._masks(record, height, width)))
        with seeded_randomness(seed):
            image, target, meta = self.transform(image, target)
        return {"image": image.as_subclass(torch.Tensor),
                "target": {key: value.as_subclass(torch.Tensor) for key, value in target.items()},
                "meta": {"image_id": image_id, "orig_size": (height, width), **meta}}

    def _masks(self, record: dict, height: int, width: int) -> np.ndarray:
        masks = np.zeros((len(record["labels"]), height, width), np.uint8)
        for i, (segmentation, annotation_id) in enumerate(zip(record["segmentations"], record["annotation_ids"],
                                                              strict=True)):
            rle = _rle(segmentation, height, width)
            if list(rle["size"]) != [height, width]:
                raise UserInputError(f"{self.annotation_file}: annotation {annotation_id} has an RLE mask of "
                                     f"size {rle['size']}, but its image {record['file_name']} is {height}x{width}")
            masks[i] = mask_api.decode(rle)
        return masks

    def _valid_annotations(self, annotations: list, image_ids: set[int]) -> list[dict]:
        required = ("id", "image_id", "category_id", "bbox") + (("segmentation",) if self.train else ())
        known, valid, problems = set(self.category_ids), [], []
        for annotation in annotations:
            problem = _annotation_problem(annotation, required, image_ids, known)
            if problem is None:
                valid.append(annotation)
                continue
            problem = f"annotation {annotation.get('id')} (image {annotation.get('image_id')}) {problem}"
            if not self.skip_invalid:
                raise UserInputError(f"{self.annotation_file}: {problem}; fix or remove it, "
                                     f"{SKIP_HINT.format('annotations')}")
            problems.append(problem)
        if problems:
            self.skipped.add(len(problems))
            print_log(f"{self.annotation_file}: {len(problems)} invalid annotations left out, e.g. "
                      f"{'; '.join(problems[:3])}", logger="current", level=logging.WARNING)
        return valid

    def _existing(self, images: list[dict]) -> list[dict]:
        """The images whose files exist: `check_files` finds a broken copy of the dataset before training starts."""
        missing = [image["file_name"] for image in images
                   if not os.path.exists(os.path.join(self.image_dir, image["file_name"]))]
        if not missing:
            return images
        examples = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        if not self.skip_invalid:
            raise MissingInputError(f"{self.image_dir / missing[0]}: image file not found ({len(missing)} of the "
                                    f"{len(images)} images of {self.annotation_file} are missing: {examples}); "
                                    f"restore them, {SKIP_HINT.format('images')}")
        self.skipped.add(len(missing))
        print_log(f"{self.annotation_file}: {len(missing)} image files missing from {self.image_dir}, left out: "
                  f"{examples}", logger="current", level=logging.WARNING)
        missing = set(missing)
        return [image for image in images if image["file_name"] not in missing]

    def _records(self, images: list[dict], annotations: list[dict]) -> list[dict]:
        """Per image, sorted by id: file name, non-crowd boxes (xyxy), labels and (train) segmentations."""
        by_image = {image["id"]: [] for image in images}
        for annotation in annotations:
            if not annotation.get("iscrowd", 0) and annotation["image_id"] in by_image:
                by_image[annotation["image_id"]].append(annotation)
        label_of = {category_id: label for label, category_id in enumerate(self.category_ids)}
        records = []
        for image in sorted(images, key=lambda image: image["id"]):
            kept = by_image[image["id"]]
            boxes = np.array([annotation["bbox"] for annotation in kept], np.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            records.append({"image_id": image["id"], "file_name": image["file_name"], "boxes": boxes,
                            "labels": np.array([label_of[a["category_id"]] for a in kept], np.int64),
                            "annotation_ids": [annotation["id"] for annotation in kept],
                            "segmentations": [a["segmentation"] for a in kept] if self.train else None})
        return records


def collate(batch: list[dict]) -> dict[str, Any]:
    """Stack the (equally padded) images; targets and metas stay per-image lists. The ids of images an evaluation
    dropped go in `dropped_ids`, so the metric knows they were not scored."""
    samples = [sample for sample in batch if "dropped_id" not in sample]
    images = [sample["image"] for sample in samples]
    return {"images": torch.stack(images) if images else torch.zeros(0, 3, 0, 0, dtype=torch.uint8),
            "targets": [sample["target"] for sample in samples], "metas": [sample["meta"] for sample in samples],
            "dropped_ids": [sample["dropped_id"] for sample in batch if "dropped_id" in sample]}


class _Packed:
    """Records pickled into one numpy buffer. Loader workers then share its pages; a list of dicts would be
    copied into every worker bit by bit as reading touches the reference counts (gigabytes for COCO's masks)."""

    def __init__(self, records: list[dict]):
        blobs = [pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL) for record in records]
        self._ends = np.cumsum([len(blob) for blob in blobs])
        self._buffer = np.frombuffer(b"".join(blobs), np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> dict:
        start = self._ends[index - 1] if index else 0
        return pickle.loads(self._buffer[start:self._ends[index]].tobytes())


def _read_annotation_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: not a valid JSON file ({error}); expected a COCO instances file") from error
    keys = ("images", "annotations", "categories")
    missing = [key for key in keys if key not in data] if isinstance(data, dict) else list(keys)
    if missing:
        raise UserInputError(f"{path}: no {', '.join(repr(key) for key in missing)} (a COCO instances file "
                             "holds 'images', 'annotations' and 'categories')")
    return data


def _checked(records: list, keys: tuple[str, ...], what: str, path: Path) -> list[dict]:
    """`records` if each has every key; a record without one has no sensible default."""
    for record in records:
        if missing := [key for key in keys if key not in record]:
            raise UserInputError(f"{path}: {what} {record.get('id')} has no {', '.join(missing)} "
                                 f"(each {what} needs {', '.join(keys)})")
    return records


def _annotation_problem(annotation: dict, required: tuple[str, ...], image_ids: set[int],
                        category_ids: set[int]) -> str | None:
    if missing := [key for key in required if key not in annotation]:
        return f"has no {', '.join(missing)} (expected {', '.join(required)})"
    if annotation["image_id"] not in image_ids:
        return f"refers to image id {annotation['image_id']}, which is not in 'images'"
    if annotation["category_id"] not in category_ids:
        return (f"has category id {annotation['category_id']}, not one of the known ids "
                f"{', '.join(map(str, sorted(category_ids)))}")
    bbox = annotation["bbox"]
    if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
        return f"has bbox {bbox}; expected [x, y, width, height] with width > 0 and height > 0"
    return None


def _read_rgb(path: Path) -> tv_tensors.Image:
    """The image upright as its EXIF orientation says (as detectron2 and OpenCV read images), in RGB."""
    try:
        with Image.open(path) as image:
            return tv_tensors.Image(F.pil_to_tensor(ImageOps.exif_transpose(image).convert("RGB")))
    except FileNotFoundError as error:
        raise UnreadableImageError(f"{path}: image file not found; restore it (data.check_files=True looks for "
                                   f"every image at start), {SKIP_HINT.format('images')}") from error
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise UnreadableImageError(f"{path}: unreadable image ({error}); replace or remove it, "
                                   f"{SKIP_HINT.format('images')}") from error


def _rle(segmentation: list | dict, height: int, width: int) -> dict:
    """Compressed RLE of a polygon list, uncompressed RLE (counts as a list) or compressed RLE."""
    if isinstance(segmentation, list):
        return mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_api.frPyObjects(segmentation, *segmentation["size"])
    return segmentation
