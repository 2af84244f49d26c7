"""Our ViT in mmseg's model registry, and mmseg's EncoderDecoder with bf16 inference.

Everything else of UperNet (Feature2Pyramid neck, UPerHead, FCNHead, losses, sliding-window inference) is
mmseg's own, built from the config.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from unittest import mock

import torch
from mmengine.config import ConfigDict
from mmengine.model import BaseModule
from mmengine.registry import DefaultScope
from mmseg.models.decode_heads import decode_head
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from backbone import build_vit
from engine.hooks import RunningMeans


@MODELS.register_module()
class ViTBackbone(BaseModule):
    """Outputs of blocks `out_indices` of our ViT as (B, D, H/16, W/16) maps, before the final norm (as mmseg's
    MAE backbone with final_norm=False); `size` and `vit_options` are `build_vit`'s arguments."""

    def __init__(self, size: str = "base", out_indices: Sequence[int] = (3, 5, 7, 11), **vit_options: Any):
        super().__init__()
        self.net = build_vit(size, global_pool="", num_classes=0, **vit_options)
        self.out_indices = tuple(out_indices)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net.forward_feature_maps(images, self.out_indices))


def pixel_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Percentage of non-ignored pixels whose top class is the label, as a 1-element tensor: mmseg's accuracy()
    (top-1, no threshold) without its boolean-mask indexing, which waits for the GPU to size the result."""
    valid = labels != ignore_index
    correct = (logits.argmax(1) == labels) & valid
    return (100 * correct.sum() / valid.sum().clamp(min=1)).reshape(1)


@MODELS.register_module()
class SegEncoderDecoder(EncoderDecoder):
    """mmseg's EncoderDecoder without the host syncs of its training step: batches are copied to the device without
    blocking, losses and accuracies are summed there (read by DeviceLogHook once per log interval), and the heads'
    logged acc_seg is `pixel_accuracy`. Inference runs under bf16 autocast too when `bf16` (training gets autocast
    from the optimizer wrapper); logits come back in float32 for the sliding-window sums and the resize."""

    def __init__(self, bf16: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.bf16 = bf16
        self.running_means = RunningMeans()
        self.data_preprocessor._non_blocking = True  # mmseg's SegDataPreProcessor takes no non_blocking argument

    def loss(self, inputs: torch.Tensor, data_samples: list) -> dict[str, torch.Tensor]:
        """mmseg's losses of both heads; their loss_by_feat calls decode_head's module-level accuracy(), which is
        swapped for the mask-free `pixel_accuracy` during this call only."""
        with mock.patch.object(decode_head, "accuracy", pixel_accuracy):
            return super().loss(inputs, data_samples)

    def parse_losses(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The sum of mmseg's loss terms (keys holding 'loss') is optimised; every term is logged (as a scalar: the
        accuracies come as 1-element tensors)."""
        loss = sum(value for key, value in losses.items() if "loss" in key)
        self.running_means.add({"loss": loss, **{key: value.mean() for key, value in losses.items()}})
        return loss, {}

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas: list[dict]) -> torch.Tensor:
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = super().encode_decode(inputs, batch_img_metas)
        return logits.float()


# mmseg's ADE20K normalisation: ImageNet mean / std of RGB in 0-255 (images are read as BGR and flipped)
MEAN_RGB, STD_RGB = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
IGNORE_INDEX = 255


def upernet_config(
    num_classes: int,
    crop_size: int,
    backbone: dict[str, Any],
    width: int,
    head_channels: int = 768,
    aux_channels: int = 256,
    aux_weight: float = 0.4,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    dropout: float = 0.1,
    slide_stride: int = 256,
    norm: str = "SyncBN",
    bf16: bool = False,
) -> ConfigDict:
    """mmseg model config of UperNet on `backbone` (a ViTBackbone config of a ViT `width` channels wide): the
    4-scale neck (deconv x2, deconv, identity, max-pool), UPerHead over all four scales and an auxiliary FCN head
    on the third, both with cross-entropy that ignores label 255; sliding-window inference with `crop_size`
    windows. mmengine turns SyncBN into BatchNorm in a single process."""
    norm_cfg = dict(type=norm, requires_grad=True)
    head = dict(num_classes=num_classes, dropout_ratio=dropout, norm_cfg=norm_cfg, align_corners=False)
    return ConfigDict(  # mmseg reads test_cfg by attribute
        type="SegEncoderDecoder",
        bf16=bf16,
        data_preprocessor=dict(type="SegDataPreProcessor", mean=MEAN_RGB, std=STD_RGB, bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=IGNORE_INDEX, size=(crop_size, crop_size)),
        backbone=dict(type="ViTBackbone", img_size=crop_size, **backbone),
        neck=dict(type="Feature2Pyramid", embed_dim=width, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
        decode_head=dict(type="UPerHead", in_channels=[width] * 4, in_index=[0, 1, 2, 3], pool_scales=pool_scales,
                         channels=head_channels, **head,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        auxiliary_head=dict(type="FCNHead", in_channels=width, in_index=2, channels=aux_channels, num_convs=1,
                            concat_input=False, **head,
                            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=aux_weight)),
        train_cfg=dict(),
        test_cfg=dict(mode="slide", crop_size=(crop_size, crop_size), stride=(slide_stride, slide_stride)),
    )


def build_mmseg_model(config: dict) -> torch.nn.Module:
    """Build an mmseg model config in mmseg's registry scope, so nested parts (the data preprocessor) take mmseg's
    types whatever scope a Runner has set as default."""
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(config)
