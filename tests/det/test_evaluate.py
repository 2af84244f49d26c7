"""Evaluation with bad val images under data.skip_invalid=True: an undecodable or missing image is left out of the
scoring (not replaced by another, not counted as all misses), so perfect detections on the rest score 1.0."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.synthetic import synthesize
from det.coco_metric import CocoMetric, load_coco
from det.data import CocoDetection, coco_paths, collate, eval_transform
from det.evaluate import evaluate_detector

SIZE = 64


class PerfectDetector:
    """Answers every image it is given with its own non-crowd ground truth, score 1."""

    def __init__(self, annotation_file, category_ids):
        self.gt, self.category_ids = load_coco(annotation_file), list(category_ids)

    def eval(self):
        return self

    def val_step(self, batch):
        return [self.detections(meta["image_id"]) for meta in batch["metas"]]

    def detections(self, image_id):
        objects = [a for a in self.gt.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in objects)]).reshape(-1, 4)
        masks = np.zeros((len(objects), SIZE, SIZE), bool)
        for mask, annotation in zip(masks, objects, strict=True):
            mask[:] = self.gt.annToMask(annotation)
        labels = torch.tensor([self.category_ids.index(a["category_id"]) for a in objects], dtype=torch.int64)
        return dict(image_id=image_id, boxes=boxes, scores=torch.ones(len(objects)), labels=labels,
                    masks=torch.from_numpy(masks))


@pytest.fixture
def damaged_val(tmp_path):
    """The val split with its first annotated image undecodable and its third missing."""
    synthesize(tmp_path, num_images=24, size=SIZE, seed=0, val_fraction=0.5)
    annotation_file, folder = coco_paths(tmp_path, "val")
    data = json.loads(annotation_file.read_text())
    annotated = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
    images = sorted((i for i in data["images"] if i["id"] in annotated), key=lambda i: i["id"])
    (folder / images[0]["file_name"]).write_bytes(b"not an image at all")
    (folder / images[2]["file_name"]).unlink()
    return annotation_file, folder, images[0]["id"], images[2]["id"]


def test_perfect_detections_score_one_when_bad_val_images_are_left_out(damaged_val):
    annotation_file, folder, undecodable, missing = damaged_val
    dataset = CocoDetection(annotation_file, folder, eval_transform(SIZE), train=False, skip_invalid=True)
    assert missing in dataset.image_ids and dataset.skipped.value == 0  # no file looked for at start: found when read
    metric = CocoMetric(annotation_file, dataset.category_ids)
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate)  # one batch holds nothing but the dropped image
    metrics = evaluate_detector(PerfectDetector(annotation_file, dataset.category_ids), loader, metric)
    assert dataset.skipped.value == 2  # the missing file and the undecodable one
    for name in ("APb", "APb50", "APb75", "ARb100", "APm", "APm75", "ARm100"):
        assert metrics[name] == 1.0, name
    position = dataset.image_ids.index(undecodable)
    batch = collate([dataset[position], dataset[position + 1]])  # training would read position + 1 in its place
    assert batch["dropped_ids"] == [undecodable] and batch["images"].shape == (1, 3, SIZE, SIZE)
    assert [meta["image_id"] for meta in batch["metas"]] == [dataset.image_ids[position + 1]]


def test_an_evaluation_without_one_readable_image_is_an_error(tmp_path):
    synthesize(tmp_path, num_images=8, size=SIZE, seed=0, val_fraction=0.5)
    annotation_file, folder = coco_paths(tmp_path, "val")
    for path in folder.iterdir():
        path.write_bytes(b"garbage")
    dataset = CocoDetection(annotation_file, folder, eval_transform(SIZE), train=False, skip_invalid=True)
    metric = CocoMetric(annotation_file, dataset.category_ids)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    with pytest.raises(ValueError, match=r"instances_val2017\.json: no image of the evaluation could be read"):
        evaluate_detector(PerfectDetector(annotation_file, dataset.category_ids), loader, metric)
