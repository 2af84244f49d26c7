"""Data for benchmarks/data_scale.py: an ImageNet-size tree of empty files, a COCO-train-size instances json, and
small sets of JPEGs as large and as textured as the real datasets' (ImageNet, COCO, ADE20K layouts).

Everything here depends only on its arguments and seed; the big generators print a line every ~10%.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

# COCO's 80 category ids: 1..90 less the ten ids its paper lists but its files never use
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
COCO_SIZE = (640, 480)  # width, height: COCO's most common image size
IMAGENET_SIZE = (500, 375)  # ImageNet's most common image size
ADE_SIZE = (683, 512)  # a typical ADE20K training image
POLYGON_POINTS = (12, 32)  # points per polygon, both included: 22 on average gives COCO train's ~450 MB json
CHUNK = 20_000  # annotations rendered to json at a time: the file never sits in memory as Python objects
Log = Callable[[str], None]


def class_name(index: int) -> str:
    """A synthetic WordNet id in ImageNet's form, n01440764 for the first."""
    return f"n{1440764 + index:08d}"


def files_per_class(classes: int, files: int) -> list[int]:
    """`files` spread over `classes` as evenly as whole numbers allow (ImageNet's 1,281,167 over 1,000)."""
    base, extra = divmod(files, classes)
    return [base + (index < extra) for index in range(classes)]


def tree_counts(root: Path) -> tuple[int, int]:
    """(class folders, files in them) of an ImageNet-layout split; other entries of `root` (e.g. a cache) are
    not counted."""
    folders = [entry.path for entry in os.scandir(root) if entry.is_dir()] if root.is_dir() else []
    return len(folders), sum(len(os.listdir(folder)) for folder in folders)


