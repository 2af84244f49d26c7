"""Pre-training's own data pieces (the image folders and transforms all tasks share are in engine.images)."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms

from engine.errors import UserInputError


class MultiCrop:
    """`crops` independent draws of `transform` from one image, stacked (crops, C, H, W): MAE+'s several
    low-resolution crops per image (the model flattens them into its batch)."""

    def __init__(self, transform: transforms.Compose, crops: int):
        if crops < 1:
            raise UserInputError(f"crops={crops} must be at least 1")
        self.transform, self.crops = transform, crops

    def __call__(self, image: torch.Tensor | Image.Image) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.crops)])
