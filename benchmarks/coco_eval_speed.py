"""COCO evaluation time: faster-coco-eval (what `det eval` uses) against pycocotools on generated scenes.

    python benchmarks/coco_eval_speed.py --images 5000 --size 128

Synthesises the scenes (COCO layout: polygons, RLE, crowd regions), makes noisy detections from the ground
truth (jittered boxes, shifted masks, random scores, misses, wrong classes, false positives), checks that
both libraries give the same 12 numbers, and prints the seconds of each per task and the ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO as ReferenceCOCO
from pycocotools.cocoeval import COCOeval as ReferenceEval

from benchmarks.synthetic import COCO_CATEGORY_IDS, synthesize
from det.coco_metric import coco_stats, detections_to_coco, load_coco


def noisy_detections(gt, seed: int = 0) -> list[dict]:
    """Ground truth with jittered boxes, shifted masks, random scores, 15% misses, 10% wrong classes and a
    false positive on every third image: detections whose AP is well between 0 and 1."""
    rng = np.random.default_rng(seed)
    detections = []
    for ann in gt.dataset["annotations"]:
        if ann["iscrowd"] or rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        mask = np.roll(gt.annToMask(ann), int(rng.integers(-2, 3)), axis=1)
        box = np.array([x, y, x + w, y + h]) + rng.normal(0, 0.08 * max(w, h), 4)
        label = COCO_CATEGORY_IDS.index(ann["category_id"]) if rng.random() < 0.9 else int(rng.integers(8))
        detections += detections_to_coco(ann["image_id"], box[None], [rng.random()], [label], COCO_CATEGORY_IDS,
                                          mask[None])
    for image in gt.dataset["images"][::3]:
        height, width = image["height"], image["width"]
        box = np.array([[0.1 * width, 0.1 * height, 0.4 * width, 0.5 * height]])
        mask = np.zeros((1, height, width), np.uint8)
        mask[0, int(0.1 * height):int(0.5 * height), int(0.1 * width):int(0.4 * width)] = 1
        detections += detections_to_coco(image["id"], box, [rng.random()], [0], COCO_CATEGORY_IDS, mask)
    return detections


def pycocotools_stats(path: Path, detections: list[dict], iou_type: str) -> np.ndarray:
    """The reference: pycocotools' evaluate, accumulate, summarize."""
    gt = ReferenceCOCO(str(path))
    evaluation = ReferenceEval(gt, gt.loadRes(detections), iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats


def compare_coco_eval(images: int, size: int) -> None:
    """Prints faster-coco-eval's and pycocotools' seconds and their ratio for boxes and masks on `images` scenes,
    after checking that they give the same 12 numbers."""
    with tempfile.TemporaryDirectory() as scratch:
        synthesize(scratch, 2 * images, size, seed=0, val_fraction=0.5)  # `images` in val
        path = Path(scratch) / "coco" / "annotations" / "instances_val2017.json"
        gt = load_coco(path)
        detections = noisy_detections(gt)
        print(f"COCO evaluation: {len(gt.dataset['images'])} val images of {size} px, "
              f"{len(gt.dataset['annotations'])} annotations, {len(detections)} detections")
        for iou_type in ("bbox", "segm"):
            start = time.perf_counter()
            ours = coco_stats(load_coco(path), detections, iou_type)
            faster = time.perf_counter() - start
            start = time.perf_counter()
            reference = pycocotools_stats(path, detections, iou_type)
            slow = time.perf_counter() - start
            np.testing.assert_allclose(list(ours.values()), reference, rtol=0, atol=1e-12)
            print(f"  {iou_type}: AP {ours['AP']:.4f} (same 12 numbers); faster-coco-eval {faster:.2f} s, "
                  f"pycocotools {slow:.2f} s, ratio {slow / faster:.1f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="images evaluated")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    compare_coco_eval(args.images, args.size)


if __name__ == "__main__":
    main()
