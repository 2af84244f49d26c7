"""ADE20K-layout data through mmseg's pipelines on small synthetic sets: listing, label reduction, sizes, and the
errors that name the bad file."""
import copy
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from PIL import Image

from benchmarks.synthetic import SEMANTIC_CLASSES, synthesize
from engine.images import UnreadableImageError
from seg.data import (
    ADE20K_CLASSES,
    ADE20KLayoutDataset,
    CheckSegLabels,
    build_seg_dataset,
    class_names,
)

SYNTH_CLASSES = SEMANTIC_CLASSES[1:]  # raw 0 is unlabelled; reduce_zero_label makes raw k class k - 1
CROP = 32


def make_synthetic(out_dir: Path) -> Path:
    """Six 64 px scenes (five train, one val); returns the ADE20K root."""
    meta = synthesize(out_dir, 6, 64, seed=0)
    return Path(meta["out_dir"], meta["ade"]["root"])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A synthetic set the tests only read."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture
def own_root(tmp_path):
    """A synthetic set a test may damage."""
    return make_synthetic(tmp_path)


def data_cfg(root: Path, scale=(256, 64), skip_invalid: bool = False) -> dict:
    """(256, 64) rescales 64 px scenes to 32..128 px, so every training crop is a full CROP x CROP."""
    return dict(root=str(root), classes=SYNTH_CLASSES, crop_size=CROP, scale=scale, ratio_range=(0.5, 2.0),
                cat_max_ratio=0.75, reduce_zero_label=True, num_workers=0, skip_invalid=skip_invalid)


def sample(dataset, index: int = 0) -> dict:
    np.random.seed(0)
    random.seed(0)
    return dataset[index]


def reduce_zero_label(raw: np.ndarray) -> np.ndarray:
    """mmseg's reduction written out: raw 0 (unlabelled) and 255 -> 255 (ignore), raw v -> v - 1."""
    return np.where((raw == 0) | (raw == 255), 255, raw.astype(np.int64) - 1)


def read_label(path) -> np.ndarray:
    return np.array(Image.open(path))


def label_path(root: Path, split_folder: str, index: int = 0) -> Path:
    return sorted((root / "annotations" / split_folder).glob("*.png"))[index]


def test_datasets_list_exactly_the_written_files_with_the_given_classes(root):
    records = json.loads((root.parents[1] / "synth_meta.json").read_text())["images"]
    for split in ("train", "val"):
        dataset = build_seg_dataset(data_cfg(root), split)
        listed = [(info["img_path"], info["seg_map_path"]) for info in map(dataset.get_data_info, range(len(dataset)))]
        written = sorted((str(root.parents[1] / r["ade_image"]), str(root.parents[1] / r["ade_label"]))
                         for r in records if r["split"] == split)
        assert listed == written and len(listed) == {"train": 5, "val": 1}[split]
        assert dataset.metainfo["classes"] == SYNTH_CLASSES and len(dataset.metainfo["palette"]) == 10
        assert dataset.label_map is None  # our classes are not ADE20K's, so no remapping of stored ids


def test_without_classes_the_dataset_has_ade20ks_150(root):
    import mmseg.datasets  # here, not at the top: mmseg loads only after seg has put in its stand-in

    assert ADE20K_CLASSES == tuple(mmseg.datasets.ADE20KDataset.METAINFO["classes"]) and len(ADE20K_CLASSES) == 150
    dataset = ADE20KLayoutDataset(root, "val")
    assert dataset.metainfo["classes"] == ADE20K_CLASSES and len(dataset.metainfo["palette"]) == 150
    assert dataset.label_map is None
    assert class_names(dict(classes=None)) == ADE20K_CLASSES
    assert class_names(dict(classes=list(SYNTH_CLASSES))) == SYNTH_CLASSES


