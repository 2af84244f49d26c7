"""ViTDet's RPN anchors: detectron2's DefaultAnchorGenerator with offset 0, in the call form of torchvision's RPN.

torchvision's AnchorGenerator rounds each cell anchor's corners to whole pixels ([-23, -11, 23, 11] instead of
[-22.627, -11.314, 22.627, 11.314] for size 32 at aspect ratio 0.5) and infers each level's stride from the
padded image size; ViTDet's anchors are not rounded and its strides are fixed (4 to 64).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList


def cell_anchors(size: float, aspect_ratios: Sequence[float]) -> torch.Tensor:
    """(A, 4) xyxy anchors centred on 0, of area size^2 and height / width = each aspect ratio, computed in double
    precision and stored in float32, as detectron2 does."""
    corners = []
    for ratio in aspect_ratios:
        width = math.sqrt(size**2.0 / ratio)
        height = ratio * width
        corners.append([-width / 2.0, -height / 2.0, width / 2.0, height / 2.0])
    return torch.tensor(corners, dtype=torch.float64).float()


def grid_anchors(cells: torch.Tensor, grid: Sequence[int], stride: int) -> torch.Tensor:
    """(H * W * A, 4) anchors of a feature map of `grid` = (H, W): the cell anchors shifted to every location's
    top-left corner (x * stride, y * stride), location-major as the RPN head's outputs are flattened."""
    height, width = grid
    xs = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=cells.device)
    ys = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=cells.device)
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([shift_x.reshape(-1), shift_y.reshape(-1)] * 2, dim=1)
    return (shifts[:, None, :] + cells[None]).reshape(-1, 4)


class ViTDetAnchorGenerator(nn.Module):
    """One anchor size per pyramid level, the same aspect ratios on every level, fixed strides. Called like
    torchvision's AnchorGenerator: (images, feature maps) -> per image, the anchors of all levels concatenated."""

    def __init__(self, sizes: Sequence[float], aspect_ratios: Sequence[float], strides: Sequence[int]):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"one anchor size per stride: sizes {list(sizes)} vs strides {list(strides)}")
        self.sizes, self.aspect_ratios, self.strides = tuple(sizes), tuple(aspect_ratios), tuple(strides)
        for level, size in enumerate(sizes):
            self.register_buffer(f"cells_{level}", cell_anchors(size, aspect_ratios), persistent=False)

    def forward(self, images: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for anchors of {len(self.strides)} levels")
        anchors = torch.cat([grid_anchors(getattr(self, f"cells_{level}"), feature.shape[-2:], stride)
                             for level, (feature, stride) in enumerate(zip(feature_maps, self.strides, strict=True))])
        return [anchors] * len(images.image_sizes)
