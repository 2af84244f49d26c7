"""Pasting box-relative mask predictions into full images, many boxes per kernel call.

torchvision's paste_masks_in_image resizes and copies one mask at a time (a Python loop of up to 100 steps per
image); here every box's sampling grid is built at once and one grid_sample pastes a whole chunk, as detectron2
does on GPUs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_PIXELS = 1 << 25  # output pixels per grid_sample call: bounds the (chunk, H, W, 2) grid to ~256 MB


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                threshold: float = 0.5) -> torch.Tensor:
    """Binary (N, height, width) masks from (N, M, M) probabilities that span `boxes` (N, 4, xyxy, pixels).

    The M x M cells cover the box edge to edge, as in RoIAlign with aligned=True; an image pixel is sampled at
    its centre (x + 0.5, y + 0.5), bilinearly, as zero outside the box.
    """
    count = masks.shape[0]
    out = torch.zeros((count, height, width), dtype=torch.bool, device=masks.device)
    if count == 0:
        return out
    boxes = boxes.float()
    xs = torch.arange(width, device=masks.device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=masks.device, dtype=torch.float32) + 0.5
    extent = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    chunk = max(1, CHUNK_PIXELS // max(height * width, 1))
    for start in range(0, count, chunk):
        part = slice(start, start + chunk)
        grid_x = (xs[None] - boxes[part, 0:1]) / extent[part, 0:1] * 2 - 1  # (n, W)
        grid_y = (ys[None] - boxes[part, 1:2]) / extent[part, 1:2] * 2 - 1  # (n, H)
        n = grid_x.shape[0]
        grid = torch.stack([grid_x[:, None, :].expand(n, height, width),
                            grid_y[:, :, None].expand(n, height, width)], dim=3)
        pasted = F.grid_sample(masks[part, None].float(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        out[part] = pasted[:, 0] >= threshold
    return out
