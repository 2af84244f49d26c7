"""`droppos-bench det eval`: COCO box and mask AP of a trained detector on the val split (metrics.json and the
detections as COCO results json)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine.evaluation import eval_config, write_eval_metrics
from engine.runner import default_eval_dir

from .checkpoint import load_detector
from .coco_metric import CocoMetric
from .data import collate
from .model import ViTDetMaskRCNN
from .train import CONFIGS_DIR, RESULTS_FILE, build_detector, coco_dataset

PAPER_METRICS = ("APb", "APb50", "APb75", "APm", "APm50", "APm75")


def evaluate_detector(model: ViTDetMaskRCNN, loader: DataLoader, metric: CocoMetric) -> dict[str, float]:
    """Run the detector over the loader and compute the COCO numbers."""
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc="eval", unit="batch"):
            metric.process(batch, model.val_step(batch))
    return metric.evaluate(len(loader.dataset))


def run_det_eval(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Evaluate `ckpt` (written by det train, or a detectron2 ViTDet Mask R-CNN file) per `config`; returns the
    metrics.json path."""
    cfg = eval_config("det eval", config, overrides, CONFIGS_DIR,
                      "a detector checkpoint written by det train or detectron2")
    val = coco_dataset(cfg, "val")
    model = build_detector(cfg, len(val.category_ids), pretrained=False)
    load_detector(model, cfg.ckpt, cfg.allow_pickle)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    out_dir = default_eval_dir(cfg)
    metric = CocoMetric(val.annotation_file, val.category_ids, results_file=out_dir / RESULTS_FILE)
    loader = DataLoader(val, batch_size=cfg.batch_size, num_workers=cfg.data.num_workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    metrics = evaluate_detector(model, loader, metric)
    out = write_eval_metrics(cfg, len(val), metrics, skipped=val.skipped.value)
    print("  ".join(f"{name} {metrics[name] * 100:.1f}" for name in PAPER_METRICS) + f"  ({len(val)} images) -> {out}")
    return out
