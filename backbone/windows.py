"""Window attention and ViTDet's decomposed relative position bias, on (B, H, W, C) token maps.

Written here rather than imported from timm's SAM model file, whose helpers are not part of timm's public layers;
tests/backbone/test_windows.py checks them against those helpers and detectron2's formulas.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .pos_embed import Grid


def window_partition(x: torch.Tensor, size: int) -> tuple[torch.Tensor, Grid]:
    """(B, H, W, C) -> (B * windows, size, size, C) non-overlapping windows, row-major, after zero-padding H and W at
    the bottom / right to multiples of `size`; also the padded (H, W), which `window_merge` needs."""
    batch, height, width, channels = x.shape
    padded = (-(-height // size) * size, -(-width // size) * size)
    x = F.pad(x, (0, 0, 0, padded[1] - width, 0, padded[0] - height))
    x = x.view(batch, padded[0] // size, size, padded[1] // size, size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, size, size, channels), padded


def window_merge(windows: torch.Tensor, size: int, grid: Grid, padded: Grid) -> torch.Tensor:
    """The inverse of `window_partition`: (B * windows, size, size, C) -> (B, H, W, C) of the unpadded `grid`."""
    rows, columns = padded[0] // size, padded[1] // size
    x = windows.view(-1, rows, columns, size, size, windows.shape[-1])
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, padded[0], padded[1], windows.shape[-1])
    return x[:, :grid[0], :grid[1]].contiguous()


def relative_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """(length, length, C) embeddings of the offsets i - j between `length` query and key positions, looked up in
    `table` ((2 * length - 1, C), offset -(length - 1) first); a table of another size is first resized linearly
    along its offsets, as ViTDet does when the input size changes."""
    offsets = 2 * length - 1
    if table.shape[0] != offsets:
        table = F.interpolate(table.T[None], size=offsets, mode="linear")[0].T
    positions = torch.arange(length, device=table.device)
    return table[positions[:, None] - positions[None, :] + length - 1]


def decomposed_rel_pos_bias(q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B, L, L) attention bias of queries `q` (B, L = H * W, C) attending to keys on the same grid: the query's dot
    products with the embeddings of the row offset and of the column offset, added (MViTv2, ViTDet)."""
    height, width = grid
    rows, columns = relative_table(table_h, height), relative_table(table_w, width)
    q = q.reshape(q.shape[0], height, width, -1)
    by_row = torch.einsum("bhwc,hkc->bhwk", q, rows)
    by_column = torch.einsum("bhwc,wkc->bhwk", q, columns)
    return (by_row[..., :, None] + by_column[..., None, :]).reshape(-1, height * width, height * width)
