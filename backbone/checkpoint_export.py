"""Writing checkpoints: our format (safetensors + json metadata) and the layouts detectron2 and mmseg load.

Every file is written atomically (temporary file, then rename), so an interrupted export never leaves a
truncated checkpoint where a good one was.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.errors import UserInputError
from engine.safe_io import atomic_path

from .checkpoint import OURS_TAG, split_pretraining_keys
from .vit import VisionTransformer

LAYOUTS = ("ours", "timm", "detectron2", "mmseg")
FORMAT_VERSION = 1
# What mmseg's own converter (tools/model_converters/beit2mmseg.py) renames for its MAE / BEiT backbones.
MMSEG_RENAMES = (
    ("patch_embed.proj.", "patch_embed.projection."),
    (".norm1.", ".ln1."),
    (".norm2.", ".ln2."),
    (".mlp.fc1.", ".ffn.layers.0.0."),
    (".mlp.fc2.", ".ffn.layers.1."),
    (".ls1.gamma", ".gamma_1"),
    (".ls2.gamma", ".gamma_2"),
)


def cpu_state(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of the encoder's (and head's) tensors; a pre-training model's decoder
    and mask tokens are left out, so DropPos and MAE export the encoder every task loads."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return split_pretraining_keys(state, drop_decoder=True, drop_head=False)[0]


def to_detectron2_vitdet(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """detectron2 ViTDet layout: encoder keys under 'backbone.net.' in {'model': ...}.

    ViTDet's ViT has no [CLS] token or final norm but keeps the pre-training pos embed with its [CLS]
    slot (pretrain_use_cls_token=True), so a table without one gets a zero slot.
    """
    out = {}
    for key, value in state.items():
        if key.split(".")[0] in ("cls_token", "norm", "fc_norm", "head"):
            continue
        if key == "pos_embed" and "cls_token" not in state:
            value = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
        out["backbone.net." + key] = value
    return {"model": out}


def to_mmseg_mae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmseg MAE/BEiT backbone layout, as mmseg's beit2mmseg converter writes it (backbone-local keys); mmseg's
    MAE backbone loads it with only its relative position tables and layer scales missing (when ours has none)."""
    out = {}
    for key, value in state.items():
        if key.split(".")[0] in ("norm", "fc_norm", "head"):
            continue
        if key.startswith("blocks."):
            key = "layers." + key[len("blocks."):]
        for old, new in MMSEG_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def export_checkpoint(
    model: VisionTransformer, path: str | os.PathLike, layout: str = "ours", meta: dict[str, Any] | None = None
) -> Path:
    """Write `model` in `layout`; 'ours' and 'timm' pick safetensors or torch by the file suffix."""
    path = Path(path)
    state = cpu_state(model)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "ours" and path.suffix != ".safetensors":
        raise UserInputError(f"our format is safetensors: name the file *.safetensors, not {path.name}")
    with atomic_path(path) as tmp:
        if layout == "ours":
            header = dict(format_version=FORMAT_VERSION, vit_config=model.config, **(meta or {}))
            save_file(state, str(tmp), metadata={"format": OURS_TAG, "meta": json.dumps(header, sort_keys=True)})
        elif layout == "timm" and path.suffix == ".safetensors":
            save_file(state, str(tmp))
        elif layout == "timm":
            torch.save(state, tmp)
        elif layout == "detectron2":
            torch.save(to_detectron2_vitdet(state), tmp)
        else:
            torch.save(to_mmseg_mae(state), tmp)
    return path
