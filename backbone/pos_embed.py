"""Absolute position embeddings: MAE's fixed 2D sin-cos table and resampling to another grid."""
from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed

Grid = tuple[int, int]


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos code of 1D positions (float64): first half sin, second half cos, as in MAE."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64, device=positions.device) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1, 1).to(torch.float64) * omega
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(embed_dim: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """2D sin-cos code (N, D) (float64) of (row, col) coordinates in MAE's channel layout (column code first); the
    coordinates may be fractional and the code is differentiable in them (AdPE shifts positions by a learned delta)."""
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos embedding needs a width divisible by 4, got {embed_dim}")
    return torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)


def sincos_2d_pos_embed(embed_dim: int, grid: Grid, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Fixed 2D sin-cos table (1, prefix + H*W, D) in MAE's layout, prefix slots zero.

    MAE (and DropPos, which reuses it) encodes the column index in the first half of the channels and
    the row index in the second half; keeping that order lets released checkpoints and freshly built
    models agree bit for bit.
    """
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    prefix = torch.zeros(num_prefix_tokens, embed_dim, dtype=torch.float64)
    table = torch.cat([prefix, sincos_2d(embed_dim, rows, cols)])
    return table.float().unsqueeze(0)


def infer_grid(num_patches: int) -> Grid:
    """Square grid of a flattened pos-embed table; non-square tables must be given explicitly."""
    side = round(num_patches**0.5)
    if side * side != num_patches:
        raise ValueError(f"cannot infer a square grid from {num_patches} positions; pass the grid explicitly")
    return side, side


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: Grid,
    num_prefix_tokens: int = 1,
    new_num_prefix_tokens: int | None = None,
    old_grid: Grid | None = None,
) -> torch.Tensor:
    """Bicubic resampling of a (1, prefix + H*W, D) table to `new_grid`, prefix slots kept as they are.

    Matches MAE / ViTDet / mmseg (bicubic, align_corners=False, no antialiasing). A target without
    prefix slots (ViTDet-style backbones) drops them; a target with more gets zero slots prepended.
    """
    new_num_prefix_tokens = num_prefix_tokens if new_num_prefix_tokens is None else new_num_prefix_tokens
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = old_grid or infer_grid(patches.shape[1])
    if tuple(old_grid) != tuple(new_grid):
        patches = resample_abs_pos_embed(
            patches, list(new_grid), list(old_grid), num_prefix_tokens=0, antialias=False
        )
    if new_num_prefix_tokens <= num_prefix_tokens:
        prefix = prefix[:, :new_num_prefix_tokens]
    else:
        pad = prefix.new_zeros(1, new_num_prefix_tokens - num_prefix_tokens, prefix.shape[-1])
        prefix = torch.cat([pad, prefix], dim=1)
    return torch.cat([prefix, patches], dim=1)
