"""Fine-tuning data: MAE / DeiT augmentation through timm (RandAugment, random erasing) and batch Mixup/CutMix."""
from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from torchvision import transforms


def train_transform(img_size: int, aug: dict[str, Any]) -> transforms.Compose:
    """RandomResizedCrop (`aug.crop_scale`) + flip (`aug.hflip`) + RandAugment (`aug.auto_augment`) + random erasing
    (`aug.reprob`), bicubic."""
    return create_transform(img_size, is_training=True, scale=tuple(aug["crop_scale"]), hflip=aug["hflip"],
                            auto_augment=aug["auto_augment"], re_prob=aug["reprob"],
                            re_mode="pixel", re_count=1, interpolation="bicubic", color_jitter=None,
                            mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def build_mixup(aug: dict[str, Any], num_classes: int) -> Mixup | None:
    """timm's Mixup / CutMix with label smoothing, or None when both alphas are 0."""
    if aug["mixup"] <= 0 and aug["cutmix"] <= 0:
        return None
    return Mixup(mixup_alpha=aug["mixup"], cutmix_alpha=aug["cutmix"], prob=1.0, switch_prob=0.5, mode="batch",
                 label_smoothing=aug["smoothing"], num_classes=num_classes)
