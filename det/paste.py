"""Pasting box-relative mask predictions into full images.

torchvision's paste_masks_in_image resizes and copies one mask at a time. On a GPU that is up to 100 small
kernel launches per image, so there every box's sampling grid is built at once and one grid_sample pastes a
whole chunk over the full image; on a CPU sampling the full image for every box costs more than the loop, so
there each box samples only the pixels it covers (detectron2 makes the same split).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CHUNK_PIXELS = 1 << 25  # output pixels per grid_sample call on a GPU: bounds the (chunk, H, W, 2) grid to ~256 MB


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold: float = 0.5,
                per_box: bool | None = None) -> torch.Tensor:
    """Binary (N, height, width) masks from (N, M, M) probabilities that span `boxes` (N, 4, xyxy, pixels).

    The M x M cells cover the box edge to edge, as in RoIAlign with aligned=True; an image pixel is sampled at
    its centre (x + 0.5, y + 0.5), bilinearly, as zero outside the box. `per_box` (default: on a CPU) samples
    each box's own pixels in a loop instead of full-image chunks; both give the same masks.
    """
    out = torch.zeros((masks.shape[0], height, width), dtype=torch.bool, device=masks.device)
    boxes = boxes.float()
    if masks.device.type == "cpu" if per_box is None else per_box:
        for mask, box, target in zip(masks, boxes, out, strict=True):
            x0, y0 = max(math.floor(box[0]), 0), max(math.floor(box[1]), 0)
            x1, y1 = min(math.ceil(box[2]) + 1, width), min(math.ceil(box[3]) + 1, height)
            if x1 > x0 and y1 > y0:
                target[y0:y1, x0:x1] = _sample(mask[None], box[None], torch.arange(y0, y1), torch.arange(x0, x1),
                                               threshold)[0]
        return out
    ys, xs = torch.arange(height, device=masks.device), torch.arange(width, device=masks.device)
    chunk = max(1, CHUNK_PIXELS // max(height * width, 1))
    for start in range(0, masks.shape[0], chunk):
        part = slice(start, start + chunk)
        out[part] = _sample(masks[part], boxes[part], ys, xs, threshold)
    return out


def _sample(masks: torch.Tensor, boxes: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
            threshold: float) -> torch.Tensor:
    """(n, len(ys), len(xs)) booleans: each mask sampled at the centres of pixel rows `ys` and columns `xs`."""
    extent = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    grid_x = (xs[None].float() + 0.5 - boxes[:, 0:1]) / extent[:, 0:1] * 2 - 1  # (n, W)
    grid_y = (ys[None].float() + 0.5 - boxes[:, 1:2]) / extent[:, 1:2] * 2 - 1  # (n, H)
    n, height, width = len(boxes), len(ys), len(xs)
    grid = torch.stack([grid_x[:, None, :].expand(n, height, width), grid_y[:, :, None].expand(n, height, width)],
                       dim=3)
    sampled = F.grid_sample(masks[:, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled[:, 0] >= threshold
