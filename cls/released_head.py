"""A released linear head (DINOv2's `dinov2_vitb14_linear_head.pth` or `..._linear4_head.pth`) scored on the cached
features, with nothing trained. The cache's rows hold DINOv2's linear input in its order (cls/features.py), so the
release's own head reads them as its evaluation did, and its top-1 checks the whole extraction (weights, transform,
pooling, norm) against the number the release reports.
"""
from __future__ import annotations

from pathlib import Path

import torch

from backbone.checkpoint import read_checkpoint
from engine.errors import UserInputError

from .linear_heads import accuracy


def read_linear_head(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's weight [classes, width] and bias [classes] from a state dict holding one pair of them (`weight` /
    `bias`, or one prefix's, as `linear.weight` / `linear.bias`); read as every checkpoint is, without pickles."""
    state = read_checkpoint(path, prefix="").state
    prefixes = [key.removesuffix("weight") for key in state if key.endswith("weight")]
    if len(prefixes) != 1 or prefixes[0] + "bias" not in state:
        raise UserInputError(f"linear head {path}: expected one 'weight' and its 'bias' (an nn.Linear's state dict), "
                             f"found keys {sorted(state)}")
    weight, bias = state[prefixes[0] + "weight"].float(), state[prefixes[0] + "bias"].float()
    if weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise UserInputError(f"linear head {path}: weight {tuple(weight.shape)} and bias {tuple(bias.shape)}; "
                             "expected [classes, width] and [classes]")
    return weight, bias


def feature_for_width(width: int, candidates: dict[str, tuple[int, int]], path: str | Path) -> str:
    """The one feature among `candidates` (name: column range) as wide as the head's input."""
    fits = [name for name, (start, stop) in candidates.items() if stop - start == width]
    if len(fits) != 1:
        widths = ", ".join(f"{name} {stop - start}" for name, (start, stop) in candidates.items())
        raise UserInputError(f"linear head {path} reads {width} values per image; "
                             + (f"{' and '.join(fits)} are as wide: keep one of them in linear.features"
                                if fits else f"the cached features are {widths} (cls4 and cls4+avg need "
                                             "features.last_layers=4)"))
    return fits[0]


def score_head(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               batch_size: int) -> dict[str, float]:
    """Top-1 (and top-5 where there are >= 5 classes) of the head on every row, in %."""
    weight, bias = weight.to(features.device), bias.to(features.device)
    scores = accuracy(features, labels, torch.arange(len(labels)), weight.T.unsqueeze(0), bias.unsqueeze(0),
                      batch_size)[0]
    return dict(zip(("top1", "top5"), scores, strict=False))
