"""ImageNet-layout image folders, which pre-training, classification and the benchmarks read, with MAE's
pre-training and evaluation transforms; the unreadable-image error and the worker-shared counter every task's
dataset uses.

Every image is decoded by `read_pixels` (JPEGs by simplejpeg: the pixels PIL decodes, 1.4x faster). The
transforms written for PIL images (evaluation, timm's fine-tuning augmentation) take it as a PIL image.
Pre-training takes uint8 tensors: crop and resize on tensors (several times faster than PIL's on one core),
normalisation on the device (`normalize_on_device`), so batches cross to the GPU as uint8; 2.1x the images per
core of the PIL pipeline (`benchmarks/data_scale.py`). (torchvision.io's decoders would serve too, but they are
deprecated in torchvision 0.29.)
"""
from __future__ import annotations

import io
import logging
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
import torch
from mmengine.logging import print_log
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.transforms import v2

from .errors import MissingInputError, UserInputError
from .folder_index import folder_index

BICUBIC = transforms.InterpolationMode.BICUBIC
EVAL_CROP_RATIO = 0.875  # resize to img_size / 0.875 (256 for 224), then center-crop
JPEG_START = b"\xff\xd8"  # a JPEG's start-of-image marker, whatever the file is called


def imagenet_root(path: str | Path) -> Path:
    """The folder holding `train/` and `val/`: `path` itself, or `path/imagenet` (a synthetic dataset's root)."""
    path = Path(path)
    for candidate in (path, path / "imagenet"):
        if (candidate / "train").is_dir() or (candidate / "val").is_dir():
            return candidate
    raise MissingInputError(f"{path}: no ImageNet layout here (expected {path}/train/<class>/* and "
                            f"{path}/val/<class>/*, or the same under {path}/imagenet)")


def pretrain_transform(img_size: int, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: float = 0.5,
                       normalize: bool = True) -> v2.Compose:
    """RandomResizedCrop (bicubic, antialiased) and horizontal flip (with probability `hflip`) only, as in MAE and
    DropPos pre-training, on uint8 tensors (`decode_tensor`; PIL images are converted first); normalised to float,
    or (`normalize=False`) left uint8 for `normalize_on_device`."""
    steps = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=BICUBIC,
                                                antialias=True), v2.RandomHorizontalFlip(hflip)]
    steps.append(v2.ToPureTensor())
    if normalize:
        steps.append(v2.Lambda(normalize_on_device))
    return v2.Compose(steps)


def normalize_on_device(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W) as the float32 ImageNet-normalised images torchvision's ToTensor and Normalize
    make, computed where the images are (the GPU); float images pass through."""
    if images.dtype != torch.uint8:
        return images
    mean = images.new_tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = images.new_tensor(IMAGENET_DEFAULT_STD, dtype=torch.float32).view(3, 1, 1)
    return (images.float() / 255 - mean) / std


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


def read_pixels(path: str) -> np.ndarray:
    """The image's RGB pixels (H, W, 3) uint8, as PIL decodes them. RGB and grayscale JPEGs go through simplejpeg
    (libjpeg-turbo, as PIL, without its overhead: 1.4x faster); other formats, CMYK JPEGs (converted as PIL does)
    and data simplejpeg refuses go through PIL, whose error then says what is wrong."""
    with open(path, "rb") as file:
        data = file.read()
    if data[:2] == JPEG_START:
        try:
            if simplejpeg.decode_jpeg_header(data)[2] not in ("CMYK", "YCCK"):
                return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def decode_pil(path: str) -> Image.Image:
    """The image as an RGB PIL image, for the PIL transforms (torchvision ImageFolder's loader gives the same)."""
    return Image.fromarray(read_pixels(path))


def decode_tensor(path: str) -> torch.Tensor:
    """The image as an RGB uint8 tensor (3, H, W), a view of channels-last memory, the layout torch's uint8
    resize kernels are fastest on."""
    return torch.from_numpy(read_pixels(path)).permute(2, 0, 1)


class CheckedImageFolder(torch.utils.data.Dataset):
    """An ImageNet-layout split (files, order and classes as torchvision's ImageFolder, indexed by FolderIndex)
    whose unreadable files either stop the run with an error naming the file, or (`skip_invalid`) are replaced by
    the next readable sample and counted in `skipped`, shared by every loader worker. `decode` reads a file
    (`decode_pil`, or `decode_tensor` for the tensor transforms)."""

    def __init__(self, root: str, transform: Callable | None, skip_invalid: bool,
                 decode: Callable[[str], Any] = decode_pil):
        self.root, self.transform, self.skip_invalid, self.loader = root, transform, skip_invalid, decode
        self.index = folder_index(root)
        self.classes, self.targets = self.index.classes, self.index.targets
        self.skipped = SharedCounter()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            path, target = self.index.path(position), int(self.targets[position])
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


def image_folder(root: str | Path, split: str, transform: Callable | None, skip_invalid: bool = False,
                 every_class: bool = False, decode: Callable[[str], Any] = decode_pil) -> CheckedImageFolder:
    """`root/split` as a CheckedImageFolder. A missing or empty split is an error that names the folder, and
    so is a class folder without images when `every_class` (a class that cannot be learnt is a broken copy)."""
    folder = imagenet_root(root) / split
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: split {split!r} not found")
    dataset = CheckedImageFolder(str(folder), transform, skip_invalid, decode)
    if len(dataset) == 0:
        raise UserInputError(f"{folder}: no images (expected {folder}/<class>/*.JPEG or other image files)")
    if every_class and (empty := sorted(set(dataset.classes) - {dataset.classes[t] for t in set(dataset.targets)})):
        raise UserInputError(f"{folder}: class folders without images: {', '.join(empty)} (every class needs "
                             "training images; remove the folder or add images)")
    return dataset
