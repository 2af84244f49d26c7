"""Layer-wise learning-rate decay parameter groups, the one implementation used by cls, det and seg.

Layer ids follow BEiT / MAE / ViTDet: 0 for the embeddings ([CLS], tokens, pos embed, patch embed), i + 1
for block i, and num_layers + 1 for everything else (final norm, heads, necks, decoders), whose scale is 1.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

EMBEDDING_NAMES = ("cls_token", "pos_embed", "patch_embed")


def layer_id(name: str, num_layers: int, backbone_prefix: str = "") -> int:
    """Layer id of parameter `name`; names outside `backbone_prefix` belong to the top layer."""
    if not name.startswith(backbone_prefix):
        return num_layers + 1
    local = name[len(backbone_prefix):]
    if local.startswith(EMBEDDING_NAMES) or local.split(".")[0].endswith("token"):
        return 0
    if local.startswith("blocks."):
        return int(local.split(".")[1]) + 1
    return num_layers + 1


def skips_weight_decay(name: str, param: nn.Parameter, extra: Iterable[str] = (), decay_bias: bool = False) -> bool:
    """No decay for 1-D tensors (norms, biases, layer scales), pos embed, relative position bias tables (as
    BEiT), [CLS] and other learned tokens, and the names in `extra`. `decay_bias` decays biases and the other 1-D
    tensors like weights (detectron2's rule, which ViTDet trains with): `extra` then names the norms to spare."""
    leaf = name.split(".")[-1]
    return (
        (not decay_bias and (param.ndim <= 1 or leaf == "bias"))
        or leaf in ("pos_embed", "cls_token", "relative_position_bias_table")
        or leaf.endswith("token")
        or any(name == e or name.endswith("." + e) for e in extra)
    )


def param_groups_layer_decay(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    num_layers: int,
    backbone_prefix: str = "",
    no_weight_decay: Iterable[str] = (),
    decay_bias: bool = False,
) -> list[dict[str, Any]]:
    """Optimizer groups with lr = base lr * layer_decay ** (num_layers + 1 - layer_id).

    Each group also carries `lr_scale` and `layer_id` so schedulers and logs can see the decay; frozen
    parameters are left out.
    """
    no_weight_decay = tuple(no_weight_decay)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, num_layers, backbone_prefix)
        decay = not skips_weight_decay(name, param, no_weight_decay, decay_bias)
        if (lid, decay) not in groups:
            scale = layer_decay ** (num_layers + 1 - lid)
            groups[(lid, decay)] = dict(
                params=[], param_names=[], lr=lr * scale, lr_scale=scale, layer_id=lid,
                weight_decay=weight_decay if decay else 0.0,
            )
        groups[(lid, decay)]["params"].append(param)
        groups[(lid, decay)]["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def adamw_layer_decay(model: nn.Module, lr: float, weight_decay: float, layer_decay: float, num_layers: int,
                      betas: Sequence[float], backbone_prefix: str = "", no_weight_decay: Iterable[str] = (),
                      decay_bias: bool = False) -> torch.optim.AdamW:
    """AdamW over `param_groups_layer_decay`, fused on GPUs; the full-lr group comes first because mmengine logs
    the lr of the first group."""
    groups = param_groups_layer_decay(model, lr, weight_decay, layer_decay, num_layers, backbone_prefix,
                                      no_weight_decay, decay_bias)
    return torch.optim.AdamW(groups[::-1], lr=lr, betas=tuple(betas), fused=torch.cuda.is_available())
