"""`droppos-bench det train`: ViTDet Mask R-CNN fine-tuning of a pre-trained ViT on a COCO-layout dataset."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.runner import set_random_seed
from timm.layers import resample_patch_embed
from torch import nn

from backbone import Checkpoint, adamw_layer_decay, load_pretrained, read_checkpoint
from backbone.checkpoint import strip_prefix
from backbone.checkpoint_load import checkpoint_architecture
from engine import build_train_runner
from engine.errors import UserInputError
from engine.hooks import ModelMetaHook
from engine.runner import TrainSpec, Validation, default_work_dir, train_from_config

from .checkpoint import load_detector_state, read_detector
from .coco_metric import CocoMetric
from .data import CocoDetection, coco_paths, collate, eval_transform, lsj_transform
from .model import ViTDetMaskRCNN, build_mask_rcnn
from .pyramid import fits_pyramid

CONFIGS_DIR = Path(__file__).parent / "configs"
BACKBONE_PREFIX = "backbone.net."
DEFAULT_PATCH = 16  # a resampled patch embedding's size where the recipe sets none (ViTDet's)
RESULTS_FILE = "detections.json"  # COCO results json of the last evaluation, in the work dir
log = logging.getLogger("droppos_bench")


def build_detector(cfg: Config, num_classes: int, pretrained: bool = True) -> ViTDetMaskRCNN:
    """The Mask R-CNN of `cfg.model`, initialised from `cfg.ckpt` if set and `pretrained`: a whole detector (ours or
    detectron2's) loads entirely, or all but its class-specific predictors when it was trained on another number of
    classes; a pre-trained encoder loads into the ViT (pos embed resampled to the input grid; only ViTDet's relative
    position tables may be missing). `pretrained=False` leaves loading to the caller (det eval)."""
    fmt = cfg.ckpt_format
    state = read_detector(cfg.ckpt, fmt, allow_pickle=cfg.allow_pickle) if cfg.ckpt else None
    encoder = read_checkpoint(cfg.ckpt, fmt, allow_pickle=cfg.allow_pickle) if cfg.ckpt and state is None else None
    options = dict(cfg.model)
    if options.pop("resample_patch", True) and encoder is not None:
        encoder = fit_patch_to_pyramid(encoder, options.get("patch_size", DEFAULT_PATCH))
    backbone = encoder or (Checkpoint(cfg.ckpt, "detector", strip_prefix(state, BACKBONE_PREFIX)) if state else None)
    kwargs = checkpoint_architecture(options, backbone)
    kwargs.pop("reg_tokens", None)  # ViTDet has no prefix tokens: registers go as [CLS] does
    set_random_seed(cfg.seed)
    model = build_mask_rcnn(num_classes, kwargs.pop("size"), precision=cfg.precision, **kwargs)
    if not (cfg.ckpt and pretrained):
        return model
    if state is None:
        report = load_pretrained(model.backbone.net, vitdet_encoder(encoder),
                                 allowed_missing=("rel_pos_h", "rel_pos_w"))
        log.info("%s", report)
        return model
    kept = load_detector_state(model, state, cfg.ckpt, classes_may_differ=True)
    log.info("loaded the whole detector %s", cfg.ckpt)
    if kept:
        classes = len(state["roi_heads.box_predictor.cls_score.bias"]) - 1
        log.info("%s has %d classes, the dataset %d: its class-specific predictors (%s) are left out and keep their "
                 "fresh initialisation", cfg.ckpt, classes, num_classes, ", ".join(kept))
    return model


def fit_patch_to_pyramid(encoder: Checkpoint, patch: int) -> Checkpoint:
    """The encoder with its patch embedding resampled to `patch` when ViTDet's pyramid cannot take its own patch size
    (DINOv2's 14), by FlexiViT's pseudo-inverse resize (timm's resample_patch_embed): a token then sees `patch`
    pixels as the pre-trained one saw its own, i.e. the image at patch / own scale. Its positions are resampled to
    the new grid when it loads, as always."""
    weight = encoder.state.get("patch_embed.proj.weight")
    if weight is None or fits_pyramid(weight.shape[-1]):
        return encoder
    log.info("%s: patch size %d does not fit ViTDet's pyramid (strides 4-32): its patch embedding is resampled to "
             "%d (FlexiViT's resize)", encoder.path, weight.shape[-1], patch)
    resampled = resample_patch_embed(weight.float(), [patch, patch]).to(weight.dtype)
    return replace(encoder, state={**encoder.state, "patch_embed.proj.weight": resampled})


def vitdet_encoder(encoder: Checkpoint) -> Checkpoint:
    """The encoder without BEiT-style relative position tables (BEiT, data2vec) and register tokens (DINOv2): ViTDet's
    windows and global blocks use relative positions of their own (rel_pos_h / rel_pos_w, started at zero), as ViTDet
    fine-tunes BEiT, and its tokens are the patches alone, as it drops [CLS]."""
    tables = [key for key in encoder.state if key.endswith("attn.relative_position_bias_table")]
    registers = [key for key in encoder.state if key == "reg_token"]
    if tables:
        log.info("%s: its %d relative position tables are left out: ViTDet adds its own", encoder.path, len(tables))
    if registers:
        log.info("%s: its %d register tokens are left out: ViTDet has no prefix tokens", encoder.path,
                 encoder.state["reg_token"].shape[1])
    if not tables + registers:
        return encoder
    return replace(encoder, state={k: v for k, v in encoder.state.items() if k not in tables + registers})


def vitdet_adamw(model: ViTDetMaskRCNN, lr: float, weight_decay: float, layer_decay: float,
                 betas: Sequence[float]) -> torch.optim.AdamW:
    """ViTDet's AdamW: layer-wise lr decay over the ViT, and weight decay on every parameter but pos_embed and the
    ViT's LayerNorms. detectron2 spares only torch's normalisation modules; ViTDet's pyramid and heads use
    detectron2's own channels-first LayerNorm, so their norms are decayed, as are biases and rel_pos_h / _w."""
    net = model.backbone.net
    norms = [f"{BACKBONE_PREFIX}{name}.{leaf}" for name, module in net.named_modules()
             if isinstance(module, nn.LayerNorm) for leaf, _ in module.named_parameters(recurse=False)]
    return adamw_layer_decay(model, lr, weight_decay, layer_decay, net.num_layers, betas,
                             backbone_prefix=BACKBONE_PREFIX, no_weight_decay=norms, decay_bias=True)


def coco_dataset(cfg: Config, split: str) -> CocoDetection:
    """The train split with large scale jitter, or the val split resized for testing (`data.skip_invalid`:
    unreadable images are replaced in training, dropped from the evaluation; `data.check_files`: every image file
    is looked for at start)."""
    annotations, images = coco_paths(cfg.data.root, split)
    size = cfg.model.img_size
    transform = lsj_transform(size, tuple(cfg.data.scale_range)) if split == "train" else eval_transform(size)
    return CocoDetection(annotations, images, transform, train=split == "train", skip_invalid=cfg.data.skip_invalid,
                         check_files=cfg.data.check_files)


def build_det_runner(cfg: Config):
    """Data, detector, layer-decayed AdamW, warmup + step schedule and COCO evaluation of a config, as a Runner."""
    train, val = coco_dataset(cfg, "train"), coco_dataset(cfg, "val")
    if train.category_ids != val.category_ids:
        raise UserInputError(f"{train.annotation_file} and {val.annotation_file} list different categories")
    model = build_detector(cfg, len(train.category_ids))
    if cfg.compile:
        model.backbone.compile()
    net = model.backbone.net
    optimizer = vitdet_adamw(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.layer_decay, cfg.optim.betas)
    work_dir = Path(default_work_dir(cfg))
    metric = CocoMetric(val.annotation_file, val.category_ids, results_file=work_dir / RESULTS_FILE)
    hooks = [ModelMetaHook(BACKBONE_PREFIX, dict(net.config))]
    runner = build_train_runner(TrainSpec.from_config(cfg, hooks), model, train, optimizer,
                                experiment_name=cfg.config_name, cfg=cfg,
                                validation=Validation(val, metric, "APb"),
                                collate_fn=collate)
    runner.logger.info(f"ViTDet Mask R-CNN, ViT-{cfg.model.size} at {cfg.model.img_size} px, on {len(train)} images / "
                       f"{len(train.category_ids)} classes; effective batch {cfg.effective_batch}, lr "
                       f"{cfg.optim.lr:.3g}, layer decay {cfg.optim.layer_decay}, {cfg.schedule.iterations} steps")
    return runner


def run_det_train(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Train per `config` with `key=value` overrides; returns the path of metrics.json."""
    return train_from_config(build_det_runner, CONFIGS_DIR, config, overrides)
