"""`droppos-bench seg eval`: sliding-window mIoU, mAcc, aAcc and per-class IoU of a trained segmentor on the val
split, written to metrics.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from backbone.checkpoint import load_trained_model
from engine.evaluation import eval_config, write_eval_metrics

from .data import build_seg_dataset
from .metric import SegMetric
from .model import SegEncoderDecoder
from .train import CONFIGS_DIR, build_segmentor

SUMMARY = ("mIoU", "mAcc", "aAcc")


def evaluate_segmentor(model: SegEncoderDecoder, loader: DataLoader, metric: SegMetric) -> dict[str, float]:
    """Sliding-window predictions over the loader (one image per batch: sizes differ), then the metric."""
    model.eval()
    metric.dataset_meta = loader.dataset.metainfo
    with torch.inference_mode():
        for batch in tqdm(loader, desc="eval", unit="image"):
            metric.process(batch, [sample.to_dict() for sample in model.val_step(batch)])
    return metric.evaluate(len(loader.dataset))


def evaluate_on_val(model: SegEncoderDecoder, val: Dataset, num_workers: int) -> dict[str, float]:
    """`evaluate_segmentor` over the val split, on the GPU where there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    loader = DataLoader(val, batch_size=1, num_workers=num_workers, collate_fn=pseudo_collate,
                        pin_memory=device.type == "cuda")
    return evaluate_segmentor(model, loader, SegMetric())


def run_seg_eval(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Evaluate `ckpt` (written by seg train) per `config`; returns the metrics.json path."""
    cfg = eval_config("seg eval", config, overrides, CONFIGS_DIR, "a segmentor checkpoint written by seg train")
    val = build_seg_dataset(cfg.data, "val")
    model = build_segmentor(cfg, len(val.metainfo["classes"]), pretrained=False)
    load_trained_model(model, cfg.ckpt, "seg train", cfg.allow_pickle)
    metrics = evaluate_on_val(model, val, cfg.data.num_workers)
    out = write_eval_metrics(cfg, len(val), metrics)
    print("  ".join(f"{name} {metrics[name]:.2f}" for name in SUMMARY) + f"  ({len(val)} images) -> {out}")
    return out
