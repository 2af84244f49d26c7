"""`droppos-bench cls eval`: top-1 / top-5 of a fine-tuned classifier on the val split, written to metrics.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from backbone import VisionTransformer
from engine.evaluation import eval_config, write_eval_metrics
from engine.images import eval_transform, image_folder

from .finetune import CONFIGS_DIR, build_classifier
from .metric import TopKAccuracy


def evaluate_classifier(net: VisionTransformer, loader: DataLoader, device: torch.device,
                        bf16: bool) -> dict[str, float]:
    """Top-1 / top-5 (%) over the loader; counts stay on the device until the end."""
    metric = TopKAccuracy()
    net.eval().to(device)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for images, labels in tqdm(loader, desc="eval", unit="batch"):
            labels = labels.to(device, non_blocking=True)
            logits = net(images.to(device, non_blocking=True)).float()
            metric.process(None, [{"logits": logits, "labels": labels}])
    return metric.evaluate(len(loader.dataset))


def run_eval(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Evaluate `ckpt` (a fine-tuned checkpoint, head included) per `config`; returns the metrics.json path."""
    cfg = eval_config("cls eval", config, overrides, CONFIGS_DIR,
                      "a fine-tuned checkpoint with its classification head")
    val = image_folder(cfg.data.root, "val", eval_transform(cfg.model.img_size), cfg.data.skip_invalid)
    net = build_classifier(cfg, len(val.classes), fine_tuned=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = DataLoader(val, batch_size=cfg.batch_size, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda")
    metrics = evaluate_classifier(net, loader, device, bf16=cfg.precision == "bf16" and device.type == "cuda")
    out = write_eval_metrics(cfg, len(val), metrics)
    print(f"top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}  ({len(val)} images) -> {out}")
    return out
