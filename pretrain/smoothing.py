"""Position smoothing (paper Eq. 5, 7): soft targets over positions, and the sigma schedule.

Two modes. `paper` follows the equations: the model's own grid, Euclidean distance, rows that sum to 1,
sigma decaying every iteration. `official` reproduces the authors' released code bit for bit so their
numbers can be reproduced: the table is built for a (224 // 14)^2 = 256-position, 16-wide grid of which the
loss reads the first 196 columns, squared distance, normalised by column, sigma decaying once per epoch.
"""
from __future__ import annotations

import math

import torch

from backbone.pos_embed import Grid
from engine.errors import UserInputError

MODES = ("paper", "official")
OFFICIAL_TOKEN_SIZE = 14  # the release passes 14 where its code expects the token size: 224 // 14 = 16


def _grid_coords(grid: Grid, device: torch.device | None = None) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1)


def paper_smoothing(grid: Grid, sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """(N, N) matrix w*(i, j) = exp(-dist(i, j) / sigma^2), rows normalised; sigma = 0 gives the identity.

    Built on `device` directly: in training it changes every iteration, and a host-to-device copy would sync.
    """
    num = grid[0] * grid[1]
    if sigma == 0:
        return torch.eye(num, device=device)
    coords = _grid_coords(grid, device).double()
    weight = torch.exp(-torch.cdist(coords, coords) / sigma**2)
    return (weight / weight.sum(dim=1, keepdim=True)).float()


def official_smoothing(img_size: int, sigma: float, num_positions: int) -> torch.Tensor:
    """The release's (M, M) table with M = (img_size // 14)^2, sliced to its first `num_positions` columns.

    Each entry is float32(math.exp(-d2 / sigma^2)) for the squared distance d2 on a sqrt(M)-wide grid, then
    divided by the row sums broadcast over columns, exactly as the release computes it (column-normalised).
    """
    side = img_size // OFFICIAL_TOKEN_SIZE
    if side * side < num_positions:
        raise UserInputError(f"smoothing.mode=official builds the release's table of (img_size // 14)^2 = "
                             f"{side * side} positions, fewer than the model's {num_positions} (it assumes "
                             "patch size 16); use smoothing.mode=paper")
    if sigma == 0:
        return torch.eye(side * side)[:, :num_positions]
    coords = _grid_coords((side, side))
    squared = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
    table = torch.tensor([math.exp(-d / sigma**2) for d in range(int(squared.max()) + 1)], dtype=torch.float32)
    weight = table[squared]
    return (weight / weight.sum(-1))[:, :num_positions]


def position_smoothing(mode: str, grid: Grid, img_size: int, sigma: float,
                       device: torch.device | None = None) -> torch.Tensor:
    """Soft-target table whose row y is the target distribution for a patch at true position y."""
    if mode == "paper":
        return paper_smoothing(grid, sigma, device)
    if mode == "official":
        return official_smoothing(img_size, sigma, grid[0] * grid[1]).to(device)
    raise UserInputError(f"smoothing={mode!r}; expected one of {MODES}")


def sigma_at(mode: str, sigma0: float, sigma_t: float, iteration: int, iterations_per_epoch: int,
             max_iterations: int) -> float:
    """Sigma for this iteration: per-iteration linear decay (paper Eq. 7), or the release's per-epoch
    (1 - epoch / epochs) * sigma0 when sigma_t < sigma0 (it ignores sigma_t), constant otherwise."""
    if mode == "paper":
        return sigma0 + (sigma_t - sigma0) * iteration / max_iterations
    if mode == "official":
        if sigma_t >= sigma0:
            return sigma0
        epochs = max_iterations // iterations_per_epoch
        return (1 - (iteration // iterations_per_epoch) / float(epochs)) * sigma0
    raise UserInputError(f"smoothing={mode!r}; expected one of {MODES}")
