"""ADE20K-layout semantic segmentation data through mmseg: the dataset, a label check, and the train / test pipelines.

Any class list works (ADE20K's 150 or the synthetic set's 10): the label ids stored in the pngs are the classes
as listed, never remapped. Bad data fails early with the file named, instead of deep inside mmseg or the loss.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from mmcv.transforms import BaseTransform, LoadImageFromFile
from mmengine.logging import print_log
from mmengine.registry import DefaultScope

# mmseg loads here because the package's __init__ has already put in the stand-in for mmcv's compiled ops
from mmseg.datasets import ADE20KDataset, BaseSegDataset
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS, TRANSFORMS

from engine.errors import MissingInputError, UserInputError
from engine.images import SharedCounter, UnreadableImageError
from engine.seeding import seeded_randomness

ADE20K_CLASSES: tuple[str, ...] = tuple(ADE20KDataset.METAINFO["classes"])
IGNORE_INDEX = 255  # mmseg's ignored label; reduce_zero_label maps raw 0 (unlabelled) to it
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
# The loading steps, the file each reads, and its read or decode failures: PIL's are OSErrors (as a missing file's),
# cv2 raises its error on empty data and returns None on other bad data, on which LoadImageFromFile asserts
LOADERS = ((LoadImageFromFile, "img_path", "image", (OSError, ValueError, cv2.error, AssertionError)),
           (LoadAnnotations, "seg_map_path", "label png", (OSError, ValueError, cv2.error)))


@DATASETS.register_module()
class ADE20KLayoutDataset(BaseSegDataset):
    """Images `data_root/images/<folder>/*.jpg` with label pngs of the same name in `data_root/annotations/<folder>`,
    folder 'training' for split 'train' and 'validation' for 'val'; `classes=None` means ADE20K's 150.

    METAINFO stays empty, so mmseg builds no label map (it would demand the classes be a subset of ADE20K's).
    An unreadable image or label png stops the run with an UnreadableImageError naming the file, or in the train
    split with `skip_invalid` is replaced by the next readable sample and counted in `skipped`, shared by every
    loader worker. Evaluation never skips (scoring another image in its place would count that one twice). Further
    keyword arguments go to mmseg's BaseSegDataset (e.g. `indices`).
    """

    def __init__(self, data_root: str | Path, split: str, classes: Sequence[str] | None = None,
                 pipeline: Sequence[dict] = (), reduce_zero_label: bool = True, skip_invalid: bool = False,
                 **kwargs: Any) -> None:
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
        folder = SPLIT_FOLDERS[split]
        self.split, self.skip_invalid, self.skipped = split, skip_invalid, SharedCounter()
        if classes is None:
            metainfo = dict(classes=ADE20K_CLASSES, palette=ADE20KDataset.METAINFO["palette"])
        else:
            metainfo = dict(classes=tuple(classes))  # mmseg draws a fixed-seed palette
        # Built in mmseg's scope, so that nested builds (RandomResize's Resize) take mmseg's transforms, not mmcv's
        with DefaultScope.overwrite_default_scope("mmseg"):
            super().__init__(data_root=str(data_root), metainfo=metainfo, pipeline=list(pipeline),
                             data_prefix=dict(img_path=f"images/{folder}", seg_map_path=f"annotations/{folder}"),
                             img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=reduce_zero_label, **kwargs)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """An index, or (index, seed) from the engine's sample stream: the seed then fixes the sample's
        augmentation (mmcv's transforms draw from numpy's global RNG), so a resumed run sees the same crops."""
        index, seed = item if isinstance(item, (tuple, list)) else (item, None)
        for offset in range(len(self)):
            position = (int(index) + offset) % len(self)
            try:
                with seeded_randomness(seed):
                    return super().__getitem__(position)
            except UnreadableImageError as error:
                if not (self.skip_invalid and self.split == "train"):
                    raise UnreadableImageError(f"{error}; {self._remedy()}") from error
                self.skipped.add(1)
                print_log(f"{error}: replaced by the next sample", logger="current", level=logging.WARNING)
        raise UnreadableImageError(f"{self.data_prefix['img_path']}: not one readable image with its label png")

    def prepare_data(self, idx: int) -> dict | None:
        """mmengine's: the pipeline on the sample's record (None when a step gives up), with a file that a loading step
        cannot read or decode an UnreadableImageError naming it: mmcv raises cv2's error, or asserts on the None cv2
        returns, without the name."""
        results = self.get_data_info(idx)
        for step in self.pipeline.transforms:
            results = _checked_step(step, results)
            if results is None:
                return None
        return results

    def _remedy(self) -> str:
        if self.split == "train":
            return "replace or remove it, or set data.skip_invalid=True to skip such files"
        return "replace or remove it (evaluation scores every image, data.skip_invalid does not apply)"

    def load_data_list(self) -> list[dict]:
        """Every image of the split with its label png, sorted by path; a missing folder or png fails here, where
        mmseg would list the image with a path to no file and fail at loading time."""
        image_dir, label_dir = Path(self.data_prefix["img_path"]), Path(self.data_prefix["seg_map_path"])
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise MissingInputError(f"{folder}: split folder not found (the ADE20K layout has "
                                        "<root>/images/<folder> and <root>/annotations/<folder>)")
        images = sorted(image_dir.glob(f"*{self.img_suffix}"))
        if not images:
            raise MissingInputError(f"{image_dir}: no {self.img_suffix} images in this split folder")
        labels = [label_dir / image.with_suffix(self.seg_map_suffix).name for image in images]
        missing = [(image, label) for image, label in zip(images, labels, strict=True) if not label.is_file()]
        if missing:
            image, label = missing[0]
            raise MissingInputError(f"{label}: label png not found for image {image} "
                                    f"({len(missing)} of {len(images)} images in {image_dir} have none)")
        return [dict(img_path=str(image), seg_map_path=str(label), label_map=self.label_map,
                     reduce_zero_label=self.reduce_zero_label, seg_fields=[])
                for image, label in zip(images, labels, strict=True)]


def _checked_step(step: Any, results: dict) -> dict | None:
    """`step(results)`; when `step` loads the image or the label png, a failure to read or decode the file is an
    UnreadableImageError naming it."""
    loader = next((loader for loader in LOADERS if isinstance(step, loader[0])), None)
    if loader is None:
        return step(results)
    _, key, what, failures = loader
    try:
        return step(results)
    except failures as error:
        reason = " ".join(str(error).split()) or type(error).__name__  # one line: cv2's message ends in a newline
        raise UnreadableImageError(f"{results[key]}: unreadable {what} ({reason})") from error


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Fails on a label map whose size differs from its image's or whose values lie outside the classes.

    mmseg would crop such a pair out of register, or train on an out-of-range label until the loss asserts.
    Place it right after LoadAnnotations: the label is compared with the image as loaded (`ori_shape`), which a
    Resize before LoadAnnotations (the test pipeline) leaves unchanged.
    """

    def __init__(self, num_classes: int, reduce_zero_label: bool) -> None:
        self.num_classes, self.reduce_zero_label = num_classes, reduce_zero_label

    def transform(self, results: dict) -> dict:
        """Raises ValueError naming the files; returns `results` unchanged."""
        labels, image_size = results["gt_seg_map"], tuple(results["ori_shape"][:2])
        if labels.shape != image_size:
            raise UserInputError(f"label {results['seg_map_path']} is {_size(labels.shape)} (HxW) but its image "
                                 f"{results['img_path']} is {_size(image_size)}")
        # The max alone clears a map without ignored pixels; nearly every ADE20K map has some, so its values are then
        # counted in one pass over the uint8 map (LoadAnnotations casts to it), about 3x faster than np.unique
        if labels.max() >= self.num_classes:
            counts = np.bincount(labels.ravel(), minlength=IGNORE_INDEX + 1)
            counts[IGNORE_INDEX] = 0
            bad = np.flatnonzero(counts[self.num_classes:]) + self.num_classes
            if bad.size:
                raw = (bad + 1 if self.reduce_zero_label else bad).tolist()  # reduction mapped raw v to v - 1
                raise UserInputError(f"label {results['seg_map_path']} has raw values {raw} outside the "
                                     f"{self.num_classes} classes; allowed: {self._allowed_raw_values()}")
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes}, reduce_zero_label={self.reduce_zero_label})"

    def _allowed_raw_values(self) -> str:
        if self.reduce_zero_label:
            return f"1..{self.num_classes}, 0 = unlabelled, {IGNORE_INDEX} = ignore"
        return f"0..{self.num_classes - 1}, {IGNORE_INDEX} = ignore"


