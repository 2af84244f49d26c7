"""`droppos-bench demo`: the pipeline on built-in synthetic data.

Today it synthesises scenes, reads them back through the real ImageNet / COCO / ADE20K loaders,
smoke-checks the backbone (features, feature maps, checkpoint export and re-import), pre-trains a tiny DropPos
for a few epochs on the mmengine Runner and scores its position-accuracy grid. The downstream benchmarks join
as their tasks land.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pycocotools.coco import COCO
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from backbone import build_vit, export_checkpoint, load_model
from backbone.safe_io import write_json_atomic

from .synthetic import synthesize

DEMO_DEFAULTS: dict[str, Any] = dict(out="work_dirs/demo", images=64, size=224, seed=0)
log = logging.getLogger("droppos_bench.demo")


def check_layouts(data: Path) -> dict[str, int]:
    """Read every layout back with the loaders the tasks use; returns item counts."""
    counts = {}
    for split in ("train", "val"):
        counts[f"imagenet_{split}"] = len(datasets.ImageFolder(data / "imagenet" / split, allow_empty=True))
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(data / "coco" / "annotations" / f"instances_{split}2017.json"))
        masks = [coco.annToMask(ann) for ann in coco.loadAnns(coco.getAnnIds())]
        if any(m.sum() == 0 for m in masks):
            raise RuntimeError(f"an empty instance mask in COCO {split}")
        counts[f"coco_{split}_instances"] = len(masks)
    labels = sorted((data / "ade" / "ADEChallengeData2016" / "annotations").rglob("*.png"))
    if any(Image.open(p).mode != "L" for p in labels):
        raise RuntimeError("ADE20K labels must be single-channel")
    counts["ade_labels"] = len(labels)
    return counts


def smoke_check_backbone(data: Path, size: int, out: Path) -> dict[str, Any]:
    """ViT-Tiny forward on real batches, then export and re-import: outputs must be identical."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN,
                                                                                IMAGENET_DEFAULT_STD)])
    train = datasets.ImageFolder(data / "imagenet" / "train", transform, allow_empty=True)
    loader = DataLoader(train, batch_size=16)
    images, _ = next(iter(loader))
    torch.manual_seed(0)
    model = build_vit("tiny", img_size=size).eval()
    with torch.inference_mode():
        start = time.perf_counter()
        features = model.forward_features(images)
        seconds = time.perf_counter() - start
        maps = model.forward_feature_maps(images, [3, 5, 7, 11])
    path = export_checkpoint(model, out / "vit_tiny_random_init.safetensors", meta={"note": "demo, random init"})
    reloaded, report = load_model(path)
    with torch.inference_mode():
        same = torch.equal(reloaded.eval().forward_features(images), features)
    if not same or report.missing or report.unexpected:
        raise RuntimeError(f"checkpoint round trip changed the model:\n{report}")
    for layout, name in (("detectron2", "vit_tiny_vitdet_d2.pth"), ("mmseg", "vit_tiny_mmseg.pth")):
        export_checkpoint(model, out / name, layout)
    return dict(batch=len(images), feature_shape=list(features.shape), feature_maps=[list(m.shape) for m in maps],
                images_per_s=round(len(images) / seconds, 1), checkpoint=str(path))


def pretrain_tiny_droppos(data: Path, size: int, out: Path, train_images: int) -> dict[str, Any]:
    """A few epochs of the tiny DropPos recipe on the demo scenes, then its Tab. S3 grid on the val split."""
    from engine import load_config
    from pretrain.build import load_droppos
    from pretrain.data import eval_transform, image_folder
    from pretrain.position_eval import position_accuracy_grid
    from pretrain.train import CONFIGS_DIR, build_pretrain_runner, export_encoder

    epochs, batch = 4, min(16, train_images)
    cfg = load_config("droppos_tiny_synth", {"data.root": str(data), "work_dir": str(out / "pretrain_droppos"),
                                             "model.img_size": size, "batch_size": batch, "effective_batch": batch,
                                             "schedule.epochs": epochs, "log_interval": 3}, configs_dir=CONFIGS_DIR)
    runner = build_pretrain_runner(cfg)
    runner.train()
    encoder = export_encoder(runner, cfg)
    model = load_droppos(Path(runner.work_dir) / f"epoch_{epochs}.pth")
    val = DataLoader(image_folder(data, "val", eval_transform(size)), batch_size=16)
    grid = position_accuracy_grid(model, val)
    return dict(iterations=runner.iter, encoder=str(encoder), position_accuracy=round(grid.mean().item(), 2),
                chance=round(100 / (model.grid_size[0] * model.grid_size[1]), 2))


def run_demo(out: Path, images: int, size: int, seed: int) -> dict[str, Any]:
    """Run every stage that exists so far and write `demo_summary.json`."""
    out = Path(out)
    start = time.perf_counter()
    data = out / "data"
    log.info("synthesising %d scenes at %dpx into %s", images, size, data)
    synthesize(data, num_images=images, size=size, seed=seed, overwrite=True)
    summary: dict[str, Any] = {"data": str(data), "layouts": check_layouts(data)}
    log.info("layouts read back: %s", summary["layouts"])
    summary["backbone"] = smoke_check_backbone(data, size, out)
    summary["pretrain"] = pretrain_tiny_droppos(data, size, out, summary["layouts"]["imagenet_train"])
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(out / "demo_summary.json", summary)
    print_summary(summary, out)
    return summary


def print_summary(summary: dict[str, Any], out: Path) -> None:
    backbone = summary["backbone"]
    rows = [(k, v) for k, v in summary["layouts"].items()] + [
        ("ViT-Tiny features", backbone["feature_shape"]),
        ("feature maps (blocks 3,5,7,11)", backbone["feature_maps"][0]),
        ("forward images/s (CPU)", backbone["images_per_s"]), ("checkpoint round trip", "identical"),
        ("DropPos pre-training iterations", summary["pretrain"]["iterations"]),
        ("position accuracy, grid average %", f"{summary['pretrain']['position_accuracy']} "
                                              f"(chance {summary['pretrain']['chance']})"),
        ("pre-trained encoder", summary["pretrain"]["encoder"]),
        ("total seconds", summary["seconds"])]
    width = max(len(k) for k, _ in rows)
    print("\ndroppos-bench demo (synthetic scenes, tiny ViTs, a few iterations: a smoke check, not a benchmark)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(f"summary: {out / 'demo_summary.json'}")
