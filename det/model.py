"""ViTDet's Mask R-CNN composed from torchvision's detection parts, as a model for mmengine's Runner.

torchvision provides the RPN, proposal matching and sampling, box coding and NMS; ViTDet's choices are set on
top: the simple feature pyramid over a plain ViT (det.pyramid), unrounded anchors at fixed strides
(det.anchors), a 2-conv RPN head, a 4conv+1fc box head and a 4-conv mask head with LayerNorm, aligned RoIAlign
with detectron2's level assignment (det.pooler), L1 box losses (torchvision's are smooth L1 with beta 1/9), mask
targets cropped with aligned RoIAlign (torchvision's are not), and detectron2's inference: proposals ranked by
their objectness logit, no minimum size for final detections, boxes rescaled per axis. With the same weights it
gives detectron2's detections (see the README's list of what was compared).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

from engine.errors import UserInputError
from engine.model import DeviceLoggedModel

from .anchors import ViTDetAnchorGenerator
from .data import MEAN_RGB
from .paste import paste_masks
from .pooler import AlignedMultiScaleRoIAlign
from .pyramid import LEVEL_NAMES, STRIDES, ViTDetBackbone, build_vitdet_backbone

STD_RGB = (58.395, 57.12, 57.375)  # ImageNet statistics in 0-255, as ViTDet normalises
ASPECT_RATIOS = (0.5, 1.0, 2.0)


class ViTDetRPN(RegionProposalNetwork):
    """torchvision's RPN with detectron2's losses and proposal selection.

    Losses: L1 on the deltas of the sampled positives, and both losses summed over the sampled anchors and divided
    by batch_size_per_image x images (detectron2's normaliser). Proposals: see `filter_proposals`.
    """

    def compute_loss(self, objectness: torch.Tensor, pred_bbox_deltas: torch.Tensor, labels: list[torch.Tensor],
                     regression_targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        positive, negative = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative))[0]])
        normaliser = self.fg_bg_sampler.batch_size_per_image * len(labels)
        box_loss = F.l1_loss(pred_bbox_deltas[positive].float(), torch.cat(regression_targets)[positive],
                             reduction="sum") / normaliser
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled].float(), torch.cat(labels)[sampled], reduction="sum") / normaliser
        return objectness_loss, box_loss

    def filter_proposals(self, proposals: torch.Tensor, objectness: torch.Tensor,
                         image_shapes: list[tuple[int, int]], num_anchors_per_level: list[int],
                         ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image, the best pre_nms_top_n proposals of each level by objectness logit, clipped, those with a
        non-finite value or no area left out, NMS per level, the best post_nms_top_n kept (detectron2's
        find_top_rpn_proposals). torchvision ranks by sigmoid(logit), which is exactly 1.0 in float32 above a
        logit of about 17, so confident proposals tie and the levels they come from are chosen arbitrarily."""
        logits = objectness.detach().reshape(len(proposals), -1)
        top, levels, start = [], [], 0
        for level, count in enumerate(num_anchors_per_level):
            best = logits[:, start:start + count].topk(min(count, self.pre_nms_top_n()), dim=1).indices
            top.append(best + start)
            levels.append(torch.full((best.shape[1],), level, dtype=torch.int64, device=logits.device))
            start += count
        top, levels = torch.cat(top, dim=1), torch.cat(levels)
        rows = torch.arange(len(proposals), device=logits.device)[:, None]
        boxes_per_image, logits_per_image = proposals[rows, top], logits[rows, top]
        final_boxes, final_scores = [], []
        for boxes, scores, shape in zip(boxes_per_image, logits_per_image, image_shapes, strict=True):
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = torch.where(finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[0]
            boxes, scores = boxes[keep], scores[keep]
            keep = box_ops.batched_nms(boxes, scores, levels[keep], self.nms_thresh)[:self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores


class Float32RPNHead(RPNHead):
    """torchvision's RPN head with float32 outputs: under bf16 autocast torchvision would decode the deltas in
    bf16, which puts proposal corners on a 4-8 px grid at 1024 px."""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


def box_losses(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: list[torch.Tensor],
               regression_targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cross-entropy over the sampled proposals and L1 on the deltas predicted for each foreground proposal's
    own class, summed and divided by the number of sampled proposals (detectron2's FastRCNNOutputLayers)."""
    labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
    foreground = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(len(labels), -1, 4)[foreground, labels[foreground]]
    return {
        "loss_classifier": F.cross_entropy(class_logits.float(), labels),
        "loss_box_reg": F.l1_loss(deltas.float(), regression_targets[foreground], reduction="sum")
        / max(labels.numel(), 1),
    }


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size, size) binary targets of one image: each box's matched ground-truth mask cropped to the box by
    RoIAlign with aligned=True and thresholded at 0.5, as detectron2 crops bit masks. torchvision's maskrcnn_loss
    samples with aligned=False, half a pixel off the predictions' aligned pooling, and keeps the soft values."""
    rois = torch.cat([matched[:, None].to(boxes.dtype), boxes], dim=1)
    resized = roi_align(gt_masks[:, None].to(boxes.dtype), rois, (size, size), spatial_scale=1.0, sampling_ratio=0,
                        aligned=True)
    return (resized[:, 0] >= 0.5).to(boxes.dtype)


def mask_loss(mask_logits: torch.Tensor, boxes: list[torch.Tensor], gt_masks: list[torch.Tensor],
              gt_labels: list[torch.Tensor], matched: list[torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy of each foreground proposal's logits for its ground-truth class against its target,
    averaged over every pixel of every proposal (detectron2's mask_rcnn_loss); zero, in the graph, without any."""
    targets = torch.cat([mask_targets(masks, b, m, mask_logits.shape[-1])
                         for masks, b, m in zip(gt_masks, boxes, matched, strict=True)])
    if not len(targets):
        return mask_logits.sum() * 0
    labels = torch.cat([image_labels[m] for image_labels, m in zip(gt_labels, matched, strict=True)])
    logits = mask_logits[torch.arange(len(labels), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(logits, targets)


def detect(class_logits: torch.Tensor, boxes: torch.Tensor, image_shape: tuple[int, int], score_thresh: float,
           nms_thresh: float, max_detections: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final detections of one image from its proposals' class logits (R, C + 1) and decoded boxes (R, C + 1, 4),
    background first: every (proposal, class) pair scoring above `score_thresh`, boxes clipped, NMS per class,
    the best `max_detections` kept; (boxes, scores, labels 1..C). As detectron2's fast_rcnn_inference: proposals
    with a non-finite value are left out, and boxes that clipping leaves empty are kept (torchvision drops boxes
    under 0.01 px before NMS; detectron2 drops only boxes of no area, after rescaling, see to_original_image)."""
    scores = F.softmax(class_logits, dim=-1)
    finite = torch.where(torch.isfinite(boxes).all(dim=(1, 2)) & torch.isfinite(scores).all(dim=1))[0]
    boxes = box_ops.clip_boxes_to_image(boxes[finite, 1:], image_shape)
    scores = scores[finite, 1:]
    candidate, label = torch.where(scores > score_thresh)
    boxes, scores = boxes[candidate, label], scores[candidate, label]
    keep = box_ops.batched_nms(boxes, scores, label, nms_thresh)[:max_detections]
    return boxes[keep], scores[keep], label[keep] + 1


class ViTDetRoIHeads(RoIHeads):
    """torchvision's RoIHeads (proposal sampling and box coding) with the L1 box loss, the aligned mask targets and
    detectron2's inference (`detect`); box and mask branches only."""

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None = None,
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = (t.float() for t in self.box_predictor(  # float32 box decoding, as the RPN
            self.box_head(self.box_roi_pool(features, proposals, image_shapes))))
        if not self.training:
            return self._detections(features, proposals, image_shapes, class_logits, box_regression), {}
        losses = box_losses(class_logits, box_regression, labels, regression_targets)
        positive = [torch.where(image_labels > 0)[0] for image_labels in labels]
        mask_proposals = [p[keep] for p, keep in zip(proposals, positive, strict=True)]
        losses["loss_mask"] = mask_loss(
            self._mask_logits(features, mask_proposals, image_shapes).float(), mask_proposals,
            [t["masks"] for t in targets], [t["labels"] for t in targets],
            [m[keep] for m, keep in zip(matched, positive, strict=True)])
        return [], losses

    def _detections(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                    image_shapes: list[tuple[int, int]], class_logits: torch.Tensor,
                    box_regression: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image: boxes, scores, labels and (N, 1, M, M) mask probabilities of the predicted class."""
        counts = [len(p) for p in proposals]
        decoded = self.box_coder.decode(box_regression, proposals).split(counts)
        detections = [dict(zip(("boxes", "scores", "labels"), detect(
            logits, boxes, shape, self.score_thresh, self.nms_thresh, self.detections_per_img), strict=True))
            for logits, boxes, shape in zip(class_logits.split(counts), decoded, image_shapes, strict=True)]
        boxes = [d["boxes"] for d in detections]
        labels = torch.cat([d["labels"] for d in detections])
        mask_logits = self._mask_logits(features, boxes, image_shapes)
        probs = mask_logits[torch.arange(len(labels), device=labels.device), labels][:, None].sigmoid()
        for detection, image_probs in zip(detections, probs.split([len(b) for b in boxes]), strict=True):
            detection["masks"] = image_probs
        return detections

    def _mask_logits(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                     image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))


class ViTDetMaskRCNN(DeviceLoggedModel):
    """The Runner's detector. Batches come from det.data.collate: uint8 images padded to S x S, targets with
    contiguous labels 0..C-1, and per-image metas (valid size, original size, scale, image id).

    'loss' returns the five losses and their sum; 'predict' returns, per image, boxes (xyxy), scores, labels and
    binary masks in the original image's pixels, ready for det.coco_metric.CocoMetric. `dropped_ids` (images an
    evaluation loader could not read) is for the metric, which reads it from the batch.
    """

    def __init__(self, backbone: ViTDetBackbone, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 precision: str = "fp32"):
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads
        self.bf16 = precision == "bf16"
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]], metas: list[dict[str, Any]],
                mode: str = "loss", dropped_ids: Sequence[int] = ()) -> Any:
        if mode == "loss":
            targets = [dict(t, labels=t["labels"] + 1) for t in targets]  # torchvision: 0 is background
            losses = self._run(images, metas, targets)[1]
            return {"loss": sum(losses.values()), **losses}
        if mode == "predict":  # training autocasts through the optimizer wrapper; evaluation here
            if not metas:  # every image of the batch was dropped
                return []
            with torch.autocast(images.device.type, torch.bfloat16, enabled=self.bf16):
                detections = self._run(images, metas)[0]
            return [to_original_image(d, m) for d, m in zip(detections, metas, strict=True)]
        raise ValueError(f"mode={mode!r}; expected 'loss' or 'predict'")

    def _run(self, images: torch.Tensor, metas: list[dict[str, Any]],
             targets: list[dict[str, torch.Tensor]] | None = None) -> tuple[list[dict], dict[str, torch.Tensor]]:
        image_sizes = [tuple(int(v) for v in m["image_size"]) for m in metas]
        pixels = self.normalise(images, image_sizes)
        features = self.backbone(pixels)
        proposals, rpn_losses = self.rpn(ImageList(pixels, image_sizes), features, targets)
        detections, head_losses = self.roi_heads(features, proposals, image_sizes, targets)
        return detections, {"loss_rpn_cls": rpn_losses.get("loss_objectness"),
                             "loss_rpn_loc": rpn_losses.get("loss_rpn_box_reg"), **head_losses}

    def normalise(self, images: torch.Tensor, image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        """Float pixels standardised with ViTDet's mean and std, zero outside each image's valid region, as
        detectron2 pads its normalised images with zeros."""
        pixels = (images.float() - self.mean) / self.std
        heights, widths = torch.tensor(image_sizes, device=images.device).unbind(dim=1)
        rows = torch.arange(images.shape[-2], device=images.device) < heights[:, None]
        columns = torch.arange(images.shape[-1], device=images.device) < widths[:, None]
        return pixels * (rows[:, None, :, None] & columns[:, None, None, :])


def to_original_image(detection: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Detections in the original image's pixels, as detectron2's detector_postprocess: boxes scaled by original /
    resized size per axis (the resized sides are rounded separately) and clipped, boxes left without area
    dropped, masks pasted at the original size; labels 0..C-1."""
    height, width = (int(v) for v in meta["orig_size"])
    resized_height, resized_width = (int(v) for v in meta["image_size"])
    boxes = detection["boxes"].float().clone()
    boxes[:, 0::2] *= width / resized_width
    boxes[:, 1::2] *= height / resized_height
    boxes = box_ops.clip_boxes_to_image(boxes, (height, width))
    keep = torch.where((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[0]
    boxes = boxes[keep]
    return dict(image_id=int(meta["image_id"]), boxes=boxes, scores=detection["scores"][keep].float(),
                labels=detection["labels"][keep] - 1,
                masks=paste_masks(detection["masks"][keep, 0], boxes, height, width))


def build_mask_rcnn(num_classes: int, size: str, img_size: int = 1024, head_channels: int = 256,
                    fc_channels: int = 1024, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
                    roi_batch_size: int = 512, score_thresh: float = 0.05, precision: str = "fp32",
                    **backbone_kwargs) -> ViTDetMaskRCNN:
    """ViTDet's Mask R-CNN for `num_classes` classes on a ViT of `size` at `img_size` (square) input.

    Sampling and NMS settings are ViTDet's (those of detectron2's Mask R-CNN). `backbone_kwargs` go to
    build_vitdet_backbone (window_size, drop_path_rate, out_channels, depth, ...); narrow `head_channels`,
    `fc_channels`, small `anchor_sizes` and fewer sampled proposals per image (`roi_batch_size`) make the tiny
    test models. At test time detections below `score_thresh` are dropped before NMS keeps the best 100.
    """
    backbone = build_vitdet_backbone(size, img_size=img_size, **backbone_kwargs)
    channels = backbone.out_channels
    levels = (*LEVEL_NAMES, "p6")
    if len(anchor_sizes) != len(levels):
        raise UserInputError(f"anchor_sizes needs one size per pyramid level {levels}, got {list(anchor_sizes)}")
    anchors = ViTDetAnchorGenerator(anchor_sizes, ASPECT_RATIOS, (*STRIDES, 2 * STRIDES[-1]))
    rpn = ViTDetRPN(
        anchors, Float32RPNHead(channels, len(ASPECT_RATIOS), conv_depth=2), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
        batch_size_per_image=256, positive_fraction=0.5, pre_nms_top_n=dict(training=2000, testing=1000),
        post_nms_top_n=dict(training=1000, testing=1000), nms_thresh=0.7)
    box_predictor = FastRCNNPredictor(fc_channels, num_classes + 1)
    mask_predictor = MaskRCNNPredictor(head_channels, head_channels, num_classes + 1)
    roi_heads = ViTDetRoIHeads(
        box_roi_pool=AlignedMultiScaleRoIAlign(LEVEL_NAMES, 7, strides=STRIDES),
        box_head=FastRCNNConvFCHead((channels, 7, 7), [head_channels] * 4, [fc_channels], norm_layer=LayerNorm2d),
        box_predictor=box_predictor, fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=roi_batch_size,
        positive_fraction=0.25, bbox_reg_weights=None, score_thresh=score_thresh, nms_thresh=0.5,
        detections_per_img=100,
        mask_roi_pool=AlignedMultiScaleRoIAlign(LEVEL_NAMES, 14, strides=STRIDES),
        mask_head=MaskRCNNHeads(channels, [head_channels] * 4, 1, norm_layer=LayerNorm2d),
        mask_predictor=mask_predictor)
    # detectron2's initialisation where torchvision's differs: the box head's fc as c2_xavier_fill, the mask deconv's
    # bias zero (c2_msra_fill), the predictors near-zero outputs at the start
    box_fc = roi_heads.box_head[-2]
    nn.init.kaiming_uniform_(box_fc.weight, a=1)
    nn.init.zeros_(box_fc.bias)
    nn.init.zeros_(mask_predictor.conv5_mask.bias)
    for layer, std in ((box_predictor.cls_score, 0.01), (box_predictor.bbox_pred, 0.001),
                       (mask_predictor.mask_fcn_logits, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    with torch.no_grad():  # torchvision's background box deltas and mask logits, which nothing reads or trains: zero,
        box_predictor.bbox_pred.weight[:4] = 0  # as detectron2, which has none, exports and imports them
        mask_predictor.mask_fcn_logits.weight[0] = 0
    return ViTDetMaskRCNN(backbone, rpn, roi_heads, precision)
