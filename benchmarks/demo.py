"""`droppos-bench demo`: the whole pipeline on built-in synthetic data.

It synthesises scenes, reads them back with the reference readers of their formats (torchvision's ImageFolder,
pycocotools, PIL), smoke-checks the backbone (features, feature maps, checkpoint export and re-import), pre-trains
a tiny DropPos and a tiny MAE on the mmengine Runner, and runs the demo suite (benchmarks/suites/demo.yaml): both
and a random init through fine-tuning, the probes, position accuracy, detection and segmentation, then writes the
report.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pycocotools.coco import COCO
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from backbone import build_vit, export_checkpoint, load_model
from engine.safe_io import write_json_atomic

from .harness.report import render_markdown
from .harness.run import JobsFailedError, report_suite, run_suite, suite_results
from .harness.suite import Suite, load_suite, resolve_suite
from .synthetic import synthesize

DEMO_DEFAULTS: dict[str, Any] = dict(out="work_dirs/demo", images=64, size=224, seed=0)
PRETRAIN_EPOCHS = 4
# --quick (CI): a step or two of every benchmark, small batches for a handful of scenes
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {
    **{name: {"schedule.epochs": 1, "schedule.warmup_epochs": 0, "batch_size": 2, "effective_batch": 2}
       for name in ("cls.finetune", "cls.linprobe", "cls.posprobe", "cls.posprobe_finetuned")},
    "det": {"schedule.iterations": 2, "schedule.warmup_iters": 1, "schedule.steps": [1], "batch_size": 2,
            "effective_batch": 2},
    "seg": {"schedule.iterations": 2, "schedule.warmup_iters": 1, "batch_size": 2, "effective_batch": 2},
}
log = logging.getLogger("droppos_bench.demo")


def check_layouts(data: Path) -> dict[str, int]:
    """Read every layout back with the reference readers of its format (torchvision's ImageFolder, pycocotools with
    every instance mask decoded, PIL's mode of each ADE20K label), not our task loaders, which the suite's jobs use
    later; returns item counts."""
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


def pretrain_tiny(config: str, name: str, data: Path, size: int, out: Path, train_images: int) -> Path:
    """A few epochs of a tiny pre-training recipe on the demo scenes; its last checkpoint (decoder included, for
    position accuracy) is linked as out/<name>.pth, where the demo suite looks for it."""
    from pretrain.train import run_pretrain

    batch = min(16, train_images)
    work_dir = out / f"pretrain_{name}"
    run_pretrain(config, {"data.root": str(data), "work_dir": str(work_dir), "model.img_size": size,
                          "batch_size": batch, "effective_batch": batch, "schedule.epochs": PRETRAIN_EPOCHS,
                          "log_interval": 3})
    link = out / f"{name}.pth"
    link.unlink(missing_ok=True)
    link.symlink_to((work_dir / f"epoch_{PRETRAIN_EPOCHS}.pth").resolve())
    return link


def demo_suite(out: Path, quick: bool) -> Suite:
    """The shipped demo suite with its paths in `out`; `quick` shortens every schedule to a few steps (CI)."""
    os.environ["DROPPOS_DEMO"] = str(out.resolve())
    suite = load_suite(resolve_suite("demo"))
    if not quick:
        return suite
    benchmarks = tuple(replace(b, overrides={**b.overrides, **QUICK_OVERRIDES.get(b.name, {})})
                       for b in suite.benchmarks)
    return replace(suite, benchmarks=benchmarks)


def run_demo(out: Path, images: int, size: int, seed: int, quick: bool = False) -> dict[str, Any]:
    """Run every stage, write `demo_summary.json` and the report; print the report's tables."""
    out = Path(out)
    start = time.perf_counter()
    data = out / "data"
    log.info("synthesising %d scenes at %dpx into %s", images, size, data)
    synthesize(data, num_images=images, size=size, seed=seed, overwrite=True)
    summary: dict[str, Any] = {"data": str(data), "layouts": check_layouts(data)}
    log.info("layouts read back: %s", summary["layouts"])
    summary["backbone"] = smoke_check_backbone(data, size, out)
    train_images = summary["layouts"]["imagenet_train"]
    summary["pretrain"] = {name: str(pretrain_tiny(config, name, data, size, out, train_images))
                           for name, config in (("droppos", "droppos_tiny_synth"), ("mae", "mae_tiny_synth"))}
    suite = demo_suite(out, quick)
    summary["jobs"] = run_suite(suite)
    summary["report"] = str(report_suite(suite, out / "report"))
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(out / "demo_summary.json", summary)
    print_summary(summary, out)
    print(render_markdown(suite_results(suite), title="droppos-bench demo", synthetic=True))
    failed = sorted(job for job, state in summary["jobs"].items() if state == "failed")
    if failed:
        raise JobsFailedError(f"demo jobs failed: {', '.join(failed)}; logs in {suite.work_dir}/<job>/job.log")
    return summary


def print_summary(summary: dict[str, Any], out: Path) -> None:
    backbone = summary["backbone"]
    rows = [(k, v) for k, v in summary["layouts"].items()] + [
        ("ViT-Tiny features", backbone["feature_shape"]),
        ("feature maps (blocks 3,5,7,11)", backbone["feature_maps"][0]),
        ("forward images/s (CPU)", backbone["images_per_s"]), ("checkpoint round trip", "identical"),
        ("pre-trained DropPos / MAE", f"{summary['pretrain']['droppos']}, {summary['pretrain']['mae']}"),
        ("benchmark jobs", ", ".join(f"{n} {state}" for state, n in
                                     sorted(Counter(summary["jobs"].values()).items()))),
        ("report", summary["report"]),
        ("total seconds", summary["seconds"])]
    width = max(len(k) for k, _ in rows)
    print("\ndroppos-bench demo (synthetic scenes, tiny ViTs, a few iterations: a smoke check, not a benchmark)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(f"summary: {out / 'demo_summary.json'}")
