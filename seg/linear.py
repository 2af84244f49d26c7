"""`droppos-bench seg linear`: DINOv2's linear semantic segmentation (Oquab et al. 2023, Sec. 7.4, Tab. 10).

The ViT is frozen (eval mode, no gradient): its last block's patch tokens after the final norm ([CLS] and registers
dropped) form a map at stride = patch size, on which a BatchNorm and a 1x1 convolution predict the classes; the
logits are upsampled bilinearly to the labels for the loss and to the image for evaluation. Only the head trains.
Data, metric, checkpoint reading and the Runner are seg train's.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.config import Config, ConfigDict
from mmengine.model import BaseModule
from mmengine.runner import set_random_seed
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

from backbone import VIT_SIZES, build_vit, load_pretrained
from backbone.checkpoint import Checkpoint, load_state_exactly, read_checkpoint, strip_prefix
from backbone.checkpoint_load import checkpoint_architecture
from engine.config import load_config
from engine.errors import UserInputError
from engine.evaluation import eval_config
from engine.runner import default_eval_dir, train_from_config
from engine.safe_io import write_json_atomic

from .data import build_seg_dataset
from .evaluate import evaluate_on_val
from .model import IGNORE_INDEX, MEAN_RGB, STD_RGB, SegEncoderDecoder, build_segmentor_for_device
from .train import CONFIGS_DIR, segmentation_runner

# model-config keys that shape the probe rather than the ViT
PROBE_OPTIONS = ("layers", "final_norm", "norm", "slide_stride")
FINAL_NORMS = (True, False, "auto")
log = logging.getLogger("droppos_bench")


def center_pad(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) images equally on both sides up to multiples of `patch` (the right / bottom side gets
    the odd pixel), as DINOv2's CenterPadding does before its backbone: a 512 px crop is 518 px for patch 14."""
    pad_h, pad_w = -images.shape[-2] % patch, -images.shape[-1] % patch
    if not (pad_h or pad_w):
        return images
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


@MODELS.register_module()
class FrozenViTFeatures(BaseModule):
    """Our ViT, frozen and always in eval mode, giving the patch tokens of blocks `layers` (negative counts from the
    end) after its final norm (`final_norm`; DINOv2's get_intermediate_layers(norm=True)) as (B, D, H/p, W/p) maps;
    images are center-padded to multiples of the patch size. Runs without autograd: nothing flows back into it."""

    def __init__(self, size: str = "base", layers: Sequence[int] = (-1,), final_norm: bool = True,
                 **vit_options: Any):
        super().__init__()
        self.net = build_vit(size, global_pool="token" if final_norm else "", num_classes=0, **vit_options)
        depth = self.net.num_layers
        if not layers or any(not -depth <= index < depth for index in layers):
            raise UserInputError(f"model.layers={list(layers)}: expected block indices of the {depth}-block ViT "
                                 f"(-{depth}..{depth - 1}; -1 is the last block)")
        self.blocks = [index % depth for index in layers]
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> FrozenViTFeatures:
        """Keep the ViT in eval mode (no dropout, drop path or other training behaviour) whatever the model's mode."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            padded = center_pad(images, self.net.patch_embed.patch_size[0])
            return tuple(self.net.forward_feature_maps(padded, self.blocks, normed=True))


@MODELS.register_module()
class BNLinearHead(BaseDecodeHead):
    """DINOv2's BNHead: the input maps concatenated along channels (all at the backbone's one stride), a BatchNorm
    (`norm_cfg`) and the 1x1 classifier `conv_seg`, with mmseg's decode-head losses and inference around it."""

    def __init__(self, **kwargs: Any):
        super().__init__(input_transform="resize_concat", **kwargs)
        if self.norm_cfg is None:
            raise UserInputError("the linear head needs a norm (model.norm: 'SyncBN' or 'BN')")
        self.bn = build_norm_layer(self.norm_cfg, self.in_channels)[1]

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.bn(torch.cat([inputs[index] for index in self.in_index], dim=1)))


def padded_size(crop_size: int, patch: int) -> int:
    """The crop size rounded up to a multiple of the patch size: the input the ViT sees after `center_pad`."""
    return math.ceil(crop_size / patch) * patch


