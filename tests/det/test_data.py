"""COCO detection data: labels and masks as pycocotools reads them, the LSJ and test-time geometry, seeded
augmentation, and bad input that is an error naming the file and item or is skipped and counted."""
import copy
import io
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from benchmarks.synthetic import COCO_CATEGORY_IDS, synthesize
from det.data import PAD_RGB, CocoDetection, coco_paths, collate, eval_transform, fitted_size, lsj_transform
from engine.hooks import SkippedImagesHook
from engine.images import UnreadableImageError

SIZE = 64


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, num_images=40, size=SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def train_files(root):
    return coco_paths(root, "train")


@pytest.fixture(scope="module")
def lsj_dataset(train_files):
    return CocoDetection(*train_files, lsj_transform(SIZE), train=True)


def annotations_json(path):
    return json.loads(path.read_text())


def tight_boxes(masks):
    """Reference: per mask, [x_min, y_min, x_max + 1, y_max + 1] of its pixels."""
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def variant(train_files, tmp_path, edit):
    """The train annotation file after `edit(data)`, written to tmp_path; the images stay where they are."""
    data = annotations_json(train_files[0])
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_paths_accept_the_coco_root_or_the_synthetic_root(root, tmp_path):
    assert coco_paths(root, "val") == coco_paths(root / "coco", "val")
    assert coco_paths(root, "val") == (root / "coco/annotations/instances_val2017.json", root / "coco/val2017")
    with pytest.raises(FileNotFoundError, match=r"annotations/instances_train2017\.json: COCO annotation file"):
        coco_paths(tmp_path, "train")
    shutil.copytree(root / "coco/annotations", tmp_path / "annotations")
    with pytest.raises(FileNotFoundError, match=r"train2017: COCO image folder not found"):
        coco_paths(tmp_path, "train")


def test_train_drops_images_without_annotations_and_val_keeps_all(train_files, tmp_path):
    def strip(data):  # image 0: no annotations at all; image 1: crowds only
        first, second = data["images"][0]["id"], data["images"][1]["id"]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first]
        for a in data["annotations"]:
            a["iscrowd"] = int(a["iscrowd"] or a["image_id"] == second)

    path = variant(train_files, tmp_path, strip)
    data = annotations_json(path)
    train = CocoDetection(path, train_files[1], eval_transform(SIZE), train=True)
    val = CocoDetection(path, train_files[1], eval_transform(SIZE), train=False)
    with_objects = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
    assert train.image_ids == sorted(with_objects) and len(train) == len(data["images"]) - 2
    assert val.image_ids == sorted(image["id"] for image in data["images"])
    assert len(val[0]["target"]["boxes"]) == 0 and set(val[0]["target"]) == {"boxes", "labels"}


def test_labels_are_contiguous_over_sorted_category_ids(lsj_dataset):
    assert lsj_dataset.category_ids == sorted(COCO_CATEGORY_IDS)
    names = {c["id"]: c["name"] for c in annotations_json(lsj_dataset.annotation_file)["categories"]}
    assert lsj_dataset.classes == [names[i] for i in lsj_dataset.category_ids]
    labels = torch.cat([lsj_dataset[i]["target"]["labels"] for i in range(len(lsj_dataset))])
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < len(COCO_CATEGORY_IDS)
    assert len(labels.unique()) > 4  # the gaps in the ids are crossed


def test_masks_boxes_and_labels_equal_pycocotools_at_the_original_size(train_files):
    dataset = CocoDetection(*train_files, eval_transform(SIZE), train=True)  # identity resize, no padding
    coco = COCO(str(train_files[0]))
    kinds = set()
    for index, image_id in enumerate(dataset.image_ids):
        sample = dataset[index]
        annotations = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        kinds |= {type(a["segmentation"]).__name__ for a in annotations}
        expected_masks = np.stack([coco.annToMask(a) for a in annotations])
        np.testing.assert_array_equal(sample["target"]["masks"].numpy(), expected_masks)
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)]
        np.testing.assert_allclose(sample["target"]["boxes"].numpy(), xyxy, rtol=0, atol=1e-4)
        labels = [dataset.category_ids.index(a["category_id"]) for a in annotations]
        assert sample["target"]["labels"].tolist() == labels
        assert sample["meta"] == {"image_id": image_id, "orig_size": (SIZE, SIZE), "image_size": (SIZE, SIZE),
                                  "scale": 1.0}
    assert kinds == {"list", "dict"}  # polygons and compressed RLE both decoded


