"""Whole-detector checkpoints: a `det train` run checkpoint or a detectron2 ViTDet Mask R-CNN file (model-zoo .pkl or
.pth) read into our detector's state dict, loaded into a detector, or written in detectron2's layout."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from backbone.checkpoint import CheckpointError, load_state_exactly, read_checkpoint
from engine.safe_io import atomic_path

from .detectron2_layout import NET, from_detectron2, to_detectron2

# Layers whose rows are classes: when a detector starts from one trained on other classes they keep their init.
CLASS_SPECIFIC = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
                  "roi_heads.mask_predictor.mask_fcn_logits.")


def read_detector(path: str | os.PathLike, fmt: str = "auto",
                  allow_pickle: bool = False) -> dict[str, torch.Tensor] | None:
    """Our detector's state dict from a whole-detector file, ours (a det train checkpoint) or detectron2's; None for
    any other checkpoint (a pre-trained encoder)."""
    ckpt = read_checkpoint(path, fmt, prefix="", allow_pickle=allow_pickle)
    state = ckpt.state
    if ckpt.format == "detectron2" and any(k.startswith(("proposal_generator.", "roi_heads.")) for k in state):
        try:
            return from_detectron2(state)
        except CheckpointError as err:
            raise CheckpointError(f"{ckpt.path}: {err}") from None
    if any(k.startswith(NET) for k in state) and any(k.startswith("rpn.") for k in state):
        return state
    return None


def save_detectron2(state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write our detector's state dict as detectron2 loads a ViTDet Mask R-CNN: {'model': ...}, atomically."""
    model = to_detectron2(state)
    with atomic_path(path) as tmp:
        torch.save({"model": model}, tmp)
    return Path(path)


def load_detector(model: nn.Module, path: str | os.PathLike, allow_pickle: bool = False) -> None:
    """Load a whole detector file (ours or detectron2's) into `model`; every key must fit (det eval)."""
    state = read_detector(path, allow_pickle=allow_pickle)
    if state is None:
        raise CheckpointError(f"{path}: not a whole detector (no rpn / roi_heads keys, nor detectron2's "
                              "proposal_generator / roi_heads): give a checkpoint written by det train or a detectron2 "
                              "ViTDet Mask R-CNN file (model_final_*.pkl / .pth)")
    load_detector_state(model, state, path)


def load_detector_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike,
                        classes_may_differ: bool = False) -> list[str]:
    """Load our detector's state dict read from `source` into `model`; every key must fit. With
    `classes_may_differ`, a detector of another class count loads all but its class-specific predictors, which keep
    the model's values; their keys are returned."""
    target = model.state_dict()
    kept = []
    classes = CLASS_SPECIFIC[0] + "weight"
    if classes_may_differ and classes in state and state[classes].shape != target[classes].shape:
        kept = [k for k in target if k.startswith(CLASS_SPECIFIC)]
        state = {**{k: target[k] for k in kept}, **{k: v for k, v in state.items() if not k.startswith(CLASS_SPECIFIC)}}
    load_state_exactly(model, state, source)
    return kept
