"""`droppos-bench cls posprobe`: paper Tab. 7, how much position a frozen backbone knows.

A linear N-way position head on the patch tokens of a frozen encoder, trained with plain cross-entropy while
`drop_ratio` of the patches (75% in the paper) lose their position embedding to a learnable mask token. Loss
and accuracy count the dropped patches only: a patch that keeps its embedding can be placed by reading it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from torch import nn

from backbone import VisionTransformer, load_model
from backbone.masking import random_mask
from engine import build_train_runner, peak_lr
from engine.errors import UserInputError
from engine.images import decode_tensor, eval_transform, image_folder, pretrain_transform
from engine.model import DeviceLoggedModel, unwrap_model
from engine.runner import TrainSpec, Validation, train_from_config

from .finetune import CONFIGS_DIR
from .metric import TopKAccuracy


def dropped_positions(dropped: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) indices of the True entries of `dropped` (B, N), ascending: what boolean indexing selects, but of
    a known size, so evaluation never waits for the host to learn it. Every row has `count` True entries."""
    return dropped.byte().argsort(dim=1, descending=True, stable=True)[:, :count]


class PositionProbe(DeviceLoggedModel):
    """Frozen encoder + trainable position mask token + linear head over the grid's positions."""

    def __init__(self, net: VisionTransformer, drop_ratio: float, seed: int):
        super().__init__()
        self.net, self.drop_ratio, self.seed = net.requires_grad_(False).eval(), drop_ratio, seed
        self.mask_pos_token = nn.Parameter(torch.zeros(1, 1, net.embed_dim))
        nn.init.normal_(self.mask_pos_token, std=0.02)
        self.head = nn.Linear(net.embed_dim, net.grid_size[0] * net.grid_size[1])
        self.val_generator: torch.Generator | None = None

    def train(self, mode: bool = True) -> PositionProbe:
        """The encoder stays in eval mode (no drop path): only the mask token and the head learn."""
        super().train(mode)
        self.net.eval()
        return self

    def num_dropped(self, num_patches: int) -> int:
        """Patches per image that lose their position embedding."""
        return round(num_patches * self.drop_ratio)

    def logits(self, images: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """(position logits (B, N, N), dropped (B, N) bool): every patch is seen, `drop_ratio` without position."""
        x = self.net.patch_embed(images).flatten(1, 2)
        batch, num = x.shape[:2]
        dropped = random_mask(batch, num, num - self.num_dropped(num), x.device, generator)
        patch_pos = self.net.pos_embed[:, self.net.num_pos_prefix_tokens:]  # registers have no position
        pos = torch.where(dropped.unsqueeze(-1), self.mask_pos_token.to(x.dtype), patch_pos)
        tokens = self.net.encode_patches(x + pos)[:, self.net.num_prefix_tokens:]
        return self.head(tokens), dropped

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, mode: str = "loss") -> Any:
        if mode == "loss":
            logits, dropped = self.logits(images, None)
            targets = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
            per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            weights = dropped.flatten().float()
            loss = (per_token * weights).sum() / weights.sum()
            correct = (logits.detach().argmax(-1) == targets).flatten().float()
            return {"loss": loss, "position_acc": (correct * weights).sum() / weights.sum()}
        if mode == "predict":
            logits, dropped = self.logits(images, self.val_generator)
            positions = dropped_positions(dropped, self.num_dropped(logits.shape[1]))
            picked = logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
            # a patch's label is its position
            return [{"logits": picked.flatten(0, 1).float(), "labels": positions.flatten()}]
        raise ValueError(f"mode={mode!r}; expected 'loss' or 'predict'")


class ProbeMasksHook(Hook):
    """Every evaluation draws the same masks: the val generator restarts from the seed."""

    def before_val_epoch(self, runner) -> None:
        model = unwrap_model(runner.model)
        device = model.mask_pos_token.device
        model.val_generator = torch.Generator(device).manual_seed(model.seed)


def build_posprobe_runner(cfg):
    """Frozen encoder from `cfg.ckpt` (pre-trained or fine-tuned; architecture from its weights), the probe, AdamW."""
    if not cfg.ckpt:
        raise UserInputError("cls posprobe needs ckpt=PATH (the backbone to probe)")
    net, report = load_model(cfg.ckpt, cfg.ckpt_format, allow_pickle=cfg.allow_pickle, img_size=cfg.model.img_size)
    img_size = cfg.model.img_size
    train = image_folder(cfg.data.root, "train", pretrain_transform(img_size, cfg.data.crop_scale),
                         cfg.data.skip_invalid, decode=decode_tensor)
    val = image_folder(cfg.data.root, "val", eval_transform(img_size), cfg.data.skip_invalid)
    model = PositionProbe(net, cfg.model.drop_ratio, cfg.seed)
    lr = peak_lr(cfg.optim.base_lr, cfg.effective_batch)
    params = [model.mask_pos_token, *model.head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    runner = build_train_runner(TrainSpec.from_config(cfg, [ProbeMasksHook()]), model, train, optimizer,
                                experiment_name=cfg.config_name, cfg=cfg,
                                validation=Validation(val, TopKAccuracy(), "top1"))
    runner.logger.info(f"position probe of {cfg.ckpt}\n{report}")
    return runner


def run_posprobe(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Train and evaluate the position probe per `config`; returns the metrics.json path."""
    return train_from_config(build_posprobe_runner, CONFIGS_DIR, config, overrides)
