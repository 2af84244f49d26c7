"""ViTDet's backbone for torchvision's detectors: a plain ViT with window attention, and the simple feature
pyramid that turns its single stride-16 map into strides 4, 8, 16, 32 and 64."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from backbone import VIT_SIZES, VisionTransformer, ViTDetViT, build_vit
from engine.errors import UserInputError

LEVEL_NAMES = ("p2", "p3", "p4", "p5")
STRIDES = (4, 8, 16, 32)


def global_blocks(depth: int) -> tuple[int, ...]:
    """ViTDet's global-attention blocks: the last of each quarter of the depth (2, 5, 8, 11 of 12 blocks;
    5, 11, 17, 23 of 24); windows elsewhere."""
    return tuple(sorted({max((quarter + 1) * depth // 4 - 1, 0) for quarter in range(4)}))


def _conv_norm(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         LayerNorm2d(out_channels, eps=1e-6))


def _resamplable(factor: float) -> bool:
    return factor in (4, 2, 1) or (factor < 1 and (1 / factor).is_integer())


def fits_pyramid(patch_size: int) -> bool:
    """Whether ViTDet's pyramid can resample a ViT map of `patch_size` to each of its strides (4, 8 and 16 can;
    DINOv2's 14 cannot)."""
    return all(_resamplable(patch_size / stride) for stride in STRIDES)


def resampler(dim: int, factor: float) -> tuple[nn.Module, int]:
    """ViTDet's resampling by `factor` (4: two deconvolutions, 2: one, 1: none, 1/k: k x k max pool) and the
    width it leaves."""
    if not _resamplable(factor):
        raise UserInputError(f"ViTDet's simple feature pyramid has no resampling by {factor} (strides 4-32 from "
                             f"patch {factor * 4:g}): patch sizes 4, 8 and 16 fit it; a patch-14 checkpoint (DINOv2) "
                             "fits once its patch embedding is resampled (model.resample_patch=True and a recipe "
                             "patch size of 16 or unset)")
    if factor == 4:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2, eps=1e-6),
                             nn.GELU(), nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)), dim // 4
    if factor == 2:
        return nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), dim // 2
    if factor == 1:
        return nn.Identity(), dim
    return nn.MaxPool2d(int(1 / factor)), dim


def resampler_layers(patch_size: int) -> list[int]:
    """Per level p2-p5, the number of layers in front of its two convolutions (GELU and max pool included, identity
    not), for a ViT of `patch_size`: detectron2 numbers the layers of each simfp_* stage in one sequence."""
    modules = [resampler(4, patch_size / stride)[0] for stride in STRIDES]
    return [len(m) if isinstance(m, nn.Sequential) else int(not isinstance(m, nn.Identity)) for m in modules]


class SimpleFeaturePyramid(nn.Module):
    """From the ViT's single map (`dim` channels, stride `patch_size`), maps of strides 4, 8, 16 and 32: for
    patch 16 x4 (two deconvolutions), x2 (one), x1 and x0.5 (max pool), each followed by a 1x1 and a 3x3
    convolution with LayerNorm to `out_channels`; p6 is p5 subsampled by 2."""

    def __init__(self, dim: int, out_channels: int = 256, patch_size: int = 16):
        super().__init__()
        self.out_channels = out_channels
        resamplers = [resampler(dim, patch_size / stride) for stride in STRIDES]
        self.resamplers = nn.ModuleList(module for module, _ in resamplers)
        widths = [width for _, width in resamplers]
        self.outputs = nn.ModuleList([nn.Sequential(_conv_norm(width, out_channels, 1),
                                                    _conv_norm(out_channels, out_channels, 3)) for width in widths])
        for conv in self.outputs.modules():
            if isinstance(conv, nn.Conv2d):  # detectron2's c2_xavier_fill
                nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        levels = OrderedDict((name, out(resample(x))) for name, resample, out
                             in zip(LEVEL_NAMES, self.resamplers, self.outputs, strict=True))
        levels["p6"] = F.max_pool2d(levels["p5"], kernel_size=1, stride=2)
        return levels


class ViTDetBackbone(nn.Module):
    """Our ViT's last block output as a stride-16 map, through the simple feature pyramid; `out_channels` is
    what torchvision's detectors read."""

    def __init__(self, net: VisionTransformer, out_channels: int = 256):
        super().__init__()
        self.net = net
        self.pyramid = SimpleFeaturePyramid(net.embed_dim, out_channels, net.config["patch_size"])
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.pyramid(self.net.forward_feature_maps(images, [-1])[0])


def build_vitdet_backbone(size: str, img_size: int = 1024, window_size: int = 14, drop_path_rate: float = 0.1,
                          out_channels: int = 256, **vit_kwargs) -> ViTDetBackbone:
    """ViTDet's ViT (no [CLS] token and no final norm, windows except in global_blocks(depth), decomposed relative
    position bias, LayerNorm eps 1e-6 unless given, trainable pos embed on the pre-training grid) with its pyramid;
    keyword arguments override the ViT's settings (e.g. depth for tests, pretrain_img_size)."""
    vit_kwargs.setdefault("global_blocks", global_blocks(vit_kwargs.get("depth", VIT_SIZES[size]["depth"])))
    vit_kwargs.setdefault("pos_embed_trainable", True)
    vit_kwargs.setdefault("norm_eps", 1e-6)  # a checkpoint's own (CLIP's 1e-5) where it fixes one
    net = build_vit(size, ViTDetViT, img_size=img_size, class_token=False, global_pool="", num_classes=0,
                    window_size=window_size, use_rel_pos=True, drop_path_rate=drop_path_rate, **vit_kwargs)
    return ViTDetBackbone(net, out_channels)
