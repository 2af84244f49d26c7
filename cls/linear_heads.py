"""DINOv2's linear evaluation on cached frozen features: a grid of linear heads, one per (feature variant, lr),
trained together over the same mini-batches, chosen on a held-out slice of train, then scored on val.

The heads of one variant are one batched matmul ([B, D] @ [H, D, C]) with a per-head lr, so a step costs one read
of the batch's features whatever the number of lrs. The features are used as given (no BatchNorm or
standardisation, as DINOv2); lrs are used as given (no scaling by the batch size). The chosen head is not retrained
on the held-out rows (DINOv2 does not either).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

MOMENTUM = 0.9
INIT_STD = 0.01  # DINOv2's linear layer: weight ~ N(0, 0.01^2), bias 0


@dataclass
class LinearGridResult:
    """The chosen head (best held-out top-1, the first in grid order on ties) and every head's numbers, as plain
    values for json. top5 is None where num_classes < 5."""

    variant: str
    lr: float
    holdout_top1: float
    val_top1: float
    val_top5: float | None
    train_rows: int
    holdout_rows: int
    heads: list[dict[str, object]]  # {variant, lr, holdout_top1, val_top1, val_top5} in grid order


def fit_linear_grid(train: Mapping[str, torch.Tensor], train_labels: torch.Tensor, val: Mapping[str, torch.Tensor],
                    val_labels: torch.Tensor, num_classes: int, lrs: Sequence[float], epochs: int, batch_size: int,
                    holdout: float = 0.1, weight_decay: float = 0.0, seed: int = 0,
                    device: torch.device | str | None = None) -> LinearGridResult:
    """Train a head per (variant, lr) on train less a seeded random `holdout` fraction, pick the best on that
    fraction, score every head on val. Features may be float16 on the CPU (memmapped): each batch goes to
    `device` (default: the first variant's device) and becomes float32 there. The same seed gives the same
    result."""
    check_grid(train, train_labels, val, val_labels, num_classes, lrs, epochs, batch_size, holdout)
    device = torch.device(device) if device is not None else next(iter(train.values())).device
    gen = torch.Generator().manual_seed(seed)
    train_rows, holdout_rows = holdout_split(len(train_labels), holdout, gen)
    order = batch_order(train_rows, epochs, gen)
    lr = torch.tensor(lrs, dtype=torch.float32, device=device)
    heads = []
    for name, features in train.items():
        weight, bias = init_heads(len(lrs), features.shape[1], num_classes, gen)
        weight, bias = train_heads(features, train_labels, order, batch_size, lr, weight.to(device),
                                   bias.to(device), weight_decay, progress=f"{len(lrs)} heads on {name}")
        held_out = accuracy(features, train_labels, holdout_rows, weight, bias, batch_size)
        scored = accuracy(val[name], val_labels, torch.arange(len(val_labels)), weight, bias, batch_size)
        heads += [dict(variant=name, lr=float(rate), holdout_top1=h[0], val_top1=v[0],
                       val_top5=v[1] if len(v) > 1 else None)
                  for rate, h, v in zip(lrs, held_out, scored, strict=True)]
    best = max(heads, key=lambda head: head["holdout_top1"])  # max keeps the first of equals
    return LinearGridResult(variant=best["variant"], lr=best["lr"], holdout_top1=best["holdout_top1"],
                            val_top1=best["val_top1"], val_top5=best["val_top5"], train_rows=len(train_rows),
                            holdout_rows=len(holdout_rows), heads=heads)


def holdout_split(n: int, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows), sorted: a seeded random round(fraction * n) rows held out, not stratified."""
    rows = torch.randperm(n, generator=gen)
    held = round(fraction * n)
    return rows[held:].sort().values, rows[:held].sort().values


def batch_order(rows: torch.Tensor, epochs: int, gen: torch.Generator) -> torch.Tensor:
    """[epochs, len(rows)]: each epoch a fresh permutation of `rows`, shared by every head."""
    return torch.stack([rows[torch.randperm(len(rows), generator=gen)] for _ in range(epochs)])


def init_heads(heads: int, dim: int, num_classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [heads, dim, C] ~ N(0, INIT_STD^2) and zero biases [heads, C], drawn on the CPU so that every device
    starts from the same heads."""
    return INIT_STD * torch.randn(heads, dim, num_classes, generator=gen), torch.zeros(heads, num_classes)


def cosine_factor(step: int, steps: int) -> float:
    """The lr multiplier of `step` (0-based) of `steps`: cosine from 1 down towards 0 (CosineAnnealingLR's)."""
    return 0.5 * (1 + math.cos(math.pi * step / steps))


def train_heads(features: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, batch_size: int,
                lr: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_decay: float,
                progress: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD (momentum 0.9, weight decay on weight and bias, as torch.optim.SGD over an nn.Linear) of every head at its
    peak lr `lr[h]` with a cosine schedule over all steps, mean cross-entropy per head. Batches are
    `order`'s rows, batch_size at a time within each epoch (the last one may be smaller). `progress`: a bar's title
    (none without)."""
    order = order.to(features.device)
    labels = labels.to(features.device)
    batches = [epoch[i:i + batch_size] for epoch in order for i in range(0, order.shape[1], batch_size)]
    params = [weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)]
    momenta = [torch.zeros_like(p) for p in params]
    for step, rows in enumerate(tqdm(batches, desc=progress, unit="step", disable=progress is None)):
        x = features[rows].to(weight.device).float()  # cast on the device: half the bytes of float16 rows cross
        y = labels[rows].to(weight.device)
        loss = head_losses(x, y, *params).sum()
        grads = torch.autograd.grad(loss, params)
        step_lr = lr * cosine_factor(step, len(batches))
        with torch.no_grad():
            for p, g, m in zip(params, grads, momenta, strict=True):
                m.mul_(MOMENTUM).add_(g + weight_decay * p)
                p.sub_(step_lr.view(-1, *[1] * (p.ndim - 1)) * m)
    return params[0].detach(), params[1].detach()


def head_losses(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each head on the batch: [H]."""
    logits = torch.matmul(x, weight) + bias.unsqueeze(1)
    heads, batch, classes = logits.shape
    return F.cross_entropy(logits.reshape(-1, classes), y.repeat(heads), reduction="none").view(heads, batch).mean(1)


@torch.no_grad()
def accuracy(features: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor, batch_size: int) -> list[list[float]]:
    """[head][top1 %, top5 % (where C >= 5)] on `rows` of the features, batch_size rows at a time; hits counted on
    the device and read once."""
    tops = (1, 5) if weight.shape[2] >= 5 else (1,)
    rows, labels = rows.to(features.device), labels.to(features.device)
    hits = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        x = features[batch].to(weight.device).float()
        y = labels[batch].to(weight.device)
        ranked = (torch.matmul(x, weight) + bias.unsqueeze(1)).topk(max(tops), dim=2).indices
        found = ranked == y.view(1, -1, 1)
        hits.append(torch.stack([found[:, :, :top].any(2).sum(1) for top in tops], dim=1))
    return (100.0 * torch.stack(hits).sum(0).double() / len(rows)).tolist()


def check_grid(train: Mapping[str, torch.Tensor], train_labels: torch.Tensor, val: Mapping[str, torch.Tensor],
               val_labels: torch.Tensor, num_classes: int, lrs: Sequence[float], epochs: int, batch_size: int,
               holdout: float) -> None:
    """Inputs that would otherwise fail mid-training or train on nothing, named."""
    n = len(train_labels)
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"lrs={list(lrs)}: need at least one lr, each > 0")
    if not train:
        raise ValueError("no feature variants to train on")
    if set(val) != set(train):
        raise ValueError(f"val variants {sorted(val)} differ from train variants {sorted(train)}")
    for name, features in train.items():
        if features.ndim != 2 or len(features) != n:
            raise ValueError(f"variant {name!r}: train features of shape {tuple(features.shape)} for {n} labels")
        if val[name].ndim != 2 or val[name].shape[1:] != features.shape[1:] or len(val[name]) != len(val_labels):
            raise ValueError(f"variant {name!r}: val features of shape {tuple(val[name].shape)} for "
                             f"{len(val_labels)} labels and train features of width {features.shape[1]}")
    if not 0 < round(holdout * n) < n:
        raise ValueError(f"holdout={holdout} of {n} train rows holds out {round(holdout * n)}: need at least one "
                         "held-out row and one training row")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size}: both must be >= 1")
    if not len(val_labels):
        raise ValueError("no val rows to score")
    for split, labels in (("train", train_labels), ("val", val_labels)):
        if not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise ValueError(f"{split} labels span {int(labels.min())}..{int(labels.max())}; expected "
                             f"0..{num_classes - 1} for num_classes={num_classes}")