def linear_config(num_classes: int, crop_size: int, backbone: dict[str, Any], width: int, layers: Sequence[int],
                  final_norm: bool, slide_stride: int, norm: str = "SyncBN", bf16: bool = False) -> ConfigDict:
    """mmseg model config of the linear probe: FrozenViTFeatures (`backbone`: build_vit's options) and BNLinearHead
    over `layers`, cross-entropy ignoring label 255, sliding-window inference in `crop_size` windows."""
    patch = backbone.get("patch_size", 16)
    return ConfigDict(
        type="SegEncoderDecoder",
        bf16=bf16,
        data_preprocessor=dict(type="NonBlockingSegDataPreProcessor", mean=MEAN_RGB, std=STD_RGB, bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=IGNORE_INDEX, size=(crop_size, crop_size)),
        backbone=dict(type="FrozenViTFeatures", img_size=padded_size(crop_size, patch), layers=tuple(layers),
                      final_norm=final_norm, **backbone),
        decode_head=dict(type="BNLinearHead", in_channels=[width] * len(layers), in_index=list(range(len(layers))),
                         channels=width * len(layers), num_classes=num_classes, dropout_ratio=0.0,
                         norm_cfg=dict(type=norm, requires_grad=True), align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(),
        test_cfg=dict(mode="slide", crop_size=(crop_size, crop_size), stride=(slide_stride, slide_stride)),
    )


def resolve_final_norm(value: bool | str, ckpt: Checkpoint | None) -> bool:
    """`model.final_norm`; "auto": the checkpoint's final norm if it has one (a random init always has one)."""
    if value not in FINAL_NORMS:
        raise UserInputError(f"model.final_norm={value!r}; expected one of {FINAL_NORMS}")
    if value == "auto":
        return ckpt is None or "norm.weight" in ckpt.state
    return value


def build_linear_segmentor(cfg: Config, num_classes: int) -> SegEncoderDecoder:
    """The frozen ViT of `cfg.model` loaded from `cfg.ckpt` (every weight of it must come from the checkpoint;
    registers, pre-norm, activation and patch size as the checkpoint has them), with the BN + linear head."""
    ckpt = read_checkpoint(cfg.ckpt, cfg.ckpt_format, allow_pickle=cfg.allow_pickle) if cfg.ckpt else None
    options = checkpoint_architecture(dict(cfg.model), ckpt)
    probe = {key: options.pop(key) for key in PROBE_OPTIONS}
    probe["final_norm"] = resolve_final_norm(probe["final_norm"], ckpt)
    width = options.get("embed_dim", VIT_SIZES[options["size"]]["embed_dim"])
    set_random_seed(cfg.seed)
    model = build_segmentor_for_device(linear_config(num_classes, cfg.data.crop_size, options, width, **probe,
                                                     bf16=cfg.precision == "bf16"))
    if ckpt is not None:
        log.info("%s", load_pretrained(model.backbone.net, ckpt, allowed_missing=()))
    else:
        log.warning("no ckpt: the frozen ViT keeps its random initialisation")
    return model


def build_linear_runner(cfg: Config):
    """Data, frozen ViT + BN/linear head, AdamW over the head only, warmup + poly schedule and mIoU evaluation of a
    config, as a Runner."""
    train, val = build_seg_dataset(cfg.data, "train"), build_seg_dataset(cfg.data, "val")
    classes = train.metainfo["classes"]
    model = build_linear_segmentor(cfg, len(classes))
    if cfg.compile:
        model.backbone.compile()
    optimizer = torch.optim.AdamW(model.decode_head.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    net = model.backbone.net
    runner = segmentation_runner(cfg, model, train, val, optimizer)
    runner.logger.info(f"linear segmentation on a frozen ViT-{cfg.model.size} (blocks {list(cfg.model.layers)}, "
                       f"patch {net.patch_embed.patch_size[0]}) at {cfg.data.crop_size} px, on {len(train)} images / "
                       f"{len(classes)} classes; effective batch {cfg.effective_batch}, lr {cfg.optim.lr:.3g}, "
                       f"{cfg.schedule.iterations} steps")
    return runner


def load_released_head(head: BNLinearHead, path: str | Path, allow_pickle: bool = False) -> None:
    """A released BNHead's weights into `head`: an mmseg checkpoint (its state_dict's decode_head.bn.* and
    decode_head.conv_seg.*, as DINOv2's ADE20K linear heads) or the head's own state dict. Every key must fit, but
    for the BatchNorm's batch count (unused in eval mode: a head may lack it)."""
    state = read_checkpoint(path, prefix="", allow_pickle=allow_pickle).state
    state = strip_prefix(state, "decode_head.") or state
    counts = {key: value for key, value in head.state_dict().items() if key.endswith("num_batches_tracked")}
    load_state_exactly(head, {**counts, **state}, path,
                       "expected a BNHead over the patch features of model.layers, one output per class")


def score_released_head(cfg: Config) -> Path:
    """mIoU, mAcc, aAcc of the released head `cfg.head` on the frozen ViT of `cfg.ckpt` over the val split, as
    work_dir/metrics.json's "last"; nothing is trained."""
    val = build_seg_dataset(cfg.data, "val")
    model = build_linear_segmentor(cfg, len(val.metainfo["classes"]))
    load_released_head(model.decode_head, cfg.head, cfg.allow_pickle)
    metrics = evaluate_on_val(model, val, cfg.data.num_workers)
    out = default_eval_dir(cfg) / "metrics.json"
    write_json_atomic(out, dict(checkpoint=str(cfg.ckpt), head=str(cfg.head), data=str(cfg.data.root), split="val",
                                images=len(val), last=metrics))
    log.info("released head %s: mIoU %.2f, aAcc %.2f on %d images -> %s", cfg.head, metrics["mIoU"], metrics["aAcc"],
             len(val), out)
    return out


def run_seg_linear(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Train the linear head per `config` with `key=value` overrides, or with `head` (a released head's file) score
    that head on val; returns the path of metrics.json."""
    if not load_config(config, overrides, configs_dir=CONFIGS_DIR).head:
        return train_from_config(build_linear_runner, CONFIGS_DIR, config, overrides)
    return score_released_head(eval_config("seg linear", config, overrides, CONFIGS_DIR, checkpoint_kind=None))
