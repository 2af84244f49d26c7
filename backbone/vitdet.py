"""ViTDet's ViT (Li et al., 2022) as a family of its own: window attention, decomposed relative position bias, and an
absolute position embedding that stays on the pre-training grid and is resized to the input's grid every forward."""
from __future__ import annotations

import torch
from torch import nn

from engine.errors import UserInputError

from .vit import VisionTransformer


class ViTDetViT(VisionTransformer):
    """Our ViT with ViTDet's absolute position embedding: the trained table stays on the pre-training grid
    (`pretrain_img_size`: 14 x 14 for 224 px with patch 16) and every forward resizes it to the patch grid
    (bicubic, align_corners=False, as ViTDet's get_abs_pos), rather than training a table resampled to 64 x 64 at
    1024 px. `grid_size` is therefore the table's grid, which is also what checkpoints are resampled to on load;
    window and relative-position sizes follow `img_size`."""

    def __init__(self, pretrain_img_size: int = 224, **kwargs):
        super().__init__(**kwargs)
        patch = self.config["patch_size"]
        if pretrain_img_size % patch:
            raise UserInputError(f"pretrain_img_size {pretrain_img_size} is not a multiple of patch_size {patch}")
        self.config["pretrain_img_size"] = pretrain_img_size
        self.grid_size = (pretrain_img_size // patch, pretrain_img_size // patch)
        table = torch.zeros(1, self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1], self.embed_dim)
        self.pos_embed = nn.Parameter(table, requires_grad=self.config["pos_embed_trainable"])
        self.init_pos_embed(self.config["pos_embed"])
