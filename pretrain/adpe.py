"""AdPE (Wang, Wang, Xuan, Qi): MAE+ with an adversarial perturbation of the masked tokens' absolute positions.

One persistent perturbation `delta`, shared by all images, maximises the reconstruction loss while the weights
minimise it, both in the same backward pass: delta sits in its own AdamW group with `maximize=True` (gradient
ascent, an Adam step with its own peak lr and no weight decay) and is projected back onto its bound after every
optimizer step (projected gradient ascent, as the authors' optimizer does).

- "embedding" mode: delta in R^D replaces the mask token, so masked tokens are delta + their position embedding.
  It is the `mask_token` parameter itself, ascended instead of descended.
- "coordinate" mode: delta in R^2 is a (row, col) shift in patch cells; masked tokens (a learned mask token as in
  MAE+) get the sin-cos embedding evaluated at their shifted coordinates. Its parameter is `mask_token_shift`.

Visible tokens and [CLS] keep their true positions; the decoder's position embedding is never perturbed. Both
parameter names start with `mask_token`, so the encoder export and every loader drop them with the mask tokens.

With gradient accumulation delta's gradient accumulates like the weights' and it takes one step per optimizer
step, on the whole effective batch's loss. Gradient clipping (off in every shipped recipe) treats it like a weight:
its gradient counts in the global norm and is scaled with the others, which leaves the ascent direction, and up to
Adam's eps its step, unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.utils.hooks import RemovableHandle

from backbone.pos_embed import sincos_2d
from engine.errors import UserInputError

from .mae_plus import MAEPlus

ADV_MODES = ("embedding", "coordinate")
ADV_NORMS = ("l2", "linf")


class AdPE(MAEPlus):
    """MAE+ whose masked tokens carry an adversarial mask token (embedding mode) or adversarially shifted positions
    (coordinate mode), bounded by `adv_eps` in the `adv_norm` norm."""

    def __init__(self, adv_mode: str = "embedding", adv_norm: str = "l2", adv_eps: float = 1.0, **kwargs: Any):
        if adv_mode not in ADV_MODES:
            raise UserInputError(f"adv_mode={adv_mode!r}; expected one of {ADV_MODES}")
        if adv_norm not in ADV_NORMS:
            raise UserInputError(f"adv_norm={adv_norm!r}; expected one of {ADV_NORMS}")
        if adv_eps < 0:
            raise UserInputError(f"adv_eps={adv_eps} must be >= 0")
        super().__init__(**kwargs)
        self.adv_mode, self.adv_norm, self.adv_eps = adv_mode, adv_norm, adv_eps
        if adv_mode == "coordinate":
            if self.config["pos_embed"] != "sincos" or self.config["pos_embed_trainable"]:
                raise UserInputError("coordinate mode shifts the fixed sin-cos position embedding: it needs "
                                     "pos_embed='sincos' and pos_embed_trainable=False")
            self.mask_token_shift = nn.Parameter(torch.zeros(2))
            rows, cols = torch.meshgrid(torch.arange(self.grid_size[0]), torch.arange(self.grid_size[1]),
                                        indexing="ij")
            self.register_buffer("patch_coords", torch.stack([rows.flatten(), cols.flatten()], dim=1),
                                 persistent=False)
        self.project_delta()  # embedding mode starts from the mask token's random init, inside the bound

    @property
    def delta(self) -> nn.Parameter:
        """The perturbation: the mask token (embedding mode) or the (row, col) shift in patch cells (coordinate)."""
        return self.mask_token if self.adv_mode == "embedding" else self.mask_token_shift

    def patch_positions(self, masked: torch.Tensor) -> torch.Tensor:
        """True positions, except masked tokens' in coordinate mode: sin-cos at (row, col) + delta."""
        true = self.pos_embed[:, 1:]
        if self.adv_mode == "embedding":
            return true
        coords = self.patch_coords.to(torch.float64) + self.mask_token_shift.to(torch.float64)
        shifted = sincos_2d(self.embed_dim, coords[:, 0], coords[:, 1]).to(true.dtype)
        return torch.where(masked.unsqueeze(-1), shifted, true)

    @torch.no_grad()
    def project_delta(self) -> None:
        """Delta back onto its bound (after every ascent step)."""
        project_(self.delta, self.adv_norm, self.adv_eps)

    def delta_stats(self) -> dict[str, torch.Tensor]:
        """What the log shows of delta: its L2 norm, plus its (row, col) shift or its largest absolute entry."""
        delta = self.delta.detach().float()
        stats = {"delta_norm": torch.linalg.vector_norm(delta)}
        if self.adv_mode == "coordinate":
            return {**stats, "delta_row": delta[0], "delta_col": delta[1]}
        return {**stats, "delta_max": delta.abs().max()}

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """MAE+'s loss under the current delta, and delta's statistics (logged every log interval)."""
        return {**super().forward(images, generator), **self.delta_stats()}


def project_(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """In place onto the L2 ball (rescaled, direction kept) or the L-inf box (clamped) of radius `eps`; a zero
    delta stays zero. Device-side only, no host sync."""
    if norm == "l2":
        scale = (eps / torch.linalg.vector_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return delta.mul_(scale)
    return delta.clamp_(-eps, eps)


def adpe_param_groups(model: AdPE, weight_decay: float, adv_lr: float) -> list[dict[str, Any]]:
    """AdamW groups: the weights as in every recipe (timm's decay / no-decay split) and delta's own group, which
    ascends (`maximize`) from peak lr `adv_lr` without weight decay. The lr schedulers scale every group by the same
    factor, so delta follows the same warmup + cosine from its own peak."""
    delta = model.delta
    groups = param_groups_weight_decay(model, weight_decay)
    for group in groups:
        group["params"] = [p for p in group["params"] if p is not delta]
    return [*groups, dict(params=[delta], lr=adv_lr, weight_decay=0.0, maximize=True)]


def project_after_every_step(optimizer: torch.optim.Optimizer, model: AdPE) -> RemovableHandle:
    """Project delta onto its bound right after each `optimizer.step()` (projected gradient ascent)."""
    return optimizer.register_step_post_hook(lambda optimizer, args, kwargs: model.project_delta())