@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (40, 40)])
def test_test_transform_fits_the_longer_side_and_pads_bottom_right(shape):
    height, width = shape
    image = tv_tensors.Image(torch.randint(0, 256, (3, height, width), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[2.0, 3.0, 20.0, 25.0], [0.0, 0.0, 30.0, 30.0]], format="XYXY",
                                     canvas_size=shape)
    out, target, meta = eval_transform(80)(image, {"boxes": boxes, "labels": torch.tensor([0, 1])})
    scale = 80 / max(shape)
    valid = (round(height * scale), round(width * scale))
    assert out.shape == (3, 80, 80) and meta == {"image_size": valid, "scale": scale} and max(valid) == 80
    padding = torch.ones(80, 80, dtype=torch.bool)
    padding[: valid[0], : valid[1]] = False
    assert (out[:, padding] == torch.tensor(PAD_RGB, dtype=torch.uint8)[:, None]).all()
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), boxes * meta["scale"])
    assert target["boxes"].canvas_size == (80, 80)


def test_val_samples_are_resized_by_meta_scale(root):
    for size in (96, 48):
        dataset = CocoDetection(*coco_paths(root, "val"), eval_transform(size), train=False)
        original = CocoDetection(*coco_paths(root, "val"), eval_transform(SIZE), train=False)
        sample = dataset[2]
        assert sample["image"].shape == (3, size, size) and sample["image"].dtype == torch.uint8
        assert sample["meta"]["scale"] == size / SIZE and sample["meta"]["image_size"] == (size, size)
        torch.testing.assert_close(sample["target"]["boxes"] / sample["meta"]["scale"],
                                   original[2]["target"]["boxes"])


def test_lsj_keeps_boxes_masks_and_padding_consistent(lsj_dataset):
    nonempty = 0
    for seed in range(12):
        sample = lsj_dataset[(seed % 5, seed)]
        image, target, meta = sample["image"], sample["target"], sample["meta"]
        height, width = meta["image_size"]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8 and 0 < height <= SIZE >= width > 0
        outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
        outside[:height, :width] = False
        assert (image[:, outside] == torch.tensor(PAD_RGB, dtype=torch.uint8)[:, None]).all()
        boxes, masks = target["boxes"], target["masks"]
        assert masks.shape == (len(boxes), SIZE, SIZE) and len(target["labels"]) == len(boxes)
        assert (boxes[:, 2:] - boxes[:, :2] >= 1).all() and (boxes >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert not masks[:, outside].any()
        for (x0, y0, x1, y1), mask in zip(boxes.tolist(), masks, strict=True):
            inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)  # the box grown by one pixel of slack
            inside[max(0, int(y0) - 1): int(y1) + 2, max(0, int(x0) - 1): int(x1) + 2] = True
            assert not mask[~inside].any()
            nonempty += bool(mask.any())  # a thin object can vanish when shrunk to a tenth
    assert nonempty > 20


def test_lsj_flips_image_boxes_and_masks_together(train_files):
    flip_only = CocoDetection(*train_files, lsj_transform(SIZE, scale_range=(1.0, 1.0)), train=True)
    plain = CocoDetection(*train_files, eval_transform(SIZE), train=True)[1]
    flipped = 0
    for seed in range(8):
        sample = flip_only[(1, seed)]
        assert sample["meta"]["scale"] == 1.0 and sample["meta"]["image_size"] == (SIZE, SIZE)
        expected = dict(plain["target"])
        if not torch.equal(sample["image"], plain["image"]):
            flipped += 1
            assert torch.equal(sample["image"], plain["image"].flip(-1))
            expected["masks"] = expected["masks"].flip(-1)
        expected["boxes"] = tight_boxes(expected["masks"])  # LSJ recomputes the boxes from the masks
        torch.testing.assert_close(sample["target"], expected)
    assert 0 < flipped < 8


