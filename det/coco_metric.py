"""COCO box and mask AP with faster-coco-eval: pycocotools' 12 numbers, computed several times faster.

Metric names carry the task letter after the first two: APb, APb50, APb75, APbs, ..., ARb100 for boxes and APm,
APm50, ... for masks, as the paper's tables name them.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from pycocotools import mask as mask_api

from engine.errors import UserInputError
from engine.safe_io import write_json_atomic

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
TASK_LETTER = {"bbox": "b", "segm": "m"}


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def load_coco(annotations: str | os.PathLike | dict) -> COCO:
    """Ground truth from a COCO json file or dict, without the library's progress prints."""
    return COCO(annotations if isinstance(annotations, dict) else str(annotations), print_function=_quiet)


def coco_stats(gt: COCO, detections: list[dict], iou_type: str,
               image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """The 12 COCO numbers of `detections` (COCO results format) against `gt` on the images `image_ids` (default:
    all), named as in COCO_STATS. An area range without ground truth gives -1, as in pycocotools; no detections
    give 0 rather than an error."""
    if iou_type not in TASK_LETTER:
        raise ValueError(f"iou_type {iou_type!r}; expected one of {sorted(TASK_LETTER)}")
    evaluation = COCOeval_faster(gt, gt.loadRes(detections), iou_type, print_function=_quiet)
    if image_ids is not None:
        evaluation.params.imgIds = sorted(image_ids)
    evaluation.run()
    return dict(zip(COCO_STATS, (float(v) for v in evaluation.stats[:12]), strict=True))


def task_names(stats: dict[str, float], iou_type: str) -> dict[str, float]:
    """AP -> APb (boxes) or APm (masks), AP50 -> APb50, ARs -> ARbs, ..."""
    letter = TASK_LETTER[iou_type]
    return {name[:2] + letter + name[2:]: value for name, value in stats.items()}


def detections_to_coco(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                       category_ids: Sequence[int], masks: np.ndarray | None = None) -> list[dict]:
    """COCO results of one image: boxes (N, 4) xyxy in original pixels, contiguous `labels` mapped through
    `category_ids`, and masks (N, H, W), booleans or probabilities (thresholded at 0.5), RLE-encoded. Boxes keep
    full precision: rounding them moves a box's IoU across a threshold now and then, and with it AP and AR."""
    xywh = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    xywh[:, 2:] -= xywh[:, :2]
    results = [dict(image_id=int(image_id), category_id=int(category_ids[int(label)]),
                    bbox=[float(v) for v in box], score=float(score))
               for box, score, label in zip(xywh, scores, labels, strict=True)]
    if masks is not None and len(results):
        masks = np.asarray(masks)
        binary = masks if masks.dtype == bool else masks > 0.5
        binary = np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8))
        for result, rle in zip(results, mask_api.encode(binary), strict=True):
            result["segmentation"] = dict(size=rle["size"], counts=rle["counts"].decode("ascii"))
    return results


class CocoMetric(BaseMetric):
    """Box (and mask) AP of a detector's 'predict' outputs for mmengine's ValLoop.

    Each output is a dict with image_id, boxes (xyxy, original pixels), scores, labels (contiguous) and
    optionally masks (N, H, W) at the original size. Detections are converted to COCO results per image as they
    come; `results_file` receives them all as COCO results json. Only the images evaluated are scored: those the
    loader dropped (the batch's `dropped_ids`) or never had (missing files) would otherwise count as all misses.
    """

    def __init__(self, annotations: str | os.PathLike | dict, category_ids: Sequence[int],
                 iou_types: Sequence[str] = ("bbox", "segm"), results_file: str | os.PathLike | None = None):
        super().__init__()
        self.gt = load_coco(annotations)
        self.gt_source = "the annotations" if isinstance(annotations, dict) else str(annotations)
        self.category_ids, self.iou_types = list(category_ids), tuple(iou_types)
        self.results_file = Path(results_file) if results_file else None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """One result per dataset item, (image id, its COCO results or None if dropped): mmengine gathers results
        across processes assuming each holds one per item of its share."""
        for output in data_samples:
            masks = output.get("masks") if "segm" in self.iou_types else None
            self.results.append((int(output["image_id"]), detections_to_coco(
                output["image_id"], _numpy(output["boxes"]), _numpy(output["scores"]), _numpy(output["labels"]),
                self.category_ids, None if masks is None else _numpy(masks))))
        dropped = data_batch.get("dropped_ids", ()) if isinstance(data_batch, dict) else ()
        self.results.extend((int(image_id), None) for image_id in dropped)

    def compute_metrics(self, results: list[tuple[int, list[dict] | None]]) -> dict[str, float]:
        evaluated = {image_id for image_id, detections in results if detections is not None}
        if not evaluated:
            raise UserInputError(f"{self.gt_source}: no image of the evaluation could be read")
        total = len(self.gt.getImgIds())
        if len(evaluated) < total:
            print_log(f"COCO evaluation on {len(evaluated)} of the {total} images of {self.gt_source}; the others "
                      "were left out (missing or unreadable files)", logger="current", level=logging.WARNING)
        detections = [d for _, image in results if image is not None for d in image]
        if self.results_file is not None:
            write_json_atomic(self.results_file, detections, indent=None)
        metrics = {}
        for iou_type in self.iou_types:
            metrics.update(task_names(coco_stats(self.gt, detections, iou_type, evaluated), iou_type))
        return metrics


def _numpy(value: Any) -> np.ndarray:
    """A CPU numpy copy: floats as float32 (numpy has no bfloat16), booleans and integers as they are, so binary
    masks cross as one byte per pixel and no float copy is made on the GPU."""
    if not hasattr(value, "detach"):
        return np.asarray(value)
    value = value.detach()
    return (value.float() if value.is_floating_point() else value).cpu().numpy()
