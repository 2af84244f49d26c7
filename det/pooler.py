"""Multi-scale RoIAlign with pixel-centre alignment (`aligned=True`), which ViTDet uses and torchvision's
MultiScaleRoIAlign cannot do (it always calls roi_align with aligned=False)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper


class AlignedMultiScaleRoIAlign(nn.Module):
    """Pools each box from the pyramid level its size selects (level = floor(4 + log2(sqrt(area) / 224)), as in
    FPN, detectron2 and torchvision), with aligned RoIAlign. Same call signature as torchvision's
    MultiScaleRoIAlign, so it plugs into its RoIHeads.

    The levels' strides are given, not inferred from the image sizes as torchvision does: with large scale
    jitter an image may fill only a corner of its padded canvas, and its size says nothing about the stride.
    """

    def __init__(self, featmap_names: Sequence[str], output_size: int, sampling_ratio: int = 0,
                 strides: Sequence[int] = (4, 8, 16, 32), canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        if len(strides) != len(featmap_names):
            raise ValueError(f"one stride per feature map: {list(featmap_names)} vs strides {list(strides)}")
        self.featmap_names, self.strides = list(featmap_names), list(strides)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        features = [x[name] for name in self.featmap_names]
        scales = [1.0 / stride for stride in self.strides]
        levels = LevelMapper(round(math.log2(self.strides[0])), round(math.log2(self.strides[-1])),
                             self.canonical_scale, self.canonical_level)(boxes)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        pooled = rois.new_zeros((len(rois), features[0].shape[1], *self.output_size), dtype=features[0].dtype)
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            index = torch.where(levels == level)[0]
            pooled[index] = roi_align(feature, rois[index], self.output_size, spatial_scale=scale,
                                      sampling_ratio=self.sampling_ratio, aligned=True).to(pooled.dtype)
        return pooled
