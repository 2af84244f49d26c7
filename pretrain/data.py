"""ImageNet-layout image folders and the pre-training / evaluation transforms (MAE's recipe)."""
from __future__ import annotations

from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.datasets import ImageFolder

BICUBIC = transforms.InterpolationMode.BICUBIC
EVAL_CROP_RATIO = 0.875  # resize to img_size / 0.875 (256 for 224), then center-crop


def imagenet_root(path: str | Path) -> Path:
    """The folder holding `train/` and `val/`: `path` itself, or `path/imagenet` (a synthetic dataset's root)."""
    path = Path(path)
    for candidate in (path, path / "imagenet"):
        if (candidate / "train").is_dir() or (candidate / "val").is_dir():
            return candidate
    raise FileNotFoundError(f"{path}: no ImageNet layout here (expected {path}/train/<class>/* and "
                            f"{path}/val/<class>/*, or the same under {path}/imagenet)")


def pretrain_transform(img_size: int, crop_scale: tuple[float, float] = (0.2, 1.0)) -> transforms.Compose:
    """RandomResizedCrop (bicubic) and horizontal flip only, as in MAE and DropPos pre-training."""
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=BICUBIC),
        transforms.RandomHorizontalFlip(),
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


def image_folder(root: str | Path, split: str, transform: transforms.Compose) -> ImageFolder:
    """`root/split` as an ImageFolder; a missing or empty split is an error that names the folder."""
    folder = imagenet_root(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: split {split!r} not found")
    dataset = ImageFolder(str(folder), transform=transform, allow_empty=True)
    if len(dataset) == 0:
        raise ValueError(f"{folder}: no images (expected {folder}/<class>/*.JPEG or other image files)")
    return dataset
