"""Per-sample random masking of a ViT's tokens (DropPos, MAE, the position probe): argsort of uniform
noise, gather-based."""
from __future__ import annotations

import torch


def random_split(batch: int, length: int, keep: int, device: torch.device,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random (kept, rest) index sets of sizes (keep, length - keep): argsort of uniform noise."""
    # generator=None spelled out breaks torch.compile with a dynamic batch size, so it is only passed when given
    noise = (torch.rand(batch, length, device=device) if generator is None
             else torch.rand(batch, length, device=device, generator=generator))
    order = noise.argsort(dim=1)
    return order[:, :keep], order[:, keep:]


def random_mask(batch: int, length: int, keep: int, device: torch.device,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, length) bool, True at the `length - keep` positions `random_split` leaves out (same random draw)."""
    _, rest = random_split(batch, length, keep, device, generator)
    return torch.zeros(batch, length, dtype=torch.bool, device=device).scatter_(1, rest, True)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C), pixels of a patch in (row, column, channel) order as in MAE."""
    batch, channels, height, width = images.shape
    p = patch_size
    x = images.reshape(batch, channels, height // p, p, width // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of `patchify`."""
    batch, p = patches.shape[0], patch_size
    x = patches.reshape(batch, grid[0], grid[1], p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, grid[0] * p, grid[1] * p)
