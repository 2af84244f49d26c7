"""The packed ImageNet-layout index: ImageFolder's files, order and classes; cached while the folders are unchanged;
and the pre-training input path (uint8 tensors, normalised on the device) equal to torchvision's float pipeline."""
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from engine.folder_index import FolderIndex, cache_dir, folder_index
from engine.images import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    UnreadableImageError,
    decode_tensor,
    image_folder,
    normalize_on_device,
    pretrain_transform,
)


def write_image(path, seed=0, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def split(tmp_path):
    """Two classes, a nested sub-folder, a file that is not an image, and names that sort differently by case."""
    root = tmp_path / "train"
    for i, name in enumerate(["b/Z.png", "b/a.JPEG", "b/sub/c.jpg", "a/x.jpeg", "a/y.PNG"]):
        write_image(root / name, seed=i)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "c").mkdir()  # a class folder without images
    return root


def settle(root, seconds_ago=60):
    """Date the split and class folders in the past, as an unchanged dataset's are."""
    stamp = time.time() - seconds_ago
    for folder in [root, *(p for p in root.iterdir() if p.is_dir())]:
        os.utime(folder, (stamp, stamp))


def test_index_lists_what_imagefolder_lists(split):
    reference = ImageFolder(str(split), allow_empty=True)
    index, nested = FolderIndex.scan(split)
    assert nested and index.classes == reference.classes == ["a", "b", "c"]
    assert [(index.path(i), int(index.targets[i])) for i in range(len(index))] == reference.samples
    dataset = image_folder(split.parent, "train", transform=None)
    assert len(dataset) == len(reference)
    for i in range(len(dataset)):
        (image, target), (expected, expected_target) = dataset[i], reference[i]
        assert np.array_equal(np.asarray(image), np.asarray(expected)) and target == expected_target


def test_index_is_cached_while_the_folders_are_unchanged(split, monkeypatch):
    (split / "b" / "sub" / "c.jpg").unlink()  # no nested folders' files: cacheable
    (split / "b" / "sub").rmdir()
    settle(split)
    first = folder_index(split)
    assert len(list(cache_dir().glob("folder-index-*.npz"))) >= 1

    def no_scan(root):
        raise AssertionError("scanned although the cache was valid")

    monkeypatch.setattr(FolderIndex, "scan", no_scan)
    again = folder_index(split)
    assert [again.path(i) for i in range(len(again))] == [first.path(i) for i in range(len(first))]
    assert again.classes == first.classes and np.array_equal(again.targets, first.targets)
    monkeypatch.undo()
    write_image(split / "a" / "z.jpg", seed=9)  # a new file changes its folder's time: scanned again
    settle(split, seconds_ago=30)
    assert len(folder_index(split)) == len(first) + 1


def test_recently_changed_or_nested_folders_are_not_cached(split):
    before = set(cache_dir().glob("folder-index-*.npz"))
    folder_index(split)  # just written, and nested
    settle(split)
    folder_index(split)  # settled, but nested: a file added in b/sub would not change a cached key
    assert set(cache_dir().glob("folder-index-*.npz")) == before


def test_an_unreadable_cache_is_scanned_again(split, caplog):
    (split / "b" / "sub" / "c.jpg").unlink()
    (split / "b" / "sub").rmdir()
    settle(split)
    index = folder_index(split)
    for cached in cache_dir().glob("folder-index-*.npz"):
        cached.write_bytes(b"garbage")
    assert len(folder_index(split)) == len(index)


def test_uint8_pipeline_normalised_on_the_device_equals_the_float_pipeline(tmp_path):
    write_image(tmp_path / "image.png", size=(40, 30))
    image = decode_tensor(str(tmp_path / "image.png"))
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    torch.manual_seed(3)
    as_uint8 = pretrain_transform(16, normalize=False)(image)
    torch.manual_seed(3)
    as_float = pretrain_transform(16)(image)
    assert as_uint8.dtype == torch.uint8 and type(as_uint8) is torch.Tensor
    assert torch.equal(normalize_on_device(as_uint8[None]), as_float[None])
    reference = transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(transforms.ToTensor()(
        transforms.functional.to_pil_image(as_uint8)))
    assert torch.equal(normalize_on_device(as_uint8), reference)  # what torchvision's float pipeline makes
    assert normalize_on_device(as_float) is as_float


def test_crop_geometry_is_the_same_from_a_pil_image_and_from_a_tensor(tmp_path):
    write_image(tmp_path / "image.png", size=(40, 30))
    pil = Image.open(tmp_path / "image.png").convert("RGB")
    torch.manual_seed(5)
    from_pil = pretrain_transform(16, normalize=False)(pil)
    torch.manual_seed(5)
    from_tensor = pretrain_transform(16, normalize=False)(decode_tensor(str(tmp_path / "image.png")))
    assert torch.equal(from_pil, from_tensor)


def test_a_broken_file_is_named_on_the_tensor_path_too(split):
    broken = split / "a" / "x.jpeg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = image_folder(split.parent, "train", pretrain_transform(8), decode=decode_tensor)
    with pytest.raises(UnreadableImageError, match=f"{broken}: unreadable image"):
        dataset[0]


def test_tensor_decoding_gives_pils_pixels_for_every_kind_of_file(tmp_path):
    """JPEGs through simplejpeg, the rest (a PNG called .JPEG, as ImageNet has one, CMYK and grayscale JPEGs) through
    PIL: every time the RGB pixels PIL decodes."""
    pixels = np.random.default_rng(1).integers(0, 255, (30, 40, 3), np.uint8)
    files = {"rgb.JPEG": ("RGB", "JPEG"), "png.JPEG": ("RGB", "PNG"), "cmyk.JPEG": ("CMYK", "JPEG"),
             "gray.JPEG": ("L", "JPEG")}
    for name, (mode, fmt) in files.items():
        Image.fromarray(pixels).convert(mode).save(tmp_path / name, format=fmt, quality=90)
        expected = torch.from_numpy(np.array(Image.open(tmp_path / name).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(decode_tensor(str(tmp_path / name)), expected), name


def test_a_truncated_jpeg_is_named_on_the_tensor_path(split):
    whole = split / "a" / "x.jpeg"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), np.uint8)).save(whole, format="JPEG")
    whole.write_bytes(whole.read_bytes()[:400])
    dataset = image_folder(split.parent, "train", pretrain_transform(8), decode=decode_tensor)
    with pytest.raises(UnreadableImageError, match=f"{whole}: unreadable image"):
        dataset[0]
