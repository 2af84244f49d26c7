"""Multi-scale RoIAlign with pixel-centre alignment (`aligned=True`) and detectron2's level assignment, which ViTDet
uses; torchvision's MultiScaleRoIAlign always calls roi_align with aligned=False."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import box_area, roi_align


def pyramid_levels(boxes: torch.Tensor, min_level: int, max_level: int, canonical_size: int = 224,
                   canonical_level: int = 4) -> torch.Tensor:
    """Index (0 = `min_level`) of the pyramid level each box is pooled from: floor(canonical_level +
    log2(sqrt(area) / canonical_size + 1e-8)), clamped, as detectron2 assigns them. torchvision adds its 1e-6 to
    the logarithm instead, which moves boxes just under a power-of-two size (e.g. 111.9999 px) one level up."""
    sizes = torch.sqrt(box_area(boxes))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_size + 1e-8))
    return torch.clamp(levels, min=min_level, max=max_level).to(torch.int64) - min_level


class AlignedMultiScaleRoIAlign(nn.Module):
    """Pools each box from the pyramid level its size selects (`pyramid_levels`), with aligned RoIAlign. Same call
    signature as torchvision's MultiScaleRoIAlign, so it plugs into its RoIHeads.

    The levels' strides are given, not inferred from the image sizes as torchvision does: with large scale
    jitter an image may fill only a corner of its padded canvas, and its size says nothing about the stride.
    """

    def __init__(self, featmap_names: Sequence[str], output_size: int, sampling_ratio: int = 0,
                 strides: Sequence[int] = (4, 8, 16, 32)):
        super().__init__()
        if len(strides) != len(featmap_names):
            raise ValueError(f"one stride per feature map: {list(featmap_names)} vs strides {list(strides)}")
        self.featmap_names, self.strides = list(featmap_names), list(strides)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        features = [x[name] for name in self.featmap_names]
        levels = pyramid_levels(torch.cat(boxes), round(math.log2(self.strides[0])),
                                round(math.log2(self.strides[-1])))
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        pooled = rois.new_zeros((len(rois), features[0].shape[1], *self.output_size), dtype=features[0].dtype)
        for level, (feature, stride) in enumerate(zip(features, self.strides, strict=True)):
            index = torch.where(levels == level)[0]
            pooled[index] = roi_align(feature, rois[index], self.output_size, spatial_scale=1.0 / stride,
                                      sampling_ratio=self.sampling_ratio, aligned=True).to(pooled.dtype)
        return pooled
