"""Data loading at ImageNet and COCO scale (issue 20): index build time and memory, loader workers' memory growth,
COCO start-up, and the input pipelines' images/s per core, each figure printed beside its target.

    python -m benchmarks.data_scale                          # every part at full size (index, coco, workers, rate)
    python -m benchmarks.data_scale --part index coco        # some parts
    python -m benchmarks.data_scale --part workers --dataset coco --workers 10
    python -m benchmarks.data_scale --quick                  # toy sizes (what the test runs)

index: 1,000 class folders of 1,281,167 empty files (ImageNet-1k train's count and names) under --root, generated
once; the time of `engine.images.image_folder` to index them at a first and a second start (each in a fresh process;
the index cache of $DROPPOS_BENCH_CACHE is emptied before the first), and the RSS it adds to its process. The
operating system still holds the folders it just wrote or read: a first start after a reboot, or on a network file
system, lists them cold and takes longer.
coco: a COCO 2017 train-size instances json (118,287 images, 860,001 polygon annotations, ~450 MB) and empty image
files under --coco-root, generated once; the time and RSS of det.data.CocoDetection's construction in a fresh
process (--check-files: also with its start-up look for every image file).
workers: the unique memory (USS) each of --workers loader workers gains reading --samples random samples of the
full-size ImageNet index or COCO dataset, after the first batch and at the end. The files are empty, so reading is
a stat and a blank 8x8 image: the growth is the index's pages that the workers copy, not the decoder's.
rate: images/s per core (one process, one thread, no loader workers) of the pre-training, fine-tuning, detection
and segmentation input pipelines on --rate-images JPEGs per layout as large and textured as the real datasets',
and of the pre-training pipeline as it was (PIL decode and crop, CPU normalise: the reference of the printed ratio);
best of 3 rounds that alternate the pipelines.
Each measurement runs in a fresh child process (`--measure`), so nothing the parent holds or cached skews it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.data_scale_gen import (
    empty_imagenet_tree,
    rate_data,
    touch_all,
    write_coco_instances,
)

REPO = Path(__file__).resolve().parent.parent
PARTS = ("index", "coco", "workers", "rate")
MB = 1e6
INDEX_FIRST_TARGET_S, INDEX_MEMORY_TARGET_MB, COCO_BUILD_TARGET_S, COCO_JSON_TARGET_MB = 60, 200, 60, 450
WORKER_GROWTH_TARGET_MB, PRETRAIN_TARGET = 50, 400
# the appetite: a DropPos ViT-B/16 step at 35% MFU on an H100, and an 8-GPU node's cores
GPU_IMAGES_PER_S, NODE_GPUS, NODE_CORES = 4400, 8, 110
RATE_BATCH = 8
RATE_ROUNDS = 3  # best of
REFERENCE = "pre-training reference"


@dataclass(frozen=True)
class Sizes:
    classes: int
    files: int
    coco_images: int
    coco_annotations: int
    samples: int
    batch: int
    workers: int
    rate_images: int


FULL = Sizes(classes=1000, files=1_281_167, coco_images=118_287, coco_annotations=860_001, samples=20_000, batch=64,
             workers=8, rate_images=200)
QUICK = Sizes(classes=20, files=1000, coco_images=500, coco_annotations=4000, samples=60, batch=4, workers=2,
              rate_images=8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="toy sizes: 20 x 50 files, 500 COCO images, ...")
    parser.add_argument("--root", type=Path, default=Path("/tmp/droppos_scale/imagenet/train"),
                        help="the ImageNet-size split folder (named train)")
    parser.add_argument("--coco-root", type=Path, default=Path("/tmp/droppos_scale/coco"))
    parser.add_argument("--rate-root", type=Path, default=Path("/tmp/droppos_scale/rate"))
    parser.add_argument("--dataset", nargs="+", choices=("imagenet", "coco"), default=["imagenet", "coco"],
                        help="what the workers part reads")
    parser.add_argument("--workers", type=positive, help=f"loader workers (default {FULL.workers})")
    parser.add_argument("--samples", type=positive, help=f"samples the workers read (default {FULL.samples:,})")
    parser.add_argument("--batch", type=positive, help=f"loader batch (default {FULL.batch})")
    parser.add_argument("--rate-images", type=positive,
                        help=f"JPEGs per layout for the rates (default {FULL.rate_images})")
    parser.add_argument("--check-files", action="store_true",
                        help="coco: also time the construction that looks for every image file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child's side: one measurement, one json line
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name in ("workers", "samples", "batch", "rate_images"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    args.sizes = preset
    if args.root.name != "train":
        parser.error(f"--root {args.root}: expected a split folder named train (image_folder reads <parent>/train)")
    return args


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(MEASURES[args.measure](args)), flush=True)
        return
    for part in args.part:
        PART_RUNNERS[part](args)


# ----------------------------------------------------------------------------------------------- the parent's parts

def index_part(args: argparse.Namespace) -> None:
    ensure_tree(args)
    shutil.rmtree(cache_dir(args), ignore_errors=True)
    first, second = (child(args, "index-build") for _ in range(2))
    print(f"index first start: {first['seconds']:.1f} s for {first['files']:,} files "
          f"(target <= {INDEX_FIRST_TARGET_S} s)")
    print(f"index second start: {second['seconds']:.1f} s (target: seconds; index cache {cache_dir(args)})")
    print(f"index memory: {first['rss_growth_mb']:.1f} MB at the first start, {second['rss_growth_mb']:.1f} MB at "
          f"the second (target <= {INDEX_MEMORY_TARGET_MB} MB)", flush=True)


def coco_part(args: argparse.Namespace) -> None:
    annotation_file = ensure_coco(args)
    print(f"coco json: {annotation_file.stat().st_size / MB:.1f} MB, {args.sizes.coco_images:,} images, "
          f"{args.sizes.coco_annotations:,} annotations (target ~{COCO_JSON_TARGET_MB} MB)")
    for check_files in (False, True) if args.check_files else (False,):
        built = child(args, "coco-build", *(["--check-files"] if check_files else []))
        label = "coco construction" + (" with check_files" if check_files else "")
        print(f"{label}: {built['seconds']:.1f} s for {built['images']:,} images (target <= {COCO_BUILD_TARGET_S} "
              f"s); memory {built['rss_growth_mb']:,.0f} MB RSS after, peak {built['peak_rss_mb']:,.0f} MB",
              flush=True)


def workers_part(args: argparse.Namespace) -> None:
    for dataset in args.dataset:
        if dataset == "imagenet":
            ensure_tree(args)
        else:
            ensure_coco(args)
        result = child(args, "workers", "--dataset", dataset)
        growth = [end - first for first, end in zip(result["uss_first_mb"], result["uss_end_mb"], strict=True)]
        listed = lambda values: ", ".join(f"{value:.1f}" for value in values)  # noqa: E731
        print(f"{dataset} workers: USS growth per worker over {args.samples:,} samples: {listed(growth)} MB; max "
              f"{max(growth):.1f} MB (target <= {WORKER_GROWTH_TARGET_MB} MB)")
        print(f"  {dataset}: {args.workers} workers, batch {args.batch}: USS after the first batch "
              f"{listed(result['uss_first_mb'])} MB, at the end {listed(result['uss_end_mb'])} MB; "
              f"{result['seconds']:.1f} s", flush=True)


def rate_part(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    mean_kb = rate_data(rate_root(args), args.rate_images, args.seed)
    seconds, sizes = time.perf_counter() - start, ", ".join(f"{layout} {kb:.0f} KB" for layout, kb in mean_kb.items())
    print(f"rate data: {args.rate_images} JPEGs per layout under {rate_root(args)} ({seconds:.1f} s); mean JPEG "
          f"{sizes} (ImageNet's mean: ~110 KB)")
    results = child(args, "rate")
    rates = {name: result["images"] / result["seconds"] for name, result in results.items()}
    for name, result in results.items():
        target = f"; target >= {PRETRAIN_TARGET}" if name == "pre-training" else ""
        print(f"{name}: {rates[name]:.1f} images/s per core ({result['images']} images in {result['seconds']:.4f} s"
              f"{target})")
    print(f"pre-training / reference (PIL crop, CPU normalise, as before): "
          f"{rates['pre-training'] / rates[REFERENCE]:.2f}x, best of {RATE_ROUNDS} alternating rounds")
    need = GPU_IMAGES_PER_S * NODE_GPUS / NODE_CORES
    print(f"appetite: a DropPos ViT-B/16 step at 35% MFU on an H100 eats ~{GPU_IMAGES_PER_S:,} images/s per GPU; "
          f"{NODE_GPUS} GPUs on ~{NODE_CORES} cores need {GPU_IMAGES_PER_S:,} x {NODE_GPUS} / {NODE_CORES} = "
          f"{need:.0f} images/s per core", flush=True)


PART_RUNNERS = {"index": index_part, "coco": coco_part, "workers": workers_part, "rate": rate_part}


def ensure_tree(args: argparse.Namespace) -> None:
    """The ImageNet-size tree of empty files, generated unless complete."""
    start, sizes = time.perf_counter(), args.sizes
    made = empty_imagenet_tree(args.root, sizes.classes, sizes.files)
    state = f"generated in {time.perf_counter() - start:.1f} s" if made else "already there, kept"
    print(f"index tree: {sizes.files:,} files in {sizes.classes:,} folders under {args.root}, {state}", flush=True)


def ensure_coco(args: argparse.Namespace) -> Path:
    """The COCO-size instances json and its empty image files, generated unless a finished set of these counts and
    seed is there; returns the json's path."""
    annotation_file, image_dir = coco_files(args)
    marker, sizes = args.coco_root / "generated.json", args.sizes
    wanted = {"images": sizes.coco_images, "annotations": sizes.coco_annotations, "seed": args.seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        print(f"coco data: already under {args.coco_root}, kept")
        return annotation_file
    start = time.perf_counter()
    records = write_coco_instances(annotation_file, sizes.coco_images, sizes.coco_annotations, args.seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    touch_all(image_dir, [record["file_name"] for record in records])
    marker.write_text(json.dumps(wanted))
    print(f"coco data: generated under {args.coco_root} in {time.perf_counter() - start:.1f} s", flush=True)
    return annotation_file


def coco_files(args: argparse.Namespace) -> tuple[Path, Path]:
    return args.coco_root / "annotations" / "instances_train2017.json", args.coco_root / "train2017"


def rate_root(args: argparse.Namespace) -> Path:
    return args.rate_root / f"images{args.rate_images}_seed{args.seed}"


def cache_dir(args: argparse.Namespace) -> Path:
    """The index cache of the children (engine.folder_index reads $DROPPOS_BENCH_CACHE): beside the data, so a
    first start is uncached and nothing lands in the user's cache."""
    return args.root.parent / "index_cache"


def child(args: argparse.Namespace, measure: str, *extra: str) -> dict[str, Any]:
    """Run one measurement in a fresh process (one thread per library) and return its json line."""
    command = [sys.executable, "-m", "benchmarks.data_scale", "--measure", measure, "--root", str(args.root),
               "--coco-root", str(args.coco_root), "--rate-root", str(args.rate_root), "--workers", str(args.workers),
               "--batch", str(args.batch), "--samples", str(args.samples), "--rate-images", str(args.rate_images),
               "--seed", str(args.seed), *(["--quick"] if args.quick else []), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", DROPPOS_BENCH_CACHE=str(cache_dir(args)))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"measurement {measure} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ the children's measurements
# Imports of torch and the tasks (about 5 s each) happen in these functions, so that the parent starts at once.

def measure_index_build(args: argparse.Namespace) -> dict[str, Any]:
    from engine.images import image_folder

    before, start = memory_mb()["VmRSS"], time.perf_counter()
    dataset = image_folder(args.root.parent, "train", transform=None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "files": len(dataset), "rss_growth_mb": memory_mb()["VmRSS"] - before}


def measure_coco_build(args: argparse.Namespace) -> dict[str, Any]:
    from det.data import CocoDetection, lsj_transform

    before, start = memory_mb()["VmRSS"], time.perf_counter()
    dataset = CocoDetection(*coco_files(args), lsj_transform(1024), train=True, check_files=args.check_files)
    seconds = time.perf_counter() - start
    memory = memory_mb()
    return {"seconds": seconds, "images": len(dataset), "rss_growth_mb": memory["VmRSS"] - before,
            "peak_rss_mb": memory["VmHWM"]}


def measure_workers(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    dataset, collate = (imagenet_without_pixels if args.dataset == ["imagenet"] else coco_without_pixels)(args)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=args.samples)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, sampler=sampler, num_workers=args.workers,
                                         collate_fn=collate)
    start, batches = time.perf_counter(), iter(loader)
    next(batches)
    pids = loader_worker_pids(batches)
    first = [uss_mb(pid) for pid in pids]
    for _ in range(len(loader) - 1):  # not to the end: the loader stops its workers when it runs out
        next(batches)
    return {"uss_first_mb": first, "uss_end_mb": [uss_mb(pid) for pid in pids],
            "seconds": time.perf_counter() - start}


def imagenet_without_pixels(args: argparse.Namespace) -> tuple[Any, Any]:
    """The full-size image folder whose loader stats the (empty) file and returns a blank 8x8 image."""
    from PIL import Image
    from torch.utils.data import default_collate
    from torchvision.transforms import PILToTensor

    from engine.images import image_folder

    blank = Image.new("RGB", (8, 8))

    def stat_then_blank(path: str) -> Image.Image:
        os.stat(path)
        return blank

    dataset = image_folder(args.root.parent, "train", transform=PILToTensor())
    dataset.loader = stat_then_blank
    return dataset, default_collate


def coco_without_pixels(args: argparse.Namespace) -> tuple[Any, Any]:
    """The full-size COCO dataset (train, masks included) reading a stat and a blank 8x8 image per file, with a
    transform that leaves the sample as it is. det.data's reader is replaced in this child process only."""
    import torch
    from torchvision import tv_tensors

    import det.data

    def stat_then_blank(path: Path) -> tv_tensors.Image:
        os.stat(path)
        return tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8))

    det.data._read_rgb = stat_then_blank
    dataset = det.data.CocoDetection(*coco_files(args), lambda image, target: (image, target, {}), train=True)
    return dataset, det.data.collate