def test_a_train_sample_is_a_crop_with_reduced_labels(root):
    dataset = build_seg_dataset(data_cfg(root), "train")
    packed = sample(dataset)
    labels = packed["data_samples"].gt_sem_seg.data
    assert packed["inputs"].shape == (3, CROP, CROP) and str(packed["inputs"].dtype) == "torch.uint8"
    assert labels.shape == (1, CROP, CROP) and str(labels.dtype) == "torch.int64"
    raw_values = np.unique(read_label(dataset.get_data_info(0)["seg_map_path"]))
    possible = set(np.unique(reduce_zero_label(raw_values)).tolist())
    assert set(labels.unique().tolist()) <= possible and possible <= set(range(10)) | {255}


def test_a_val_sample_keeps_its_label_at_the_original_size_and_reduced(root):
    dataset = build_seg_dataset(data_cfg(root, scale=(128, 32)), "val")
    packed = sample(dataset)
    meta = packed["data_samples"].metainfo
    assert packed["inputs"].shape == (3, 32, 32)  # the 64 px image, resized before LoadAnnotations
    assert meta["ori_shape"] == (64, 64) and meta["img_shape"] == (32, 32)
    expected = reduce_zero_label(read_label(dataset.get_data_info(0)["seg_map_path"]))
    assert np.array_equal(packed["data_samples"].gt_sem_seg.data[0].numpy(), expected)
    assert {0, 255} <= set(np.unique(expected).tolist())  # the png had unlabelled pixels and class 1


def test_a_label_value_above_the_classes_fails_naming_the_file(own_root):
    path = label_path(own_root, "training", 2)
    labels = read_label(path)
    labels[0, :4] = (0, 10, 255, 11)  # unlabelled, the last class and ignore pass; 11 is no class
    Image.fromarray(labels).save(path)
    dataset = build_seg_dataset(data_cfg(own_root), "train")
    with pytest.raises(ValueError, match=rf"{re.escape(path.name)} has raw values \[11\].*allowed: 1\.\.10"):
        sample(dataset, 2)


@pytest.mark.parametrize("reduce, raw, allowed", [(True, 11, r"1\.\.10, 0 = unlabelled"), (False, 10, r"0\.\.9")])
def test_the_check_reports_raw_values_and_range_with_and_without_reduction(reduce, raw, allowed):
    loaded = raw - 1 if reduce else raw
    labels = np.array([[0, 9, 255, loaded]], dtype=np.uint8)
    results = dict(gt_seg_map=labels, ori_shape=(1, 4), img_path="a.jpg", seg_map_path="a.png")
    with pytest.raises(ValueError, match=rf"a\.png has raw values \[{raw}\].*allowed: {allowed}"):
        CheckSegLabels(10, reduce)(results)


def test_the_check_counts_label_values_instead_of_sorting_them(monkeypatch):
    """np.unique sorts every pixel of every image (ADE20K's nearly all have ignored ones, so the cheap max test
    does not skip it); the values are counted in one pass instead, and every bad one is still reported."""
    def fail(*args, **kwargs):
        raise AssertionError("np.unique sorts the whole label map")

    monkeypatch.setattr(np, "unique", fail)
    labels = np.array([[0, 9, 255, 12, 200, 12, 10]], dtype=np.uint8)
    results = dict(gt_seg_map=labels, ori_shape=(1, 7), img_path="a.jpg", seg_map_path="a.png")
    with pytest.raises(ValueError, match=r"a\.png has raw values \[11, 13, 201\] outside the 10 classes"):
        CheckSegLabels(10, True)(results)
    good = dict(results, gt_seg_map=np.array([[0, 9, 255, 3, 3, 1, 2]], dtype=np.uint8))
    assert CheckSegLabels(10, True)(good) is good


def test_the_check_passes_every_class_and_ignore():
    labels = np.array([[*range(10), 255]], dtype=np.uint8)
    results = dict(gt_seg_map=labels, ori_shape=(1, 11), img_path="a.jpg", seg_map_path="a.png")
    assert CheckSegLabels(10, True)(results) is results


def test_an_image_without_a_label_png_fails_at_listing(own_root):
    path = label_path(own_root, "training", 1)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(path.name)}: label png not found .*1 of 5"):
        build_seg_dataset(data_cfg(own_root), "train")