def test_lsj_boxes_are_the_tight_boxes_of_the_cropped_masks_and_empty_instances_are_dropped():
    """ViTDet's recompute_boxes: a clipped annotation box overhangs what the crop left of an L-shaped object, and
    holds none of it when the crop misses both arms; the rectangle's annotation box is looser than its mask."""
    image = tv_tensors.Image(torch.zeros(3, 20, 20, dtype=torch.uint8))
    masks = torch.zeros(2, 20, 20, dtype=torch.uint8)
    masks[0, 2, 2:18] = masks[0, 2:18, 2] = 1  # an L: arms along row 2 and column 2
    masks[1, 4:7, 12:16] = 1
    target = {"boxes": tv_tensors.BoundingBoxes([[2.0, 2.0, 18.0, 18.0], [11.5, 3.5, 16.0, 7.5]], format="XYXY",
                                                canvas_size=(20, 20)),
              "labels": torch.tensor([4, 7]), "masks": tv_tensors.Mask(masks)}
    transform = lsj_transform(20, scale_range=(2.0, 2.0))  # x2, then a random 20 x 20 window of the 40 x 40
    counts = set()
    for seed in range(30):
        torch.manual_seed(seed)
        _, out, _ = transform(image, target)
        assert out["masks"].flatten(1).any(dim=1).all()  # no instance without a pixel
        torch.testing.assert_close(out["boxes"], tight_boxes(out["masks"]))
        assert set(out["labels"].tolist()) <= {4, 7} and len(out["labels"]) == len(out["boxes"])
        counts.add(len(out["labels"]))
    assert counts == {0, 1, 2}  # windows that keep both, one and neither


def test_same_seed_same_sample_and_the_global_rng_untouched(lsj_dataset):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = lsj_dataset[(3, 7)]
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(5)
    again = lsj_dataset[(3, 7)]
    assert torch.equal(first["image"], again["image"]) and first["meta"] == again["meta"]
    assert all(torch.equal(first["target"][key], again["target"][key]) for key in first["target"])
    others = [lsj_dataset[(3, seed)] for seed in range(8, 12)]
    assert all(not torch.equal(first["image"], other["image"]) for other in others)
    assert len({other["meta"]["scale"] for other in others}) == 4


