"""Our ViT in mmseg's model registry, and mmseg's EncoderDecoder without host syncs in training and with bf16 inference.

Everything else of UperNet (Feature2Pyramid neck, UPerHead, FCNHead, losses, sliding-window inference) is
mmseg's own, built from the config.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.model import BaseModule, revert_sync_batchnorm
from mmengine.registry import DefaultScope
from mmengine.structures import BaseDataElement
from mmseg.models import SegDataPreProcessor
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from torch import nn

from backbone import build_vit
from engine.model import RunningMeans


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


def head_losses(head: BaseModule, features: tuple[torch.Tensor, ...], data_samples: list) -> dict[str, torch.Tensor]:
    """An mmseg decode head's loss terms as its loss_by_feat computes them (each loss_decode module on the logits
    resized to the labels, terms of one name summed), with acc_seg from `pixel_accuracy`: loss_by_feat calls mmseg's
    accuracy(), whose boolean-mask indexing waits for the GPU on every step."""
    labels = torch.stack([sample.gt_sem_seg.data for sample in data_samples])  # (B, 1, H, W)
    logits = F.interpolate(head(features), size=labels.shape[2:], mode="bilinear", align_corners=head.align_corners)
    weight = None if head.sampler is None else head.sampler.sample(logits, labels)
    labels = labels.squeeze(1)
    criteria = head.loss_decode if isinstance(head.loss_decode, nn.ModuleList) else [head.loss_decode]
    losses = {}
    for criterion in criteria:
        term = criterion(logits, labels, weight=weight, ignore_index=head.ignore_index)
        name = criterion.loss_name
        losses[name] = losses[name] + term if name in losses else term
    losses["acc_seg"] = pixel_accuracy(logits, labels, head.ignore_index)
    return losses


@MODELS.register_module()
class NonBlockingSegDataPreProcessor(SegDataPreProcessor):
    """mmseg's SegDataPreProcessor that copies batches to the device without blocking, which mmengine's base class
    offers (non_blocking=True) but mmseg's constructor does not pass on; a blocking copy waits on every batch. It
    also swaps BGR and RGB with `flip` rather than mmseg's index list [2, 1, 0], which is copied to the GPU for
    every image and waits for it (CUDA's sync debug mode found 2 such syncs per step at batch 2 on an H200)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.swap_channels, self.channel_conversion = self.channel_conversion, False  # done in forward instead

    def forward(self, data: dict, training: bool = False) -> dict[str, Any]:
        data = self.cast_data(data)
        if self.swap_channels and data["inputs"][0].size(0) == 3:
            data["inputs"] = [image.flip(0) for image in data["inputs"]]
        return super().forward(data, training)

    def cast_data(self, data: Any) -> Any:
        if isinstance(data, (torch.Tensor, BaseDataElement)):
            return data.to(self.device, non_blocking=True)
        return super().cast_data(data)  # mmengine recurses through containers with this method


@MODELS.register_module()
class SegEncoderDecoder(EncoderDecoder):
    """mmseg's EncoderDecoder without the host syncs of its training step: batches are copied to the device without
    blocking (NonBlockingSegDataPreProcessor), losses and accuracies are summed there (read by DeviceLogHook once per
    log interval), and the heads' losses come from `head_losses`. Inference runs under bf16 autocast too when `bf16`
    (training gets autocast from the optimizer wrapper); logits come back in float32 for the sliding-window sums and
    the resize."""

    def __init__(self, bf16: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.bf16 = bf16
        self.running_means = RunningMeans()

    def loss(self, inputs: torch.Tensor, data_samples: list) -> dict[str, torch.Tensor]:
        """mmseg's EncoderDecoder.loss, keys and order of the heads included, with each head's terms from
        `head_losses`."""
        features = self.extract_feat(inputs)
        return {f"{prefix}.{name}": value for prefix, head in self.training_heads()
                for name, value in head_losses(head, features, data_samples).items()}

    def training_heads(self) -> list[tuple[str, BaseModule]]:
        """(key prefix, head) as mmseg names them: the decode head, then the auxiliary head or heads."""
        heads = [("decode", self.decode_head)]
        if not self.with_auxiliary_head:
            return heads
        if isinstance(self.auxiliary_head, nn.ModuleList):
            return heads + [(f"aux_{index}", head) for index, head in enumerate(self.auxiliary_head)]
        return heads + [("aux", self.auxiliary_head)]

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
        data_preprocessor=dict(type="NonBlockingSegDataPreProcessor", mean=MEAN_RGB, std=STD_RGB, bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=IGNORE_INDEX, size=(crop_size, crop_size)),
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


def build_segmentor_for_device(config: dict) -> torch.nn.Module:
    """`build_mmseg_model`, its SyncBN turned into BatchNorm where no GPU runs it (SyncBN runs on GPUs only, also
    under DDP)."""
    model = build_mmseg_model(config)
    return model if torch.cuda.is_available() else revert_sync_batchnorm(model)
