"""`droppos-bench cls linprobe`: MAE's linear-probing protocol, the cheap way to compare frozen backbones.

The encoder is frozen (and kept in eval mode); only BatchNorm without affine parameters and a linear layer on
its pooled feature learn, with LARS (or SGD), RandomResizedCrop + flip and nothing else.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from timm.optim import Lars
from torch import nn

from engine import build_train_runner, peak_lr
from engine.errors import UserInputError
from engine.hooks import ModelMetaHook
from engine.images import decode_tensor, eval_transform, image_folder, pretrain_transform
from engine.runner import TrainSpec, Validation, train_from_config

from .finetune import (
    CONFIGS_DIR,
    MODEL_PREFIX,
    ClassifierModel,
    build_classifier,
    check_same_classes,
    run_model_config,
)
from .metric import TopKAccuracy

OPTIMIZERS = ("lars", "sgd")


class LinearProbe(ClassifierModel):
    """ClassifierModel whose encoder stays frozen and in eval mode: only the BN + linear head trains."""

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.net.eval()
        self.net.head.train(mode)
        return self


def probe_head(dim: int, num_classes: int) -> nn.Sequential:
    """BatchNorm without affine (it only standardises the frozen features) then a linear layer, as MAE."""
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


def lars(params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> Lars:
    """MAE's LARS: weights (ndim > 1) get weight decay and the trust ratio 0.001 ||w|| / ||update|| on every step,
    biases neither. timm's Lars adapts only where a group says always_adapt (or has weight decay), so the groups
    say it; its trust denominator is ||g|| + wd ||w|| where MAE's is ||g + wd w||: equal at the recipe's wd of 0."""
    params = list(params)
    groups = [dict(params=[p for p in params if p.ndim > 1], always_adapt=True),
              dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0, always_adapt=False)]
    return Lars(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, eps=0.0)


def probe_optimizer(optim: dict[str, Any], head: nn.Module, lr: float) -> torch.optim.Optimizer:
    """LARS (MAE's) or SGD with momentum 0.9 over the probe head's parameters, at peak lr `lr`."""
    if optim["type"] == "lars":
        return lars(head.parameters(), lr, optim["weight_decay"])
    return torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=optim["weight_decay"])


def build_linprobe_runner(cfg):
    """Frozen encoder from `cfg.ckpt`, BN + linear head, LARS or SGD, per-epoch top-1 / top-5."""
    if cfg.optim.type not in OPTIMIZERS:
        raise UserInputError(f"optim.type={cfg.optim.type!r}; expected one of {OPTIMIZERS}")
    img_size = cfg.model.img_size
    train = image_folder(cfg.data.root, "train", pretrain_transform(img_size, cfg.data.crop_scale),
                         cfg.data.skip_invalid, every_class=True, decode=decode_tensor)
    val = image_folder(cfg.data.root, "val", eval_transform(img_size), cfg.data.skip_invalid)
    check_same_classes(train, val, cfg.data.root)
    net = build_classifier(cfg, len(train.classes))
    net.requires_grad_(False)
    net.head = probe_head(net.embed_dim, len(train.classes))
    optimizer = probe_optimizer(cfg.optim, net.head, peak_lr(cfg.optim.base_lr, cfg.effective_batch))
    model = LinearProbe(net, mixup=None, smoothing=0.0, precision=cfg.precision)
    hooks = [ModelMetaHook(MODEL_PREFIX, run_model_config(cfg, net))]
    runner = build_train_runner(TrainSpec.from_config(cfg, hooks), model, train, optimizer,
                                experiment_name=cfg.config_name, cfg=cfg,
                                validation=Validation(val, TopKAccuracy(), "top1"))
    return runner


def run_linprobe(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Train and evaluate the linear probe per `config`; returns the metrics.json path."""
    return train_from_config(build_linprobe_runner, CONFIGS_DIR, config, overrides)