def test_collate_and_a_loader_over_seeded_items(lsj_dataset):
    items = [(index, 100 + index) for index in range(4)]
    loader = torch.utils.data.DataLoader(lsj_dataset, batch_size=2, sampler=items, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert [batch["images"].shape for batch in batches] == [(2, 3, SIZE, SIZE)] * 2
    assert all(len(batch["targets"]) == len(batch["metas"]) == 2 for batch in batches)
    expected = lsj_dataset[items[3]]  # the workers produced exactly what this process does
    assert torch.equal(batches[1]["images"][1], expected["image"]) and batches[1]["metas"][1] == expected["meta"]
    torch.testing.assert_close(batches[1]["targets"][1], expected["target"])


def rename_fifth_image(data):
    data["images"][4]["file_name"] = "gone.jpg"


def test_check_files_finds_missing_image_files_at_start_as_an_error_or_left_out(train_files, tmp_path):
    path = variant(train_files, tmp_path, rename_fifth_image)
    with pytest.raises(FileNotFoundError, match=r"gone\.jpg: image file not found \(1 of the 32 images of .*bad\.json"):
        CocoDetection(path, train_files[1], eval_transform(SIZE), train=True, check_files=True)
    dataset = CocoDetection(path, train_files[1], eval_transform(SIZE), train=True, skip_invalid=True,
                            check_files=True)
    assert len(dataset) == 31 and dataset.skipped.value == 1


def test_without_check_files_no_image_file_is_looked_at_during_construction(train_files, monkeypatch):
    """COCO's 118k stats at start take minutes on a network file system: construction reads the json only."""
    image_dir, touched = train_files[1], []
    for name in ("stat", "lstat", "scandir", "listdir"):
        original = getattr(os, name)

        def recording(path=".", *args, _original=original, **kwargs):
            if str(image_dir) in os.fsdecode(path):
                touched.append(path)
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(os, name, recording)
    dataset = CocoDetection(*train_files, eval_transform(SIZE), train=True)
    assert touched == [] and len(dataset) == 32
    CocoDetection(*train_files, eval_transform(SIZE), train=True, check_files=True)
    assert len(touched) == 32  # the recording sees the stats that check_files makes


def test_a_missing_image_file_is_an_error_naming_it_when_read_or_replaced_and_counted(train_files, tmp_path):
    path = variant(train_files, tmp_path, rename_fifth_image)
    gone_id = annotations_json(path)["images"][4]["id"]
    dataset = CocoDetection(path, train_files[1], eval_transform(SIZE), train=True)
    position = dataset.image_ids.index(gone_id)
    with pytest.raises(UnreadableImageError, match=r"train2017/gone\.jpg: image file not found; restore it "
                                                   r"\(data\.check_files=True .*skip_invalid=True"):
        dataset[position]
    skipping = CocoDetection(path, train_files[1], eval_transform(SIZE), train=True, skip_invalid=True)
    reference = CocoDetection(*train_files, eval_transform(SIZE), train=True)
    sample = skipping[(position, 3)]  # replaced by the next image
    assert sample["meta"]["image_id"] == reference.image_ids[position + 1] != gone_id
    assert torch.equal(sample["image"], reference[(position + 1, 3)]["image"])
    assert skipping.skipped.value == 1


BAD_ANNOTATIONS = {
    "zero width": (lambda a: a["bbox"].__setitem__(2, 0), r"has bbox \[[\d., ]+\]; expected \[x, y, width, height\]"),
    "negative height": (lambda a: a["bbox"].__setitem__(3, -2.0), r"has bbox .* with width > 0 and height > 0"),
    "unknown category": (lambda a: a.update(category_id=4), r"has category id 4, not one of the known ids 1, 2, 3, 5"),
    "unknown image": (lambda a: a.update(image_id=9999), r"refers to image id 9999, which is not in 'images'"),
}


@pytest.mark.parametrize("case", list(BAD_ANNOTATIONS))
def test_bad_annotations_name_the_annotation_or_are_dropped(train_files, tmp_path, case):
    edit, message = BAD_ANNOTATIONS[case]
    victim = next(a for a in annotations_json(train_files[0])["annotations"] if not a["iscrowd"])
    path = variant(train_files, tmp_path, lambda data: edit(data["annotations"][data["annotations"].index(victim)]))
    image_id = 9999 if case == "unknown image" else victim["image_id"]
    with pytest.raises(ValueError, match=rf"bad\.json: annotation {victim['id']} \(image {image_id}\) {message}"):
        CocoDetection(path, train_files[1], eval_transform(SIZE), train=True)
    good = CocoDetection(*train_files, eval_transform(SIZE), train=False)
    dataset = CocoDetection(path, train_files[1], eval_transform(SIZE), train=False, skip_invalid=True)
    position = good.image_ids.index(victim["image_id"])
    assert dataset.skipped.value == 1
    assert len(dataset[position]["target"]["labels"]) == len(good[position]["target"]["labels"]) - 1


def test_the_training_log_counts_a_skipped_annotation_as_an_invalid_item_not_an_image(train_files, tmp_path):
    """The dataset's skip counter holds images and annotations alike; the hook's message must not call both images."""
    path = variant(train_files, tmp_path, lambda data: data["annotations"][0].update(category_id=4))
    dataset = CocoDetection(path, train_files[1], eval_transform(SIZE), train=True, skip_invalid=True)
    warnings = []
    SkippedImagesHook(dataset).after_train_epoch(SimpleNamespace(logger=SimpleNamespace(warning=warnings.append)))
    assert warnings == ["1 invalid items (images or annotations) skipped so far (names in the log above)"]


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", r"bad\.json: not a valid JSON file"),
    ('{"images": [], "categories": []}', r"bad\.json: no 'annotations' \(a COCO instances file holds"),
    ("[1, 2]", r"bad\.json: no 'images', 'annotations', 'categories'"),
])
def test_malformed_annotation_files_name_the_file(train_files, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        CocoDetection(path, train_files[1], eval_transform(SIZE), train=True)


@pytest.fixture
def damaged(train_files, tmp_path):
    """A copy of the train images with the first (lowest id) one garbage and the third truncated."""
    folder = shutil.copytree(train_files[1], tmp_path / "train2017")
    names = [image["file_name"] for image in sorted(annotations_json(train_files[0])["images"], key=lambda i: i["id"])]
    (folder / names[0]).write_bytes(b"not an image at all")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), np.uint8)).save(buffer, format="JPEG")
    (folder / names[2]).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return train_files[0], folder, names


