"""mIoU, mAcc, aAcc and per-class IoU: mmseg's IoUMetric with exact pixel counts and the per-class values kept."""
from __future__ import annotations

import torch
from mmseg.evaluation import IoUMetric


class SegMetric(IoUMetric):
    """mmseg's IoUMetric (same summary, same per-class table in the log), counting pixels in int64 with one
    bincount per image instead of float32 histograms (exact beyond 2^24 pixels per class), and returning each
    class's IoU as 'IoU.<class>' beside aAcc / mIoU / mAcc. Classes absent from both labels and predictions have
    no IoU and no key."""

    @staticmethod
    def intersect_and_union(pred_label: torch.Tensor, label: torch.Tensor, num_classes: int,
                            ignore_index: int) -> tuple[torch.Tensor, ...]:
        """(intersection, union, predicted, labelled) pixel counts per class, ignoring `ignore_index` pixels."""
        keep = label != ignore_index
        label, pred_label = label[keep].long(), pred_label[keep].long()
        confusion = torch.bincount(label * num_classes + pred_label, minlength=num_classes ** 2)
        confusion = confusion.view(num_classes, num_classes).cpu()
        intersect, labelled, predicted = confusion.diagonal(), confusion.sum(1), confusion.sum(0)
        return intersect, predicted + labelled - intersect, predicted, labelled

    def compute_metrics(self, results: list) -> dict[str, float]:
        summary = {name: round(float(value), 2) for name, value in super().compute_metrics(results).items()}
        intersect, union = (sum(column) for column in list(zip(*results, strict=True))[:2])
        per_class = {f"IoU.{name}": round(100 * float(i) / float(u), 2)
                     for name, i, u in zip(self.dataset_meta["classes"], intersect, union, strict=True) if u > 0}
        return {**summary, **per_class}
