"""COCO metric: faster-coco-eval gives pycocotools' 12 numbers; perfect and empty predictions; the Runner metric."""
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_api

from benchmarks.coco_eval_speed import noisy_detections, pycocotools_stats
from benchmarks.synthetic import COCO_CATEGORY_IDS, synthesize
from det.coco_metric import COCO_STATS, CocoMetric, _numpy, coco_stats, detections_to_coco, load_coco, task_names


@pytest.fixture(scope="module")
def annotations(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, num_images=60, size=96, seed=0, val_fraction=0.5)
    path = root / "coco" / "annotations" / "instances_val2017.json"
    anns = json.loads(path.read_text())["annotations"]
    kinds = {"polygon" if isinstance(a["segmentation"], list) else "rle" for a in anns}
    assert kinds == {"polygon", "rle"} and any(a["iscrowd"] for a in anns)  # every kind the test is about
    return path


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_same_twelve_numbers_as_pycocotools(annotations, iou_type):
    gt = load_coco(annotations)
    detections = noisy_detections(gt)
    ours = coco_stats(gt, detections, iou_type)
    reference = pycocotools_stats(annotations, detections, iou_type)
    assert list(ours) == list(COCO_STATS)
    np.testing.assert_allclose(list(ours.values()), reference, rtol=0, atol=1e-12)
    assert 0.2 < ours["AP"] < 0.9 and ours["AP50"] > ours["AP75"]  # a non-trivial case


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_predictions_score_one_and_none_score_zero(annotations, iou_type):
    gt = load_coco(annotations)
    perfect = []
    for ann in gt.dataset["annotations"]:
        if not ann["iscrowd"]:
            x, y, w, h = ann["bbox"]
            perfect += detections_to_coco(ann["image_id"], np.array([[x, y, x + w, y + h]]), [1.0],
                                          [COCO_CATEGORY_IDS.index(ann["category_id"])], COCO_CATEGORY_IDS,
                                          gt.annToMask(ann)[None])
    stats = coco_stats(gt, perfect, iou_type)
    assert stats["AP"] == stats["AP50"] == stats["AP75"] == stats["AR100"] == 1.0
    empty = coco_stats(gt, [], iou_type)  # pycocotools itself cannot load an empty result list
    assert empty["AP"] == empty["AP50"] == empty["AR100"] == 0.0


def test_detections_to_coco_converts_boxes_and_masks():
    masks = np.zeros((2, 6, 8), np.float32)
    masks[0, 1:3, 2:5], masks[1, 4:6, 0:2] = 0.9, 0.4
    out = detections_to_coco(7, np.array([[2.0, 1.0, 5.0, 3.0], [0.0, 4.0, 2.0, 6.0]]), [0.8, 0.3], [1, 0],
                             [11, 22], masks)
    assert [d["bbox"] for d in out] == [[2.0, 1.0, 3.0, 2.0], [0.0, 4.0, 2.0, 2.0]]
    assert [(d["category_id"], d["image_id"]) for d in out] == [(22, 7), (11, 7)]
    rles = [dict(d["segmentation"], counts=d["segmentation"]["counts"].encode()) for d in out]
    np.testing.assert_array_equal(mask_api.decode(rles).transpose(2, 0, 1), masks > 0.5)
    assert detections_to_coco(7, np.zeros((0, 4)), [], [], [11], np.zeros((0, 6, 8))) == []
    as_bool = detections_to_coco(7, np.array([[2.0, 1.0, 5.0, 3.0], [0.0, 4.0, 2.0, 6.0]]), [0.8, 0.3], [1, 0],
                                 [11, 22], masks > 0.5)
    assert as_bool == out


def test_masks_cross_to_the_cpu_as_booleans_and_other_floats_as_float32():
    """A float copy of 100 binary masks at the original size would take 4x the bytes (on the GPU first)."""
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3] = True
    assert _numpy(masks).dtype == np.bool_ and (_numpy(masks) == masks.numpy()).all()
    assert _numpy(torch.tensor([0.5, 0.25], dtype=torch.bfloat16)).dtype == np.float32
    assert _numpy(torch.tensor([3, 1])).dtype == np.int64


def test_runner_metric_names_and_results_file(annotations, tmp_path):
    gt = load_coco(annotations)
    detections = noisy_detections(gt, seed=1)
    by_image = {image_id: [] for image_id in gt.getImgIds()}  # every image is evaluated, some without detections
    for d in detections:
        by_image[d["image_id"]].append(d)
    metric = CocoMetric(annotations, COCO_CATEGORY_IDS, results_file=tmp_path / "detections.json")
    for image_id, dets in by_image.items():
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)]).reshape(-1, 4)
        masks = torch.from_numpy(np.stack([gt.annToMask({**d, "iscrowd": 0}) for d in dets] or [np.zeros((96, 96))]))
        labels = torch.tensor([COCO_CATEGORY_IDS.index(d["category_id"]) for d in dets], dtype=torch.int64)
        metric.process(None, [dict(image_id=image_id, boxes=boxes, scores=torch.tensor([d["score"] for d in dets]),
                                   labels=labels, masks=masks[:len(dets)])])
    assert any(not dets for dets in by_image.values())
    metrics = metric.evaluate(len(by_image))
    assert {"APb", "APb50", "APb75", "APm", "APm50", "APm75", "ARb100", "ARml"} <= set(metrics)
    written = json.loads((tmp_path / "detections.json").read_text())
    assert len(written) == len(detections)
    assert metrics["APm"] == pytest.approx(coco_stats(gt, written, "segm")["AP"])
    assert metrics["APb"] == pytest.approx(coco_stats(gt, detections, "bbox")["AP"], abs=1e-3)


def test_scores_boxes_at_full_precision(tmp_path):
    """A box whose IoU with its ground truth is 0.4998 misses at IoU 0.5, as pycocotools scores it; rounded to two
    decimals it would reach 0.5 and match. The results file holds what was scored."""
    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 5, "name": "thing"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    box = torch.tensor([[10.0, 10.0, 30.0, 19.996]])
    metric = CocoMetric(path, [5], iou_types=("bbox",), results_file=tmp_path / "detections.json")
    metric.process(None, [dict(image_id=1, boxes=box, scores=torch.tensor([0.9]), labels=torch.tensor([0]))])
    metrics = metric.evaluate(1)
    exact = [dict(image_id=1, category_id=5, bbox=[10.0, 10.0, 20.0, float(box[0, 3]) - 10.0], score=0.9)]
    reference = pycocotools_stats(path, exact, "bbox")
    np.testing.assert_allclose([metrics[name] for name in task_names(dict.fromkeys(COCO_STATS), "bbox")], reference,
                               rtol=0, atol=1e-12)
    assert metrics["APb50"] == 0.0
    rounded = [dict(exact[0], bbox=[round(v, 2) for v in exact[0]["bbox"]])]
    assert pycocotools_stats(path, rounded, "bbox")[1] == pytest.approx(1.0)  # a case that rounding changes
    written = json.loads((tmp_path / "detections.json").read_text())
    assert coco_stats(load_coco(path), written, "bbox") == coco_stats(load_coco(path), exact, "bbox")
