"""DropPos (paper Sec. 3): mask patches, drop most visible positions, classify every visible patch's position.

The model is our ViT plus a position mask token and a position decoder, with the authors' parameter names
at top level (`mask_pos_token`, `decoder_*`), so their released checkpoints load by key and the encoder
exports by dropping those keys. Masking is gather-based: no host sync, nothing that grows with batch^2.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbone import VisionTransformer
from backbone.masking import random_mask, random_split
from backbone.vit import Block, init_mae_style
from engine.errors import UserInputError


class DropPos(VisionTransformer):
    """ViT encoder + position mask token + a decoder (no position embedding) with N-way position logits."""

    def __init__(
        self,
        decoder_dim: int = 512,
        decoder_depth: int = 2,
        decoder_heads: int = 16,
        mask_ratio: float = 0.75,
        pos_mask_ratio: float = 0.75,
        tau: float | None = 0.1,
        **vit_kwargs: Any,
    ):
        super().__init__(**vit_kwargs)
        if self.num_prefix_tokens != 1:
            raise UserInputError("DropPos needs the [CLS] token (class_token=True): it always keeps its position")
        num_patches = self.grid_size[0] * self.grid_size[1]
        _check_ratios(mask_ratio, pos_mask_ratio, tau, num_patches)
        self.mask_ratio, self.pos_mask_ratio = mask_ratio, pos_mask_ratio
        self.tau = None if tau is None or math.isinf(tau) else tau
        self.mask_pos_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.decoder_embed = nn.Linear(self.embed_dim, decoder_dim)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=self.config["norm_eps"])
        self.decoder_pred = nn.Linear(decoder_dim, num_patches)
        for part in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_mae_style(part)
        nn.init.normal_(self.mask_pos_token, std=0.02)

    def mask(self, batch: int, mask_ratio: float, pos_mask_ratio: float, device: torch.device,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_visible (B, K), dropped (B, K) bool): which patches stay, and which of them lose their position."""
        num_patches = self.grid_size[0] * self.grid_size[1]
        visible = int(num_patches * (1 - mask_ratio))
        anchors = int(visible * (1 - pos_mask_ratio))
        ids_visible, _ = random_split(batch, num_patches, visible, device, generator)
        dropped = random_mask(batch, visible, anchors, device, generator)
        return ids_visible, dropped

    def encode_visible(self, images: torch.Tensor, ids_visible: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, 1 + K, D) for the visible patches; dropped ones carry the mask token as position."""
        x = self.patch_embed(images).flatten(1, 2)
        dim = x.shape[-1]
        index = ids_visible.unsqueeze(-1).expand(-1, -1, dim)
        pos = self.pos_embed[:, 1:].expand(x.shape[0], -1, -1).gather(1, index)
        pos = torch.where(dropped.unsqueeze(-1), self.mask_pos_token.to(pos.dtype), pos)
        return self.encode_patches(x.gather(1, index) + pos)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position logits (B, K, N) of the patch tokens; the [CLS] output is dropped."""
        x = self.decoder_embed(tokens)
        for block in self.decoder_blocks:
            x = block(x, self.grid_size)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def attentive_weights(self, images: torch.Tensor, ids_visible: torch.Tensor) -> torch.Tensor:
        """Paper Eq. 9 at the visible patches, renormalised per image: softmax over all patches of
        cos([CLS], patch) / tau, from a forward of the current encoder with every position.

        The forward records no autograd graph (bf16 under the training autocast). It is `no_grad` rather than
        `inference_mode`: torch.compile cannot trace a graph that mixes inference tensors into training.
        """
        with torch.no_grad():
            tokens = self.forward_tokens(images).float()
            affinity = F.cosine_similarity(tokens[:, :1], tokens[:, 1:], dim=-1).div(self.tau).softmax(dim=-1)
            weights = affinity.gather(1, ids_visible)
            return weights / weights.sum(dim=1, keepdim=True)

    def forward(self, images: torch.Tensor, smoothing: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Loss (Eq. 8) and weighted position accuracy for one batch; `smoothing` is the soft-target table."""
        ids_visible, dropped = self.mask(images.shape[0], self.mask_ratio, self.pos_mask_ratio, images.device,
                                         generator)
        logits = self.decode(self.encode_visible(images, ids_visible, dropped))
        weights = dropped.float()
        if self.tau is not None:
            weights = weights * self.attentive_weights(images, ids_visible)
        return position_loss(logits, ids_visible, weights, smoothing)


def _check_ratios(mask_ratio: float, pos_mask_ratio: float, tau: float | None, num_patches: int) -> None:
    """Refuse settings that would train on NaN or silently mean something else."""
    if not 0 <= mask_ratio < 1 or int(num_patches * (1 - mask_ratio)) < 1:
        raise UserInputError(f"model.mask_ratio={mask_ratio}: expected 0 <= gamma < 1 leaving at least one of "
                             f"the {num_patches} patches visible")
    if not 0 <= pos_mask_ratio <= 1:
        raise UserInputError(f"model.pos_mask_ratio={pos_mask_ratio}: expected 0 <= gamma_pos <= 1")
    if tau is not None and not tau > 0:
        raise UserInputError(f"model.tau={tau}: expected a temperature > 0 (inf or None: attentive reconstruction "
                             "off)")


def position_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                  smoothing: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weighted soft cross-entropy against smoothing rows of the true positions, normalised over the batch,
    and the top-1 position accuracy weighted the same way (both stay on the device: no host sync)."""
    num_positions = logits.shape[-1]
    soft_targets = smoothing.to(logits.device)[:, :num_positions][targets]
    log_prob = F.log_softmax(logits.float(), dim=-1)
    total = weights.sum()
    loss = (-(soft_targets * log_prob).sum(-1) * weights).sum() / total
    correct = (logits.detach().argmax(dim=-1) == targets).float()
    return {"loss": loss, "position_acc": (correct * weights).sum() / total}

