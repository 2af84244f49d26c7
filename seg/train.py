"""`droppos-bench seg train`: UperNet fine-tuning of a pre-trained ViT on an ADE20K-layout dataset with mmseg."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.runner import set_random_seed

from backbone import VIT_SIZES, adamw_layer_decay, load_pretrained
from backbone.checkpoint import read_checkpoint
from backbone.checkpoint_load import checkpoint_architecture
from engine import build_train_runner
from engine.hooks import ModelMetaHook
from engine.runner import TrainSpec, Validation, train_from_config

from .data import build_seg_dataset
from .metric import SegMetric
from .model import SegEncoderDecoder, build_segmentor_for_device, upernet_config

CONFIGS_DIR = Path(__file__).parent / "configs"
BACKBONE_PREFIX = "backbone.net."
HEAD_OPTIONS = ("head_channels", "aux_channels", "aux_weight", "pool_scales", "slide_stride", "norm")
# keys of BEiT's relative position tables and layer scales, which pre-training does not have
EXTENSION_KEYS = ("relative_position_bias_table", "gamma")
log = logging.getLogger("droppos_bench")


def build_segmentor(cfg: Config, num_classes: int, pretrained: bool = True) -> SegEncoderDecoder:
    """UperNet of `cfg.model` on our ViT, its backbone loaded from the pre-trained encoder `cfg.ckpt` if set and
    `pretrained` (pos embed resampled to the crop grid; only relative position tables and layer scales may be
    missing; registers, pre-norm, activation and patch size as the checkpoint has them, registers dropped from the
    feature maps); `pretrained=False` when `cfg.ckpt` holds a whole trained segmentor (seg eval)."""
    ckpt = read_checkpoint(cfg.ckpt, cfg.ckpt_format, allow_pickle=cfg.allow_pickle) if cfg.ckpt else None
    options = checkpoint_architecture(dict(cfg.model), ckpt)
    heads = {key: options.pop(key) for key in HEAD_OPTIONS}
    width = options.get("embed_dim", VIT_SIZES[options["size"]]["embed_dim"])
    set_random_seed(cfg.seed)
    model = build_segmentor_for_device(upernet_config(num_classes, cfg.data.crop_size, options, width, **heads,
                                                      bf16=cfg.precision == "bf16"))
    if ckpt is not None and pretrained:
        log.info("%s", load_pretrained(model.backbone.net, ckpt, allowed_missing=EXTENSION_KEYS))
    return model


def build_seg_runner(cfg: Config):
    """Data, UperNet, layer-decayed AdamW, warmup + poly schedule and mIoU evaluation of a config, as a Runner."""
    train, val = build_seg_dataset(cfg.data, "train"), build_seg_dataset(cfg.data, "val")
    classes = train.metainfo["classes"]
    model = build_segmentor(cfg, len(classes))
    if cfg.compile:
        model.backbone.compile()
    net = model.backbone.net
    optimizer = adamw_layer_decay(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.layer_decay, net.num_layers,
                                  cfg.optim.betas, backbone_prefix=BACKBONE_PREFIX)
    runner = segmentation_runner(cfg, model, train, val, optimizer)
    runner.logger.info(f"UperNet, ViT-{cfg.model.size} at {cfg.data.crop_size} px, on {len(train)} images / "
                       f"{len(classes)} classes; effective batch {cfg.effective_batch}, lr {cfg.optim.lr:.3g}, "
                       f"layer decay {cfg.optim.layer_decay}, {cfg.schedule.iterations} steps")
    return runner


def segmentation_runner(cfg: Config, model: SegEncoderDecoder, train, val, optimizer: torch.optim.Optimizer):
    """The Runner of both seg commands: mIoU on val one image at a time (sliding windows), the backbone's config
    recorded with every checkpoint."""
    hooks = [ModelMetaHook(BACKBONE_PREFIX, dict(model.backbone.net.config))]
    return build_train_runner(TrainSpec.from_config(cfg, hooks), model, train, optimizer,
                              experiment_name=cfg.config_name, cfg=cfg,
                              validation=Validation(val, SegMetric(), "mIoU", batch_size=1),
                              collate_fn="pseudo_collate")


def run_seg_train(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Train per `config` with `key=value` overrides; returns the path of metrics.json."""
    return train_from_config(build_seg_runner, CONFIGS_DIR, config, overrides)
