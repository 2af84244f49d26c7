"""MAE+ (Wang et al., AdPE): MAE whose encoder sees every patch, masked ones as a mask token, on several
low-resolution crops per image; the base that AdPE perturbs.

Masked patches enter the encoder as `mask_token` plus their own position embedding (so the encoder, unlike MAE's,
knows where the missing patches are); the decoder is MAE's (fixed sin-cos positions, no mask token of its own) and
the loss is MAE's normalised-pixel MSE on the masked patches. Masking is `where`-based: no host sync, nothing per
sample in Python. The encoder exports by dropping `mask_token` and the decoder keys, like MAE's.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .mae import PixelDecoderViT, reconstruction_loss


class MAEPlus(PixelDecoderViT):
    """ViT encoder on all patches (masked ones replaced by a mask token in the encoder's width) + MAE's decoder."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)

    def mask(self, batch: int, device: torch.device,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_visible (B, K), masked (B, N) bool): the patches that stay, and the mask over every patch."""
        ids_visible = self.draw_visible(batch, device, generator)
        num_patches = self.grid_size[0] * self.grid_size[1]
        masked = torch.ones(batch, num_patches, dtype=torch.bool, device=device).scatter(1, ids_visible, False)
        return ids_visible, masked

    def patch_positions(self, masked: torch.Tensor) -> torch.Tensor:
        """Position embedding of each patch token, (1 or B, N, D): the true one (AdPE perturbs masked ones)."""
        return self.pos_embed[:, 1:]

    def encode(self, images: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, 1 + N, D) for every patch; masked patches carry the mask token instead of content."""
        x = self.patch_embed(images).flatten(1, 2)
        x = torch.where(masked.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        return self.encode_patches(x + self.patch_positions(masked))

    def reconstruct(self, images: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Pixel predictions (B, N, p*p*C) for every patch of `images` (B, C, H, W)."""
        return self.predict_pixels(self.decoder_embed(self.encode(images, masked)))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """MSE on the masked patches of every crop. `images` is (B, crops, C, H, W) as `MultiCrop` batches it, or
        (B, C, H, W); each crop is masked independently and the loss averages over all crops' masked patches."""
        images = images.flatten(0, 1) if images.ndim == 5 else images
        ids_visible, masked = self.mask(images.shape[0], images.device, generator)
        pred = self.reconstruct(images, masked)
        return {"loss": reconstruction_loss(pred, images, ids_visible, self.config["patch_size"],
                                            self.norm_pix_loss)}