def test_unreadable_images_name_the_file(damaged):
    annotation_file, folder, names = damaged
    dataset = CocoDetection(annotation_file, folder, lsj_transform(SIZE), train=True)
    with pytest.raises(UnreadableImageError, match=rf"{names[0]}: unreadable image .*skip_invalid=True"):
        dataset[(0, 1)]
    with pytest.raises(UnreadableImageError, match=rf"{names[2]}: unreadable image \(image file is truncated"):
        dataset[2]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=[0, 1], num_workers=1, collate_fn=collate)
    with pytest.raises(UnreadableImageError, match=names[0]):  # raised again in the main process
        next(iter(loader))


def test_unreadable_images_are_replaced_and_counted_across_workers(damaged, train_files):
    annotation_file, folder, _ = damaged
    dataset = CocoDetection(annotation_file, folder, lsj_transform(SIZE), train=True, skip_invalid=True)
    reference = CocoDetection(*train_files, lsj_transform(SIZE), train=True)
    sample = dataset[(0, 5)]  # replaced by the next image, with the same seed
    assert sample["meta"] == reference[(1, 5)]["meta"] and torch.equal(sample["image"], reference[(1, 5)]["image"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=range(4), collate_fn=collate, num_workers=2)
    assert [meta["image_id"] for batch in loader for meta in batch["metas"]] == [dataset.image_ids[i] for i in
                                                                                   (1, 1, 3, 3)]
    assert dataset.skipped.value == 3  # once here, twice in the loader workers
    assert copy.deepcopy(dataset).skipped is dataset.skipped  # mmengine deep-copies datasets


def test_unreadable_images_are_dropped_from_an_evaluation_not_replaced(damaged):
    annotation_file, folder, _ = damaged
    dataset = CocoDetection(annotation_file, folder, eval_transform(SIZE), train=False, skip_invalid=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=range(4), collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert [batch["dropped_ids"] for batch in batches] == [[dataset.image_ids[0]], [dataset.image_ids[2]]]
    assert [meta["image_id"] for batch in batches for meta in batch["metas"]] == [dataset.image_ids[i] for i in (1, 3)]
    assert dataset.skipped.value == 2


@pytest.mark.parametrize(("shape", "expected"), [((480, 640), (768, 1024)), ((427, 640), (683, 1024)),
                                                 ((640, 427), (1024, 683)), ((333, 500), (682, 1024)),
                                                 ((500, 500), (1024, 1024)), ((5, 2048), (3, 1024))])
def test_test_time_size_is_detectron2s_resize_shortest_edge(shape, expected):
    """Shorter side to 1024, then scaled so the longer is 1024, rounded half up (2.5 -> 3, where round() gives 2)."""
    assert fitted_size(*shape, 1024) == expected


def test_test_images_are_resized_with_pils_bilinear_filter():
    """As detectron2 resizes them; torchvision's uint8 kernel is off by one at some pixels (1,726 of these)."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 427, 640), dtype=torch.uint8, generator=generator)
    image = tv_tensors.Image(pixels)
    boxes = tv_tensors.BoundingBoxes([[2.0, 3.0, 20.0, 25.0]], format="XYXY", canvas_size=(427, 640))
    out, _, meta = eval_transform(1024)(image, {"boxes": boxes, "labels": torch.tensor([0])})
    height, width = meta["image_size"]
    pil = Image.fromarray(pixels.permute(1, 2, 0).numpy()).resize((width, height), Image.BILINEAR)
    assert torch.equal(out[:, :height, :width], torch.from_numpy(np.array(pil)).permute(2, 0, 1))
    tensor_resize = F.resize(pixels, [height, width], antialias=True)  # torchvision's tensor kernel differs
    assert not torch.equal(out[:, :height, :width], tensor_resize)


def test_images_are_read_upright_as_their_exif_orientation_says(tmp_path):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :10] = 255  # a white block at the top left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: show it turned 90 degrees clockwise
    folder = tmp_path / "val2017"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "1.png", exif=exif)
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.png", "height": 30, "width": 20}],
                                       "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    sample = CocoDetection(annotations, folder, eval_transform(30), train=False)[0]
    assert sample["meta"]["orig_size"] == (30, 20)
    upright = np.array(ImageOps.exif_transpose(Image.open(folder / "1.png")))
    assert torch.equal(sample["image"][:, :30, :20], torch.from_numpy(upright).permute(2, 0, 1))
    assert sample["image"][:, :10, 15:20].float().mean() == 255  # the block is now at the top right