def test_a_missing_or_empty_split_folder_fails_naming_it(own_root):
    with pytest.raises(FileNotFoundError, match=r"nowhere/images/training: split folder not found"):
        build_seg_dataset(data_cfg(own_root / "nowhere"), "train")
    for image in (own_root / "images" / "validation").glob("*.jpg"):
        image.unlink()
    with pytest.raises(FileNotFoundError, match=r"images/validation: no \.jpg images"):
        build_seg_dataset(data_cfg(own_root), "val")
    with pytest.raises(ValueError, match="split must be one of"):
        ADE20KLayoutDataset(own_root, "test")


@pytest.mark.parametrize("split, folder, size", [("train", "training", 48), ("val", "validation", 32)])
def test_a_label_of_another_size_fails_naming_both_files(own_root, split, folder, size):
    """In val the image is resized to 32 px before the label loads: a 32 px label must still fail, because the
    check compares with the image as loaded."""
    path = label_path(own_root, folder)
    Image.fromarray(read_label(path)[:size, :size]).save(path)
    dataset = build_seg_dataset(data_cfg(own_root, scale=(128, 32)), split)
    image_name = re.escape(path.with_suffix(".jpg").name)
    with pytest.raises(ValueError, match=rf"{re.escape(path.name)} is {size}x{size} .*{image_name} is 64x64"):
        sample(dataset)


def image_path(root: Path, split_folder: str, index: int = 0) -> Path:
    return sorted((root / "images" / split_folder).glob("*.jpg"))[index]


@pytest.mark.parametrize("content", [b"", b"not an image"])  # cv2 raises on the empty file, returns None on the other
def test_an_unreadable_image_fails_naming_the_file_also_in_a_loader_worker(own_root, content):
    path = image_path(own_root, "training", 1)
    path.write_bytes(content)
    dataset = build_seg_dataset(data_cfg(own_root), "train")
    message = rf"{re.escape(str(path))}: unreadable image \(.+\); replace or remove it, or set data.skip_invalid=True"
    with pytest.raises(UnreadableImageError, match=message):
        sample(dataset, 1)
    loader = torch.utils.data.DataLoader(dataset, sampler=[1], num_workers=1, collate_fn=pseudo_collate)
    with pytest.raises(UnreadableImageError, match=re.escape(str(path))):  # raised again in the main process
        next(iter(loader))


def test_an_unreadable_label_png_fails_naming_it_and_evaluation_never_skips(own_root):
    path = label_path(own_root, "validation")
    path.write_bytes(b"")
    dataset = build_seg_dataset(data_cfg(own_root, skip_invalid=True), "val")
    with pytest.raises(UnreadableImageError, match=rf"{re.escape(str(path))}: unreadable label png .*does not apply"):
        sample(dataset)
    assert dataset.skipped.value == 0


def test_with_skip_invalid_training_takes_the_next_sample_and_counts_across_workers(own_root):
    image_path(own_root, "training", 1).write_bytes(b"")
    label_path(own_root, "training", 3).write_bytes(b"")
    dataset = build_seg_dataset(data_cfg(own_root, skip_invalid=True), "train")
    reference = build_seg_dataset(data_cfg(make_synthetic(own_root.parents[1] / "intact")), "train")
    replaced, expected = dataset[(1, 7)], reference[(2, 7)]  # the next sample, with the same seed
    assert replaced["data_samples"].img_path.endswith(Path(expected["data_samples"].img_path).name)
    assert torch.equal(replaced["inputs"], expected["inputs"])
    assert dataset.skipped.value == 1
    loader = torch.utils.data.DataLoader(dataset, sampler=[3, 4], num_workers=1, collate_fn=pseudo_collate)
    names = [Path(item.img_path).stem for batch in loader for item in batch["data_samples"]]
    assert names == [image_path(own_root, "training", 4).stem] * 2
    assert dataset.skipped.value == 2  # counted in the worker too
    assert copy.deepcopy(dataset).skipped is dataset.skipped  # mmengine deep-copies datasets
