"""MAE (He et al. 2022), the baseline of the paper's Tab. 5 and 6: reconstruct the pixels of masked patches.

Our ViT plus MAE's decoder, with the MAE release's parameter names (`mask_token`, `decoder_pos_embed`,
`decoder_*`), so its pre-training checkpoints load by key and the encoder exports by dropping those keys.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from backbone import VisionTransformer
from backbone.masking import patchify, random_split
from backbone.pos_embed import sincos_2d_pos_embed
from backbone.vit import Block, init_mae_style
from engine.errors import UserInputError


class PixelDecoderViT(VisionTransformer):
    """ViT encoder + MAE's pixel decoder (fixed sin-cos positions): what MAE and MAE+ share. They differ in what
    enters the encoder (MAE: the visible patches; MAE+: every patch, masked ones as a mask token) and so in what
    enters the decoder."""

    def __init__(
        self,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        **vit_kwargs: Any,
    ):
        super().__init__(**vit_kwargs)
        if self.num_prefix_tokens != 1:
            raise UserInputError(f"{type(self).__name__} needs the [CLS] token (class_token=True)")
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        patch, channels = self.config["patch_size"], self.config["in_chans"]
        self.decoder_embed = nn.Linear(self.embed_dim, decoder_dim)
        self.decoder_pos_embed = nn.Parameter(sincos_2d_pos_embed(decoder_dim, self.grid_size), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=self.config["norm_eps"])
        self.decoder_pred = nn.Linear(decoder_dim, patch * patch * channels)
        for part in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_mae_style(part)

    def draw_visible(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample random indices (B, K) of the patches that stay visible, K = N x (1 - mask_ratio)."""
        num_patches = self.grid_size[0] * self.grid_size[1]
        ids_visible, _ = random_split(batch, num_patches, int(num_patches * (1 - self.mask_ratio)), device, generator)
        return ids_visible

    def predict_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel predictions (B, N, p*p*C) from decoder tokens (B, 1 + N, decoder_dim), [CLS] first, patches in
        grid order: decoder positions added, blocks, norm, linear head; the [CLS] output dropped."""
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x, self.grid_size)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


class MAE(PixelDecoderViT):
    """ViT encoder on the visible patches + a decoder with fixed sin-cos positions predicting masked pixels."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.decoder_embed.out_features))
        nn.init.normal_(self.mask_token, std=0.02)

    def encode_visible(self, images: torch.Tensor, ids_visible: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, 1 + K, D) for the visible patches, each with its own position."""
        x = self.patch_embed(images).flatten(1, 2) + self.pos_embed[:, 1:]
        return self.encode_patches(x.gather(1, ids_visible.unsqueeze(-1).expand(-1, -1, x.shape[-1])))

    def decode(self, tokens: torch.Tensor, ids_visible: torch.Tensor) -> torch.Tensor:
        """Pixel predictions (B, N, p*p*C) for every patch: visible tokens scattered to their places, mask
        tokens elsewhere, decoder positions added."""
        x = self.decoder_embed(tokens)
        batch, _, dim = x.shape
        num_patches = self.decoder_pos_embed.shape[1] - 1
        full = self.mask_token.to(x.dtype).expand(batch, num_patches, dim)
        full = full.scatter(1, ids_visible.unsqueeze(-1).expand(-1, -1, dim), x[:, 1:])
        return self.predict_pixels(torch.cat([x[:, :1], full], dim=1))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Mean squared error on the masked patches (normalised pixels when norm_pix_loss)."""
        ids_visible = self.draw_visible(images.shape[0], images.device, generator)
        pred = self.decode(self.encode_visible(images, ids_visible), ids_visible)
        return {"loss": reconstruction_loss(pred, images, ids_visible, self.config["patch_size"],
                                            self.norm_pix_loss)}


def reconstruction_loss(pred: torch.Tensor, images: torch.Tensor, ids_visible: torch.Tensor, patch_size: int,
                        norm_pix_loss: bool) -> torch.Tensor:
    """Per-patch MSE averaged over masked patches; targets normalised per patch (unbiased variance, as MAE)."""
    target = patchify(images, patch_size).float()
    if norm_pix_loss:
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    masked = torch.ones_like(per_patch).scatter(1, ids_visible, 0.0)
    return (per_patch * masked).sum() / masked.sum()
