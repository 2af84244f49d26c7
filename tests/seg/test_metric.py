"""Our segmentation metric against mmseg's IoUMetric and a direct numpy formula, ignore label included."""
import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.evaluation import IoUMetric
from mmseg.structures import SegDataSample

from seg.metric import SegMetric

CLASSES = ("sky", "ground", "tree", "car")  # 'car' is never labelled nor predicted: no IoU
IGNORE = 255


def handcrafted() -> list[tuple[np.ndarray, np.ndarray]]:
    """Two (prediction, label) pairs with mistakes everywhere, and ignored pixels predicted wrongly."""
    label_a = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [IGNORE, IGNORE, 2, 2]])
    pred_a = np.array([[0, 1, 1, 1], [0, 0, 1, 2], [2, 0, 1, 1], [2, 0, 2, 1]])
    label_b = np.array([[1, 1, 1], [2, 2, IGNORE]])
    pred_b = np.array([[1, 2, 1], [2, 0, 0]])
    return [(pred_a, label_a), (pred_b, label_b)]


def numpy_metrics(pairs) -> dict[str, float]:
    n = len(CLASSES)
    inter, pred_area, label_area = np.zeros(n), np.zeros(n), np.zeros(n)
    for pred, label in pairs:
        keep = label != IGNORE
        p, t = pred[keep], label[keep]
        for c in range(n):
            inter[c] += np.sum((p == c) & (t == c))
            pred_area[c] += np.sum(p == c)
            label_area[c] += np.sum(t == c)
    union = pred_area + label_area - inter
    present = union > 0
    iou = inter[present] / union[present]
    acc = inter[label_area > 0] / label_area[label_area > 0]
    out = {"aAcc": 100 * inter.sum() / label_area.sum(), "mIoU": 100 * iou.mean(), "mAcc": 100 * acc.mean()}
    out.update({f"IoU.{name}": 100 * v for name, v in zip(np.array(CLASSES)[present], iou, strict=True)})
    return out


def run(metric, pairs) -> dict[str, float]:
    metric.dataset_meta = {"classes": CLASSES}
    samples = [SegDataSample(pred_sem_seg=PixelData(data=torch.from_numpy(p)[None]),
                             gt_sem_seg=PixelData(data=torch.from_numpy(t)[None])).to_dict() for p, t in pairs]
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


def test_equals_numpy_formula_and_mmseg_iou_metric_with_ignored_pixels():
    pairs = handcrafted()
    ours, mmseg_values, expected = run(SegMetric(), pairs), run(IoUMetric(), pairs), numpy_metrics(pairs)
    assert set(ours) == set(expected) and "IoU.car" not in ours
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=0.005), key
    for key in ("aAcc", "mIoU", "mAcc"):
        assert ours[key] == pytest.approx(float(mmseg_values[key]), abs=1e-4), key
    # the ignored pixels were predicted wrongly; counting them would lower the accuracy
    assert expected["aAcc"] == pytest.approx(100 * 13 / 19)


def test_counts_are_exact_integers():
    pred = torch.tensor([[0, 1], [1, 1]])
    label = torch.tensor([[0, 1], [IGNORE, 0]])
    intersect, union, predicted, labelled = SegMetric.intersect_and_union(pred, label, 3, IGNORE)
    assert intersect.dtype == torch.int64
    assert intersect.tolist() == [1, 1, 0] and union.tolist() == [2, 2, 0]
    assert predicted.tolist() == [1, 2, 0] and labelled.tolist() == [2, 1, 0]
