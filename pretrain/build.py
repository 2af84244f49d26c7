"""Building a pre-training model (DropPos, MAE, MAE+ or AdPE) from its config, and loading one back with its decoder."""
from __future__ import annotations

import os
from typing import Any

import torch

from backbone import CheckpointError, build_vit, infer_vit_config, read_checkpoint
from engine.errors import UserInputError

from .adpe import AdPE
from .droppos import DropPos
from .mae import MAE
from .mae_plus import MAEPlus

ARCHITECTURES = {"droppos": DropPos, "mae": MAE, "mae_plus": MAEPlus, "adpe": AdPE}


def build_pretrain_model(model_cfg: dict[str, Any]) -> DropPos | MAE | MAEPlus:
    """`model_cfg` = dict(arch='droppos' | 'mae' | 'mae_plus' | 'adpe', size='base', **constructor overrides)."""
    kwargs = dict(model_cfg)
    arch, size = kwargs.pop("arch", None), kwargs.pop("size", "base")
    if arch not in ARCHITECTURES:
        raise UserInputError(f"model.arch={arch!r}; expected one of {sorted(ARCHITECTURES)}")
    return build_vit(size, model_class=ARCHITECTURES[arch], **kwargs)


def _droppos_config_from_weights(state: dict[str, torch.Tensor], decoder_heads: int) -> dict[str, Any]:
    """DropPos constructor arguments read off a state dict (the authors' release carries no config)."""
    config = infer_vit_config({k: v for k, v in state.items() if not k.startswith(("decoder", "mask_pos"))})
    depth = len({k.split(".")[1] for k in state if k.startswith("decoder_blocks.")})
    return dict(config, arch="droppos", size="base", decoder_dim=state["decoder_embed.weight"].shape[0],
                decoder_depth=depth, decoder_heads=decoder_heads)


def load_droppos(path: str | os.PathLike, allow_pickle: bool = False, decoder_heads: int = 16) -> DropPos:
    """A DropPos model with its position decoder from one of our run checkpoints or the authors' release."""
    ckpt = read_checkpoint(path, allow_pickle=allow_pickle)
    if "decoder_pred.weight" not in ckpt.state or "mask_pos_token" not in ckpt.state:
        raise CheckpointError(f"{path}: no DropPos position decoder (keys decoder_pred.*, mask_pos_token); "
                              "position accuracy needs a DropPos pre-training checkpoint, not an exported encoder")
    model_cfg = ckpt.meta.get("model") or _droppos_config_from_weights(ckpt.state, decoder_heads)
    if model_cfg.get("arch") != "droppos":
        raise CheckpointError(f"{path}: a {model_cfg.get('arch')!r} pre-training checkpoint, not DropPos")
    model = build_pretrain_model(model_cfg)
    try:
        result = model.load_state_dict(ckpt.state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: does not fit the DropPos model it describes: {err}") from None
    problems = [f"missing {', '.join(result.missing_keys)}"] if result.missing_keys else []
    problems += [f"unexpected {', '.join(result.unexpected_keys)}"] if result.unexpected_keys else []
    if problems:
        raise CheckpointError(f"{path}: does not fit the DropPos model it describes: {'; '.join(problems)}")
    return model
