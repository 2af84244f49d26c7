"""The data-scale benchmark at toy sizes (--quick): it generates exactly what it says, and every printed figure is
the arithmetic of what it measured."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.data_scale import QUICK
from benchmarks.data_scale_gen import COCO_CATEGORY_IDS, COCO_SIZE, POLYGON_POINTS, empty_imagenet_tree, tree_counts

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"(-?[\d,]+(?:\.\d+)?)"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Every part once at toy sizes; (scratch folder, printed lines)."""
    scratch = tmp_path_factory.mktemp("scale")
    command = [sys.executable, "-m", "benchmarks.data_scale", "--quick", "--root", str(scratch / "imagenet" / "train"),
               "--coco-root", str(scratch / "coco"), "--rate-root", str(scratch / "rate"), "--check-files"]
    done = subprocess.run(command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return scratch, done.stdout


def figures(output, pattern):
    """The numbers of the one line matching `pattern` (its groups), as floats."""
    matches = re.findall(pattern, output, flags=re.MULTILINE)
    assert len(matches) == 1, (pattern, output)
    groups = matches[0] if isinstance(matches[0], tuple) else (matches[0],)
    return [float(group.replace(",", "")) for group in groups]


def test_the_tree_holds_exactly_the_requested_folders_and_empty_files(run):
    scratch, output = run
    root = scratch / "imagenet" / "train"
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    assert tree_counts(root) == (QUICK.classes, QUICK.files) == (len(folders), QUICK.files)
    assert all(re.fullmatch(r"n\d{8}", folder.name) for folder in folders)
    files = [path for folder in folders for path in folder.iterdir()]
    assert all(re.fullmatch(rf"{path.parent.name}_\d+\.JPEG", path.name) and path.stat().st_size == 0
               for path in files)
    assert {len(list(folder.iterdir())) for folder in folders} == {QUICK.files // QUICK.classes}
    assert not empty_imagenet_tree(root, QUICK.classes, QUICK.files)  # complete: kept, not written again


def test_a_tree_short_of_files_is_completed(tmp_path):
    assert empty_imagenet_tree(tmp_path, 3, 10, log=lambda line: None)
    next(next(tmp_path.iterdir()).iterdir()).unlink()
    assert empty_imagenet_tree(tmp_path, 3, 10, log=lambda line: None) and tree_counts(tmp_path) == (3, 10)


def test_index_figures_are_printed_with_their_targets(run):
    _, output = run
    first, files = figures(output, rf"^index first start: {NUMBER} s for {NUMBER} files \(target <= 60 s\)$")
    (second,) = figures(output, rf"^index second start: {NUMBER} s \(target: seconds")
    memory = figures(output, rf"^index memory: {NUMBER} MB at the first start, {NUMBER} MB at the second "
                             r"\(target <= 200 MB\)$")
    assert files == QUICK.files and first >= 0 and second >= 0 and all(math.isfinite(m) for m in memory)


def test_the_coco_json_has_the_requested_counts_unique_ids_and_valid_boxes(run):
    scratch, output = run
    path = scratch / "coco" / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    images, annotations = data["images"], data["annotations"]
    assert (len(images), len(annotations)) == (QUICK.coco_images, QUICK.coco_annotations)
    assert len({i["id"] for i in images}) == len(images) and len({a["id"] for a in annotations}) == len(annotations)
    assert [c["id"] for c in data["categories"]] == list(COCO_CATEGORY_IDS) and len(COCO_CATEGORY_IDS) == 80
    assert {a["image_id"] for a in annotations} <= {i["id"] for i in images}
    width, height = COCO_SIZE
    for annotation in annotations:
        (polygon,) = annotation["segmentation"]
        xs, ys = polygon[0::2], polygon[1::2]
        x, y, w, h = annotation["bbox"]
        assert POLYGON_POINTS[0] <= len(xs) <= POLYGON_POINTS[1] and annotation["iscrowd"] == 0
        assert w > 0 and h > 0 and 0 <= x and x + w <= width + 0.01 and 0 <= y and y + h <= height + 0.01
        assert [x, y, x + w, y + h] == pytest.approx([min(xs), min(ys), max(xs), max(ys)], abs=0.011)
        assert 0 < annotation["area"] <= w * h
    files = {path.name: path.stat().st_size for path in (scratch / "coco" / "train2017").iterdir()}
    assert files == {i["file_name"]: 0 for i in images}
    (size,) = figures(output, rf"^coco json: {NUMBER} MB, 500 images, 4,000 annotations \(target ~450 MB\)$")
    assert size == round(path.stat().st_size / 1e6, 1)
    annotated = len({a["image_id"] for a in annotations})  # training leaves out images without annotations
    for label in ("coco construction", "coco construction with check_files"):
        seconds, count, memory, peak = figures(output, rf"^{label}: {NUMBER} s for {NUMBER} images \(target <= 60 "
                                                       rf"s\); memory {NUMBER} MB RSS after, peak {NUMBER} MB$")
        assert count == annotated and seconds >= 0 and peak >= memory


@pytest.mark.parametrize("dataset", ["imagenet", "coco"])
def test_worker_uss_figures_are_finite_and_the_growth_is_their_difference(run, dataset):
    _, output = run
    per_worker = rf"{NUMBER}, {NUMBER}"  # QUICK.workers == 2
    growth = figures(output, rf"^{dataset} workers: USS growth per worker over 60 samples: {per_worker} MB; max "
                             rf"{NUMBER} MB \(target <= 50 MB\)$")
    uss = figures(output, rf"^  {dataset}: 2 workers, batch 4: USS after the first batch {per_worker} MB, at the end "
                          rf"{per_worker} MB; {NUMBER} s$")
    assert all(math.isfinite(value) for value in growth + uss) and min(uss[:4]) > 0
    assert growth[:2] == pytest.approx([uss[2] - uss[0], uss[3] - uss[1]], abs=0.11) and growth[2] == max(growth[:2])


def test_rates_are_the_timed_images_over_the_timed_seconds(run):
    scratch, output = run
    counts = {}
    rates = {}
    for name in ("pre-training reference", "pre-training", "fine-tuning", "detection", "segmentation"):
        target = r"; target >= 400" if name == "pre-training" else ""
        rate, images, seconds = figures(output, rf"^{name}: {NUMBER} images/s per core \({NUMBER} images in "
                                                rf"{NUMBER} s{target}\)$")
        assert rate > 0 and rate == pytest.approx(images / seconds, rel=0.01)
        counts[name], rates[name] = images, rate
    assert counts["pre-training"] == counts["fine-tuning"] == counts["segmentation"] == QUICK.rate_images
    (ratio,) = figures(output, r"^pre-training / reference \(PIL crop, CPU normalise, as before\): ([\d.]+)x, best")
    assert ratio == pytest.approx(rates["pre-training"] / rates["pre-training reference"], abs=0.006)
    assert 0 < counts["detection"] <= QUICK.rate_images
    assert figures(output, r"^appetite: .* = (\d+) images/s per core$") == [320]


def test_rate_jpegs_are_imagenet_sized_and_about_as_large_as_imagenets(run):
    scratch, output = run
    paths = sorted((scratch / "rate").glob("*/imagenet/train/*/*.JPEG"))
    assert len(paths) == QUICK.rate_images
    assert {Image.open(path).size for path in paths} == {(500, 375)}
    mean_kb = sum(path.stat().st_size for path in paths) / len(paths) / 1000
    (printed,) = figures(output, r"mean JPEG imagenet (\d+) KB")
    assert printed == round(mean_kb) and 90 <= mean_kb <= 130