def loader_worker_pids(batches: Any) -> list[int]:
    """The process ids of a DataLoader iterator's workers; torch keeps them only in the private `_workers`."""
    return [worker.pid for worker in batches._workers]


def measure_rates(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    import cv2
    import torch
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import default_collate

    from cls.data import train_transform
    from cls.finetune import CONFIGS_DIR as CLS_CONFIGS
    from det.data import CocoDetection, coco_paths, collate, lsj_transform
    from engine import load_config
    from engine.images import image_folder
    from pretrain.train import CONFIGS_DIR as PRETRAIN_CONFIGS
    from pretrain.train import pretrain_dataset
    from seg.data import build_seg_dataset
    from seg.train import CONFIGS_DIR as SEG_CONFIGS

    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # mmcv's resizes in the segmentation pipeline
    root = rate_root(args)
    aug = load_config("finetune_vit_base_100ep", configs_dir=CLS_CONFIGS).aug
    seg_data = dict(load_config("upernet_vit_base_80k", configs_dir=SEG_CONFIGS).data,
                    root=str(root / "ade" / "ADEChallengeData2016"))
    pipelines = {
        REFERENCE: lambda: (pil_pretrain_reference(root / "imagenet" / "train"), default_collate),
        "pre-training": lambda: (pretrain_dataset(load_config("droppos_vit_base_200ep", {"data.root": str(root)},
                                                              configs_dir=PRETRAIN_CONFIGS)), default_collate),
        "fine-tuning": lambda: (image_folder(root / "imagenet", "train", train_transform(224, aug)), default_collate),
        "detection": lambda: (CocoDetection(*coco_paths(root / "coco", "train"), lsj_transform(1024), train=True),
                              collate),
        "segmentation": lambda: (build_seg_dataset(seg_data, "train"), pseudo_collate),
    }
    built = {name: build() for name, build in pipelines.items()}
    best: dict[str, dict[str, float]] = {}
    for _ in range(RATE_ROUNDS):  # rounds alternate the pipelines, so drift in the machine's speed hits all alike
        for name, (dataset, collate_fn) in built.items():
            result = time_one_pass(dataset, collate_fn)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    return best


def pil_pretrain_reference(folder: Path) -> Any:
    """The pre-training input pipeline as it was before issue 20, the ratio's reference: torchvision's ImageFolder
    (PIL decode), PIL's bicubic RandomResizedCrop, flip, ToTensor and Normalize on the CPU."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import datasets, transforms

    return datasets.ImageFolder(str(folder), transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]))


def time_one_pass(dataset: Any, collate: Any) -> dict[str, float]:
    """Seconds for every item of `dataset` through a worker-less loader, after one item read outside the clock."""
    from torch.utils.data import DataLoader

    dataset[0]
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=RATE_BATCH, num_workers=0, collate_fn=collate):
        pass
    return {"images": len(dataset), "seconds": time.perf_counter() - start}


MEASURES = {"index-build": measure_index_build, "coco-build": measure_coco_build, "workers": measure_workers,
            "rate": measure_rates}


def memory_mb() -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of this process in MB, from /proc/self/status."""
    lines = Path("/proc/self/status").read_text().splitlines()
    values = dict(line.split(":", 1) for line in lines if line.startswith(("VmRSS:", "VmHWM:")))
    return {key: int(value.split()[0]) * 1024 / MB for key, value in values.items()}


def uss_mb(pid: int) -> float:
    """Unique set size in MB: the process's pages no other process shares (private clean + private dirty)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[key].split()[0]) for key in ("Private_Clean", "Private_Dirty")) * 1024 / MB


if __name__ == "__main__":
    main()