def empty_imagenet_tree(root: Path, classes: int, files: int, log: Log = print) -> bool:
    """Folders n01440764/... under `root` holding `files` empty files named like ImageNet's (n01440764_10026.JPEG);
    False if `root` already holds exactly that many, which are then kept."""
    if tree_counts(root) == (classes, files):
        return False
    done, step = 0, max(files // 10, 1)
    for index, count in enumerate(files_per_class(classes, files)):
        folder = root / class_name(index)
        folder.mkdir(parents=True, exist_ok=True)
        touch_all(folder, [f"{folder.name}_{number}.JPEG" for number in range(1, count + 1)])
        if (done + count) // step > done // step:
            log(f"  {done + count:,} / {files:,} files")
        done += count
    return True


def touch_all(folder: Path, names: list[str]) -> None:
    """Create each file empty (an existing one is left as it is): one open and close per file, nothing more."""
    for name in names:
        os.close(os.open(folder / name, os.O_WRONLY | os.O_CREAT, 0o644))


def coco_file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def write_coco_instances(path: Path, images: int, annotations: int, seed: int, log: Log = print) -> list[dict]:
    """A COCO instances json with `images` images of 640x480 (sparse ids, as COCO's) and `annotations` polygon
    annotations over COCO's 80 category ids, written in chunks; returns the image records."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(5 * images, images, replace=False)) + 1
    records = [image_record(int(image_id)) for image_id in ids]
    image_of = rng.integers(0, images, annotations)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        file.write('{"info": {"description": "droppos-bench data_scale: COCO 2017 train at full size", "year": 2017}, '
                   '"licenses": [{"id": 1, "name": "CC0 1.0", "url": ""}], "images": ')
        json.dump(records, file)
        file.write(', "annotations": [')
        step = max(annotations // 10, 1)
        for start in range(0, annotations, CHUNK):
            chunk = annotation_records(rng, ids[image_of[start:start + CHUNK]], first_id=start + 1)
            file.write((", " if start else "") + json.dumps(chunk)[1:-1])
            end = min(start + CHUNK, annotations)
            if end // step > start // step or end == annotations:
                log(f"  {end:,} / {annotations:,} annotations")
        categories = [{"supercategory": "thing", "id": i, "name": f"category_{i}"} for i in COCO_CATEGORY_IDS]
        file.write(f'], "categories": {json.dumps(categories)}}}')
    return records


def image_record(image_id: int) -> dict:
    """An image entry with the fields (and so about the bytes) of COCO's own."""
    name = coco_file_name(image_id)
    return {"license": 1, "file_name": name, "coco_url": f"http://images.cocodataset.org/train2017/{name}",
            "height": COCO_SIZE[1], "width": COCO_SIZE[0], "date_captured": "2013-11-14 11:18:45",
            "flickr_url": f"http://farm1.staticflickr.com/1/{image_id}_0123456789_z.jpg", "id": image_id}


def annotation_records(rng: np.random.Generator, image_ids: np.ndarray, first_id: int) -> list[dict]:
    """One star-shaped polygon per image id (12-32 points inside the image), with its bbox and area."""
    count, most = len(image_ids), POLYGON_POINTS[1]
    points = rng.integers(POLYGON_POINTS[0], most + 1, count)
    radius = np.exp(rng.uniform(np.log(4), np.log(150), count))  # small objects outnumber large ones, as in COCO
    center = rng.uniform(radius[:, None], np.array(COCO_SIZE) - radius[:, None])
    angles = np.sort(rng.uniform(0, 2 * np.pi, (count, most)), axis=1)
    reach = radius[:, None] * rng.uniform(0.6, 1.0, (count, most))
    xy = np.round(center[:, None, :] + reach[..., None] * np.stack([np.cos(angles), np.sin(angles)], -1), 2)
    categories = rng.choice(COCO_CATEGORY_IDS, count)
    records = []
    for i in range(count):
        polygon = xy[i, :points[i]]
        low, high = polygon.min(0), polygon.max(0)
        x, y = polygon[:, 0], polygon[:, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        records.append({"segmentation": [polygon.ravel().tolist()], "area": round(float(area), 4), "iscrowd": 0,
                        "image_id": int(image_ids[i]), "bbox": np.round([*low, *(high - low)], 2).tolist(),
                        "category_id": int(categories[i]), "id": first_id + i})
    return records


def textured_jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG (quality 90) of smooth random fields at three scales plus grain: about as many bytes as a photo of
    that size (110 KB at 500x375, ImageNet's mean), so decoding costs what a real image's does."""
    pixels = 128 + sum(weight * _smooth_field(rng, width, height, cell)
                       for weight, cell in ((0.6, 96), (0.3, 24), (0.2, 3)))
    pixels = pixels + rng.normal(0, rng.uniform(14, 24), (height, width, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _smooth_field(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """Random values on a grid of `cell` px, bicubic-interpolated to the image, centred on 0 (-128..127)."""
    grid = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32) - 128


def rate_data(root: Path, images: int, seed: int) -> dict[str, float]:
    """`images` textured JPEGs in each layout under `root` (imagenet/train/<class>/, coco/ with 7 polygons per
    image, ade/ with label pngs); kept when a finished set of that count is there. Returns the mean JPEG size (KB)
    of each layout."""
    done = root / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("images") == images:
        return json.loads(done.read_text())["mean_kb"]
    rng = np.random.default_rng(seed)
    sizes = {layout: list(writer(root, images, rng)) for layout, writer in
             (("imagenet", imagenet_jpegs), ("coco", _coco_jpegs), ("ade", _ade_jpegs))}
    mean_kb = {layout: float(np.mean(numbers)) / 1000 for layout, numbers in sizes.items()}
    done.write_text(json.dumps({"images": images, "mean_kb": mean_kb}))
    return mean_kb


def imagenet_jpegs(root: Path, images: int, rng: np.random.Generator) -> Iterator[int]:
    """ImageNet-like textured JPEGs (500 x 375) in 10 class folders of root/imagenet/train/; yields their sizes."""
    for index in range(images):
        folder = root / "imagenet" / "train" / class_name(index % 10)
        folder.mkdir(parents=True, exist_ok=True)
        yield (folder / f"{folder.name}_{index}.JPEG").write_bytes(textured_jpeg(rng, *IMAGENET_SIZE))


def _coco_jpegs(root: Path, images: int, rng: np.random.Generator) -> Iterator[int]:
    records = write_coco_instances(root / "coco" / "annotations" / "instances_train2017.json", images, 7 * images,
                                   seed=int(rng.integers(2**31)), log=lambda line: None)
    folder = root / "coco" / "train2017"
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        yield (folder / record["file_name"]).write_bytes(textured_jpeg(rng, *COCO_SIZE))


def _ade_jpegs(root: Path, images: int, rng: np.random.Generator) -> Iterator[int]:
    """Images with label pngs of a few regions of ADE20K classes (raw values 1..150, 0 unlabelled)."""
    base = root / "ade" / "ADEChallengeData2016"
    for folder in ("images", "annotations"):
        (base / folder / "training").mkdir(parents=True, exist_ok=True)
    for index in range(images):
        stem = f"ADE_train_{index + 1:08d}"
        levels = np.digitize(_smooth_field(rng, *ADE_SIZE, cell=128)[..., 0], [-60, -20, 20, 60])
        labels = rng.choice(151, 5, replace=False).astype(np.uint8)[levels]
        Image.fromarray(labels).save(base / "annotations" / "training" / f"{stem}.png")
        yield (base / "images" / "training" / f"{stem}.jpg").write_bytes(textured_jpeg(rng, *ADE_SIZE))
