"""ImageNet-layout image folders, which pre-training, classification and the benchmarks read, with MAE's
pre-training and evaluation transforms; the unreadable-image error and the worker-shared counter every task's
dataset uses."""
from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import torch
from mmengine.logging import print_log
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.datasets import ImageFolder

from .errors import MissingInputError, UserInputError

BICUBIC = transforms.InterpolationMode.BICUBIC
EVAL_CROP_RATIO = 0.875  # resize to img_size / 0.875 (256 for 224), then center-crop


def imagenet_root(path: str | Path) -> Path:
    """The folder holding `train/` and `val/`: `path` itself, or `path/imagenet` (a synthetic dataset's root)."""
    path = Path(path)
    for candidate in (path, path / "imagenet"):
        if (candidate / "train").is_dir() or (candidate / "val").is_dir():
            return candidate
    raise MissingInputError(f"{path}: no ImageNet layout here (expected {path}/train/<class>/* and "
                            f"{path}/val/<class>/*, or the same under {path}/imagenet)")


def pretrain_transform(img_size: int, crop_scale: tuple[float, float] = (0.2, 1.0),
                       hflip: float = 0.5) -> transforms.Compose:
    """RandomResizedCrop (bicubic) and horizontal flip (with probability `hflip`) only, as in MAE and DropPos
    pre-training."""
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=BICUBIC),
        transforms.RandomHorizontalFlip(hflip),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


def eval_transform(img_size: int) -> transforms.Compose:
    """Resize the short side to img_size / 0.875 and center-crop img_size (ImageNet evaluation)."""
    return transforms.Compose([
        transforms.Resize(int(img_size / EVAL_CROP_RATIO), interpolation=BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


class UnreadableImageError(UserInputError):
    """An image file that PIL cannot decode; the message names the file."""


class SharedCounter:
    """An integer shared with the loader worker processes. It deep-copies to itself: mmengine deep-copies the
    dataset before building the loader, and the copy must count into the same place."""

    def __init__(self):
        self._value = multiprocessing.Value("q", 0)

    @property
    def value(self) -> int:
        return self._value.value

    def add(self, count: int) -> None:
        with self._value.get_lock():
            self._value.value += count

    def __deepcopy__(self, memo: dict) -> SharedCounter:
        return self


class CheckedImageFolder(ImageFolder):
    """torchvision's ImageFolder whose unreadable files either stop the run with an error naming the file, or
    (`skip_invalid`) are replaced by the next readable sample and counted in `skipped`, shared by every
    loader worker."""

    def __init__(self, root: str, transform: transforms.Compose, skip_invalid: bool):
        super().__init__(root, transform=transform, allow_empty=True)
        self.skip_invalid = skip_invalid
        self.skipped = SharedCounter()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.samples)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            try:
                image = self.loader(path)
            except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
                if not self.skip_invalid:
                    raise UnreadableImageError(f"{path}: unreadable image ({error}); replace or remove it, or set "
                                               "data.skip_invalid=True to skip such files") from error
                self.skipped.add(1)
                print_log(f"{path}: unreadable image skipped ({error})", logger="current", level=logging.WARNING)
                continue
            return (image if self.transform is None else self.transform(image)), target
        raise UnreadableImageError(f"{self.root}: not one readable image")


def image_folder(root: str | Path, split: str, transform: transforms.Compose, skip_invalid: bool = False,
                 every_class: bool = False) -> CheckedImageFolder:
    """`root/split` as a CheckedImageFolder. A missing or empty split is an error that names the folder, and
    so is a class folder without images when `every_class` (a class that cannot be learnt is a broken copy)."""
    folder = imagenet_root(root) / split
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: split {split!r} not found")
    dataset = CheckedImageFolder(str(folder), transform, skip_invalid)
    if len(dataset) == 0:
        raise UserInputError(f"{folder}: no images (expected {folder}/<class>/*.JPEG or other image files)")
    if every_class and (empty := sorted(set(dataset.classes) - {dataset.classes[t] for t in set(dataset.targets)})):
        raise UserInputError(f"{folder}: class folders without images: {', '.join(empty)} (every class needs "
                             "training images; remove the folder or add images)")
    return dataset
