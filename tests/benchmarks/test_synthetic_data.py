"""The synthetic dataset: determinism, scene structure, and that the real loaders read all three layouts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO as FasterCOCO
from PIL import Image
from pycocotools import mask as mask_api
from pycocotools.coco import COCO
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.transforms.functional import to_tensor

from benchmarks.synthetic import (
    COCO_CATEGORY_IDS,
    GROUND_ID,
    IGNORE_ID,
    META_FILE,
    OBJECT_CLASSES,
    SEMANTIC_CLASSES,
    SKY_ID,
    render_scene,
    synthesize,
    validation_indices,
)
from benchmarks.synthetic.layouts import pixel_outline, segmentation_rle, uncompressed_rle
from benchmarks.synthetic.ramps import write_ramp_images
from benchmarks.synthetic.scenes import FIRST_OBJECT_ID
from engine.images import eval_transform

NUM_IMAGES, SIZE, SEED = 24, 64, 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = synthesize(root, NUM_IMAGES, SIZE, SEED)
    return root, summary


@pytest.fixture(scope="module")
def meta(dataset: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    return json.loads((dataset[0] / META_FILE).read_text())


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def coco_files(root: Path) -> list[Path]:
    return sorted((root / "coco" / "annotations").glob("instances_*2017.json"))


# --- determinism ---------------------------------------------------------------------------------

def test_same_seed_gives_identical_files(dataset, tmp_path):
    root, _ = dataset
    synthesize(tmp_path / "again", NUM_IMAGES, SIZE, SEED)
    hashes = file_hashes(root)
    assert file_hashes(tmp_path / "again") == hashes
    assert not [p for p in hashes if Path(p).name.startswith(".")], "temporary files left behind"


def test_different_seed_gives_different_images(dataset, tmp_path):
    root, _ = dataset
    synthesize(tmp_path / "other", NUM_IMAGES, SIZE, SEED + 1)
    ours, theirs = file_hashes(root), file_hashes(tmp_path / "other")
    jpegs = [p for p in ours if p.startswith("coco/") and p.endswith(".jpg")]
    assert len(jpegs) == NUM_IMAGES
    assert all(ours[p] != theirs[p] for p in jpegs)


def test_images_are_linked_not_reencoded(meta, dataset):
    root, _ = dataset
    for record in meta["images"]:
        coco = (root / record["coco"]).read_bytes()
        assert (root / record["imagenet"]).read_bytes() == coco == (root / record["ade_image"]).read_bytes()


# --- COCO ----------------------------------------------------------------------------------------

def test_coco_loads_with_both_apis(dataset):
    root, _ = dataset
    files = coco_files(root)
    assert [f.name for f in files] == ["instances_train2017.json", "instances_val2017.json"]
    for path in files:
        ours, faster = COCO(str(path)), FasterCOCO(str(path))
        assert ours.getAnnIds() and sorted(faster.getAnnIds()) == sorted(ours.getAnnIds())
        for ann_id, ann in ours.anns.items():
            assert np.array_equal(faster.annToMask(faster.anns[ann_id]), ours.annToMask(ann))


def test_coco_masks_agree_with_area_and_bbox(dataset):
    root, _ = dataset
    for path in coco_files(root):
        coco = COCO(str(path))
        for ann in coco.anns.values():
            mask = coco.annToMask(ann)
            rows, cols = np.nonzero(mask)
            assert rows.size > 0 and mask.sum() == ann["area"]
            x0, y0 = cols.min(), rows.min()
            assert ann["bbox"] == [x0, y0, cols.max() - x0 + 1, rows.max() - y0 + 1]


def test_coco_has_polygons_rle_and_crowds(dataset):
    root, _ = dataset
    kinds = []
    for path in coco_files(root):
        for ann in json.loads(path.read_text())["annotations"]:
            segmentation = ann["segmentation"]
            if ann["iscrowd"]:
                kinds.append("crowd")
                assert isinstance(segmentation["counts"], list)
            elif isinstance(segmentation, list):
                kinds.append("polygon")
                assert len(segmentation) == 1 and len(segmentation[0]) >= 6
            else:
                kinds.append("rle")
                assert isinstance(segmentation["counts"], str)
    assert {"crowd", "polygon", "rle"} <= set(kinds)
    assert kinds.count("polygon") > len(kinds) / 2


def test_coco_images_and_categories(dataset):
    root, _ = dataset
    for path in coco_files(root):
        data = json.loads(path.read_text())
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(data)
        declared = [c["id"] for c in data["categories"]]
        assert declared == list(COCO_CATEGORY_IDS) and declared != list(range(1, len(declared) + 1))
        assert {a["category_id"] for a in data["annotations"]} <= set(declared)
        image_dir = root / "coco" / path.stem.removeprefix("instances_")
        for image in data["images"]:
            assert image["file_name"] == f"{image['id']:012d}.jpg"
            with Image.open(image_dir / image["file_name"]) as jpeg:
                assert jpeg.size == (image["width"], image["height"]) == (SIZE, SIZE)


# --- ADE20K --------------------------------------------------------------------------------------

def test_ade_labels(meta, dataset):
    root, _ = dataset
    declared = {label["id"] for label in meta["ade"]["labels"]}
    assert declared == set(range(len(SEMANTIC_CLASSES)))
    top, bottom, seen = [], [], set()
    for record in meta["images"]:
        with Image.open(root / record["ade_label"]) as png, Image.open(root / record["ade_image"]) as jpeg:
            assert png.mode == "L" and png.size == jpeg.size
            labels = np.asarray(png)
        seen |= set(np.unique(labels).tolist())
        rows = SIZE // 10
        top.append(np.mean(labels[:rows] == SKY_ID))
        bottom.append(np.mean(labels[-rows:] == GROUND_ID))
    assert seen <= declared and IGNORE_ID in seen
    assert np.mean(top) > 0.8 and np.mean(bottom) > 0.8


# --- ImageNet ------------------------------------------------------------------------------------

def test_imagenet_folders(meta, dataset):
    root, _ = dataset
    total = 0
    for split in ("train", "val"):
        folder = ImageFolder(str(root / "imagenet" / split), allow_empty=True)
        assert folder.classes == list(OBJECT_CLASSES)  # same indices in both splits, whatever N is
        expected = {Path(r["imagenet"]).name: r["class"] for r in meta["images"] if r["split"] == split}
        assert {Path(p).name: folder.classes[i] for p, i in folder.samples} == expected
        assert len(folder) == meta["splits"][split]
        total += len(folder)
    assert total == NUM_IMAGES and meta["splits"]["val"] == len(validation_indices(NUM_IMAGES, 0.2))


# --- scene structure -----------------------------------------------------------------------------

@pytest.mark.parametrize("index", range(12))
def test_scene_structure(index):
    scene = render_scene(SEED, index, SIZE)
    assert scene.image.shape == (SIZE, SIZE, 3) and scene.image.dtype == np.uint8
    objects = [i for i in scene.instances if not i.iscrowd]
    largest = max(objects, key=lambda i: int(i.mask.sum()))
    assert scene.image_class == largest.category
    coverage = sum(i.mask.astype(int) for i in scene.instances)
    assert coverage.max() <= 1, "visible masks overlap"
    for instance in scene.instances:
        assert instance.mask.sum() >= 0.003 * SIZE * SIZE
        assert np.all(scene.labels[instance.mask] == FIRST_OBJECT_ID + instance.category)
        if instance.polygon is not None:
            decoded = mask_api.decode(segmentation_rle([instance.polygon], SIZE, SIZE)).astype(bool)
            assert np.array_equal(decoded, instance.mask)
    rows = SIZE // 10
    sky, ground = scene.image[:rows].reshape(-1, 3).mean(0), scene.image[-rows:].reshape(-1, 3).mean(0)
    assert np.linalg.norm(sky - ground) > 20


def test_pixel_outline_round_trips_simple_masks_only():
    mask = np.zeros((12, 12), dtype=bool)
    mask[2:8, 2:4] = mask[6:8, 2:9] = True  # an L
    assert pixel_outline(mask) == [2.0, 2.0, 4.0, 2.0, 4.0, 6.0, 9.0, 6.0, 9.0, 8.0, 2.0, 8.0]
    holed = mask.copy()
    holed[2:5, 2:4] = True
    holed[3, 2:4] = False  # cut the L into two pieces
    assert pixel_outline(holed) is None
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert pixel_outline(ring) is None


def test_uncompressed_rle_round_trips():
    rng = np.random.default_rng(0)
    for first in (False, True):
        mask = rng.random((7, 5)) < 0.4
        mask[0, 0] = first
        decoded = mask_api.decode(segmentation_rle(uncompressed_rle(mask), 7, 5))
        assert np.array_equal(decoded.astype(bool), mask)


# --- arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"size": 50}, ValueError, "size.*50"),
    ({"size": 16}, ValueError, "size.*16"),
    ({"num_images": 0}, ValueError, "num_images.*0"),
    ({"seed": -1}, ValueError, "seed.*-1"),
    ({"val_fraction": 1.0}, ValueError, "val_fraction.*1.0"),
    ({"size": 64.0}, TypeError, "size.*64.0"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, error, text):
    arguments = {"out_dir": tmp_path / "out", "num_images": 2, "size": 32, "seed": 0, **kwargs}
    with pytest.raises(error, match=text):
        synthesize(**arguments)
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_dir_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        synthesize(tmp_path, 2, 32, 0)
    synthesize(tmp_path, 2, 32, 0, overwrite=True)
    stale = tmp_path / "imagenet" / "train" / "stale.JPEG"
    stale.write_bytes(b"")
    summary = synthesize(tmp_path, 3, 32, 0, overwrite=True)
    assert not stale.exists() and (tmp_path / "notes.txt").read_text() == "keep me"
    assert summary["num_images"] == 3 and sum(summary["splits"].values()) == 3


@pytest.mark.parametrize(("num_images", "count"), [(1, 0), (2, 1), (5, 1), (24, 5), (100, 20)])
def test_validation_split_size(num_images, count):
    indices = validation_indices(num_images, 0.2)
    assert len(indices) == len(set(indices)) == count
    assert all(0 <= i < num_images for i in indices)


@pytest.mark.parametrize("eval_aligned", [True, False])
def test_eval_aligned_ramps_are_cropped_to_their_grid(tmp_path, eval_aligned):
    """An eval-aligned ramp image passes the evaluation transform as exactly its 4 x 4 grid of flat cells (every
    16 px patch one cell), the plain image does not: its crop cuts the cells."""
    for name, aligned in (("plain", False), ("tested", eval_aligned)):
        write_ramp_images(tmp_path / name, 1, np.random.default_rng(0), noise=0.0, eval_aligned=aligned)
    grid = to_tensor(Image.open(tmp_path / "plain" / "00000.png"))
    seen = eval_transform(64).transforms[0:2]
    crop = to_tensor(transforms.Compose(seen)(Image.open(tmp_path / "tested" / "00000.png")))
    assert crop.shape == grid.shape == (3, 64, 64)
    assert torch.equal(crop, grid) is eval_aligned
    patches = crop.unfold(1, 16, 16).unfold(2, 16, 16).flatten(-2)  # [3, 4, 4, 256]
    assert (patches.amax(-1) == patches.amin(-1)).all().item() is eval_aligned
