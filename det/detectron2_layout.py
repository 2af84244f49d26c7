"""Whole ViTDet Mask R-CNN state dicts in detectron2's key layout, both ways, so that detectron2's model-zoo detectors
evaluate here and ours load in detectron2 (its DetectionCheckpointer reads the written {'model': ...}).

Beyond the names, two conventions differ. torchvision puts the background class first and gives it box-regression
rows and a mask channel that no prediction reads (boxes and masks are taken for the predicted class only);
detectron2 puts the background score last and has neither: export drops them, import fills them with zeros. Our
ViTDet pos embed has no [CLS] slot; detectron2's (from [CLS] pre-training) has one it never reads.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch

from backbone.checkpoint import CheckpointError
from backbone.checkpoint_export import to_detectron2_vitdet
from backbone.checkpoint_load import pos_embed_layout

from .pyramid import STRIDES, resampler, resampler_layers

NET = "backbone.net."
# detectron2 keeps its pixel statistics and anchors out of its state dicts (non-persistent); older files may hold them
IGNORED_DETECTRON2_KEYS = ("pixel_mean", "pixel_std", "proposal_generator.anchor_generator.")
# Layers counted from the keys of one side of the layout: (ours, detectron2), each matching one key per layer.
LAYER_COUNTS = {
    "rpn_convs": (r"rpn\.head\.conv\.\d+\.0\.weight", r"proposal_generator\.rpn_head\.conv\.conv\d+\.weight"),
    "box_convs": (r"roi_heads\.box_head\.\d+\.0\.weight", r"roi_heads\.box_head\.conv\d+\.weight"),
    "box_fcs": (r"roi_heads\.box_head\.\d+\.weight", r"roi_heads\.box_head\.fc\d+\.weight"),
    "mask_convs": (r"roi_heads\.mask_head\.\d+\.0\.weight", r"roi_heads\.mask_head\.mask_fcn\d+\.weight"),
}


def _background_last(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[1:], t[:1]])


def _background_first(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[-1:], t[:-1]])


def _drop_rows(rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t[rows:]


def _zero_rows(rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: torch.cat([t.new_zeros(rows, *t.shape[1:]), t])


# Class-indexed layers, by our name: (export, import) of their weights' and biases' first dimension.
CLASS_LAYERS = {
    "roi_heads.box_predictor.cls_score": (_background_last, _background_first),
    "roi_heads.box_predictor.bbox_pred": (_drop_rows(4), _zero_rows(4)),
    "roi_heads.mask_predictor.mask_fcn_logits": (_drop_rows(1), _zero_rows(1)),
}


def _weight_bias(ours: str, theirs: str) -> list[tuple[str, str]]:
    return [(f"{ours}.{p}", f"{theirs}.{p}") for p in ("weight", "bias")]


def _conv_norm(ours: str, theirs: str) -> list[tuple[str, str]]:
    """A bias-free convolution and its LayerNorm: torchvision's (conv, norm) pair, detectron2's conv with `.norm`."""
    return [(f"{ours}.0.weight", f"{theirs}.weight"), *_weight_bias(f"{ours}.1", f"{theirs}.norm")]


def _pyramid_pairs(patch_size: int) -> list[tuple[str, str]]:
    """(our name, detectron2's) of the pyramid's parameters: per stage simfp_<log2 stride>, the resampling layers
    then the 1x1 and 3x3 convolutions numbered in one sequence, whatever the patch size."""
    pairs = []
    for level, (stride, layers) in enumerate(zip(STRIDES, resampler_layers(patch_size), strict=True)):
        stage = f"backbone.simfp_{stride.bit_length() - 1}"
        for name in resampler(4, patch_size / stride)[0].state_dict():  # "0.weight" in a sequence, else "weight"
            theirs = f"{stage}.{name}" if "." in name else f"{stage}.0.{name}"
            pairs.append((f"backbone.pyramid.resamplers.{level}.{name}", theirs))
        for conv in (0, 1):
            pairs += _conv_norm(f"backbone.pyramid.outputs.{level}.{conv}", f"{stage}.{layers + conv}")
    return pairs


def _head_pairs(counts: dict[str, int]) -> list[tuple[str, str]]:
    """(our name, detectron2's) of the RPN, box and mask heads' parameters, for the given numbers of layers."""
    pairs = [pair for k in range(counts["rpn_convs"])
             for pair in _weight_bias(f"rpn.head.conv.{k}.0", f"proposal_generator.rpn_head.conv.conv{k}")]
    pairs += _weight_bias("rpn.head.cls_logits", "proposal_generator.rpn_head.objectness_logits")
    pairs += _weight_bias("rpn.head.bbox_pred", "proposal_generator.rpn_head.anchor_deltas")
    for k in range(counts["box_convs"]):
        pairs += _conv_norm(f"roi_heads.box_head.{k}", f"roi_heads.box_head.conv{k + 1}")
    for j in range(counts["box_fcs"]):  # torchvision: the convs, Flatten, then Linear + ReLU per fc
        pairs += _weight_bias(f"roi_heads.box_head.{counts['box_convs'] + 1 + 2 * j}", f"roi_heads.box_head.fc{j + 1}")
    for k in range(counts["mask_convs"]):
        pairs += _conv_norm(f"roi_heads.mask_head.{k}", f"roi_heads.mask_head.mask_fcn{k + 1}")
    for ours, theirs in (("box_predictor.cls_score", "box_predictor.cls_score"),
                         ("box_predictor.bbox_pred", "box_predictor.bbox_pred"),
                         ("mask_predictor.conv5_mask", "mask_head.deconv"),
                         ("mask_predictor.mask_fcn_logits", "mask_head.predictor")):
        pairs += _weight_bias(f"roi_heads.{ours}", f"roi_heads.{theirs}")
    return pairs


def key_pairs(state: dict[str, torch.Tensor], side: int) -> list[tuple[str, str]]:
    """(our name, detectron2's) of every non-ViT parameter of the detector `state` (side 0: ours, 1: detectron2's),
    its numbers of head layers and its patch size read from its keys."""
    try:
        patch = state[NET + "patch_embed.proj.weight"].shape[-1]
    except KeyError:
        raise CheckpointError(f"no {NET}patch_embed.proj.weight: not a ViTDet detector") from None
    counts = {name: sum(bool(re.fullmatch(patterns[side], key)) for key in state)
              for name, patterns in LAYER_COUNTS.items()}
    return _pyramid_pairs(patch) + _head_pairs(counts)


def _check_keys(state: dict[str, torch.Tensor], names: set[str], layout: str) -> None:
    """Every key of `state` is a ViT key or one of `names`, and every one of `names` is there; else an error naming
    the keys."""
    unexpected = [k for k in state if k not in names and not k.startswith(NET)]
    missing = sorted(names - set(state))
    if unexpected or missing:
        raise CheckpointError(f"not a ViTDet Mask R-CNN in {layout} layout: unexpected keys "
                              f"{', '.join(unexpected[:6]) or '-'}{' ...' if len(unexpected) > 6 else ''}; missing "
                              f"keys {', '.join(missing[:6]) or '-'}{' ...' if len(missing) > 6 else ''}")


def _map_class_layers(state: dict[str, torch.Tensor], direction: int) -> dict[str, torch.Tensor]:
    """Class-indexed rows of a state in our names moved, dropped (export, direction 0) or zero-filled (import, 1)."""
    out = dict(state)
    for layer, functions in CLASS_LAYERS.items():
        for key in (f"{layer}.weight", f"{layer}.bias"):
            out[key] = functions[direction](state[key]).contiguous()
    return out


def to_detectron2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ViTDet Mask R-CNN's state dict in detectron2's names and conventions (what goes under 'model')."""
    names = dict(key_pairs(state, 0))
    _check_keys(state, set(names), "our")
    state = _map_class_layers(state, 0)
    net = to_detectron2_vitdet({k[len(NET):]: v for k, v in state.items() if k.startswith(NET)})["model"]
    return {**net, **{names[k]: v for k, v in state.items() if not k.startswith(NET)}}


def from_detectron2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detectron2 ViTDet Mask R-CNN's state dict in our names and conventions (its non-persistent buffers
    dropped, if a file holds them)."""
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_DETECTRON2_KEYS)}
    names = {theirs: ours for ours, theirs in key_pairs(state, 1)}
    _check_keys(state, set(names), "detectron2")
    out = {names.get(k, k): v for k, v in state.items()}
    pos_embed = out[NET + "pos_embed"]
    prefix, _ = pos_embed_layout(pos_embed.shape[1], has_cls_token=True)
    out[NET + "pos_embed"] = pos_embed[:, prefix:].contiguous()
    return _map_class_layers(out, 1)