def _size(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


def train_pipeline(crop_size: int, scale: Sequence[int], ratio_range: Sequence[float], cat_max_ratio: float,
                   num_classes: int, reduce_zero_label: bool) -> list[dict]:
    """mmseg's ADE20K training augmentation with the label check after loading: random rescale around `scale`
    (w, h), a crop_size square crop where no class covers more than cat_max_ratio, flip, photometric jitter."""
    return [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),  # reduce_zero_label comes from the dataset (mmseg deprecates it here)
        dict(type="CheckSegLabels", num_classes=num_classes, reduce_zero_label=reduce_zero_label),
        # tuples: mmcv reads a list scale as a list of candidate scales
        dict(type="RandomResize", scale=tuple(scale), ratio_range=tuple(ratio_range), keep_ratio=True),
        dict(type="RandomCrop", crop_size=(crop_size, crop_size), cat_max_ratio=cat_max_ratio),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]


def test_pipeline(scale: Sequence[int], num_classes: int, reduce_zero_label: bool) -> list[dict]:
    """mmseg's ADE20K evaluation: the image resized to fit `scale` (w, h), the label kept at its original size
    (loaded after the Resize) so that predictions are scored at full resolution."""
    return [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=tuple(scale), keep_ratio=True),
        dict(type="LoadAnnotations"),
        dict(type="CheckSegLabels", num_classes=num_classes, reduce_zero_label=reduce_zero_label),
        dict(type="PackSegInputs"),
    ]


def class_names(data_cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The classes of a data config: its `classes`, or ADE20K's 150 when that is None."""
    return ADE20K_CLASSES if data_cfg["classes"] is None else tuple(data_cfg["classes"])


def build_seg_dataset(data_cfg: Mapping[str, Any], split: str) -> ADE20KLayoutDataset:
    """Split 'train' (with the training augmentation) or 'val' (with the test pipeline) of a data config:
    root, classes, crop_size, scale, ratio_range, cat_max_ratio, reduce_zero_label, skip_invalid (absent: False)."""
    classes, reduce_zero_label = class_names(data_cfg), data_cfg["reduce_zero_label"]
    if split == "train":
        pipeline = train_pipeline(data_cfg["crop_size"], data_cfg["scale"], data_cfg["ratio_range"],
                                  data_cfg["cat_max_ratio"], len(classes), reduce_zero_label)
    else:
        pipeline = test_pipeline(data_cfg["scale"], len(classes), reduce_zero_label)
    return ADE20KLayoutDataset(data_cfg["root"], split, classes=data_cfg["classes"], pipeline=pipeline,
                               reduce_zero_label=reduce_zero_label, skip_invalid=data_cfg.get("skip_invalid", False))
