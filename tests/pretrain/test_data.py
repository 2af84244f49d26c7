"""ImageNet-layout folders: bad input gives errors that name the file or folder, or is skipped and counted."""
import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.images import UnreadableImageError, eval_transform, image_folder


def write_jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(path, format="JPEG")


@pytest.fixture
def folder(tmp_path):
    for split in ("train", "val"):
        for name, value in (("a", 40), ("b", 200)):
            for k in range(2):
                write_jpeg(tmp_path / split / name / f"{name}{k}.JPEG", value + k)
    return tmp_path


def test_empty_class_folder_is_an_error_only_where_every_class_is_needed(folder):
    (folder / "train" / "c").mkdir()
    with pytest.raises(ValueError, match=r"train: class folders without images: c"):
        image_folder(folder, "train", eval_transform(32), every_class=True)
    dataset = image_folder(folder, "train", eval_transform(32))  # pre-training ignores classes
    assert dataset.classes == ["a", "b", "c"] and len(dataset) == 4


def test_unreadable_images_name_the_file(folder):
    garbage = folder / "train" / "a" / "a1.JPEG"
    garbage.write_bytes(b"not an image at all")
    dataset = image_folder(folder, "train", eval_transform(32))
    with pytest.raises(UnreadableImageError, match=r"a1\.JPEG: unreadable image .*data\.skip_invalid=True"):
        dataset[1]
    truncated = folder / "train" / "b" / "b0.JPEG"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, format="JPEG")
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UnreadableImageError, match=r"b0\.JPEG: unreadable image \(image file is truncated"):
        dataset[2]
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1)
    with pytest.raises(UnreadableImageError, match=r"a1\.JPEG"):  # raised again in the main process
        next(iter(loader))


def test_skipped_images_are_replaced_and_counted_across_workers(folder):
    (folder / "train" / "a" / "a1.JPEG").write_bytes(b"GIF89a broken")
    dataset = image_folder(folder, "train", eval_transform(32), skip_invalid=True)
    image, label = dataset[1]  # a1 is replaced by the next sample, b0
    reference, _ = image_folder(folder, "train", eval_transform(32))[2]
    assert label == 1 and torch.equal(image, reference)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    assert sum(len(labels) for _, labels in loader) == 4
    assert dataset.skipped.value == 2  # once here, once in a loader worker
    assert copy.deepcopy(dataset).skipped is dataset.skipped  # mmengine deep-copies datasets
