"""Aligned multi-scale RoIAlign: each box pooled from the FPN level its size selects, with aligned=True."""
import math

import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from det.pooler import AlignedMultiScaleRoIAlign

NAMES = ["p2", "p3", "p4", "p5"]


def pyramid(image=512):
    torch.manual_seed(0)
    return {name: torch.randn(2, 3, image // 2 ** k, image // 2 ** k)
            for name, k in zip(NAMES, range(2, 6), strict=True)}


def boxes():
    sizes = torch.tensor([8.0, 60.0, 113.0, 150.0, 230.0, 300.0, 560.0])  # spans every level, clamped ends
    xy = torch.linspace(3.0, 40.0, len(sizes))
    first = torch.stack([xy, xy + 1.5, xy + sizes, xy + 1.5 + sizes * 0.8], dim=1)
    return [first, first[[1, 4]] + 7.25]


def test_each_box_is_pooled_aligned_from_its_level():
    features, box_lists = pyramid(), boxes()
    # valid image regions far smaller than the canvas must not change the strides (large scale jitter)
    ours = AlignedMultiScaleRoIAlign(NAMES, output_size=7, sampling_ratio=0)(features, box_lists, [(100, 90)] * 2)
    expected, levels = [], set()
    for image, image_boxes in enumerate(box_lists):
        for box in image_boxes:
            size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
            level = min(max(math.floor(4 + math.log2(size / 224 + 1e-8)), 2), 5)  # detectron2's assignment
            levels.add(level)
            roi = torch.cat([torch.tensor([float(image)]), box])[None]
            expected.append(roi_align(features[f"p{level}"], roi, (7, 7), spatial_scale=1 / 2 ** level,
                                      sampling_ratio=0, aligned=True))
    assert levels == {2, 3, 4, 5}
    torch.testing.assert_close(ours, torch.cat(expected))
    unaligned = MultiScaleRoIAlign(NAMES, 7, sampling_ratio=0)(features, box_lists, [(512, 512)] * 2)
    assert not torch.allclose(ours, unaligned, atol=1e-3)  # torchvision's own pooler is not aligned
