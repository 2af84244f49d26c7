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
    MultiScaleRoIAlign, so it plugs into its RoIHeads."""

    def __init__(self, featmap_names: Sequence[str], output_size: int, sampling_ratio: int = 0,
                 canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        features = [x[name] for name in self.featmap_names]
        padded_height = max(height for height, _ in image_shapes)
        # each level's stride is a power of two: feature height / padded image height, rounded in log2
        scales = [2.0 ** round(math.log2(feature.shape[-2] / padded_height)) for feature in features]
        levels = LevelMapper(int(-math.log2(scales[0])), int(-math.log2(scales[-1])), self.canonical_scale,
                             self.canonical_level)(boxes)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        pooled = rois.new_zeros((len(rois), features[0].shape[1], *self.output_size), dtype=features[0].dtype)
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            index = torch.where(levels == level)[0]
            pooled[index] = roi_align(feature, rois[index], self.output_size, spatial_scale=scale,
                                      sampling_ratio=self.sampling_ratio, aligned=True).to(pooled.dtype)
        return pooled
