"""`droppos-bench posacc`: loads a DropPos checkpoint and the data, runs the measurement of pretrain.position_accuracy
(paper Tab. S3 grid, Fig. 3) and prints or writes the results."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from engine.images import eval_transform, image_folder
from engine.runner import require_one_process
from engine.safe_io import write_json_atomic

from .build import load_droppos
from .position_accuracy import MASK_RATIOS, POS_MASK_RATIOS, format_grid, position_accuracy_grid, reconstruction_figure

log = logging.getLogger("droppos_bench")


def evenly_spaced(dataset: torch.utils.data.Dataset, count: int | None) -> torch.utils.data.Dataset:
    """`count` images spread over the whole (class-sorted) dataset, or all of it."""
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, torch.linspace(0, len(dataset) - 1, count).round().long().tolist())


def run_posacc(checkpoint: str | os.PathLike, data: str | os.PathLike, split: str = "val", images: int | None = None,
               batch_size: int = 64, seed: int = 0, workers: int = 4, out: str | os.PathLike | None = None,
               figure: str | os.PathLike | None = None, figure_images: int = 4, allow_pickle: bool = False,
               device: str | None = None) -> torch.Tensor:
    """Evaluate all 16 (gamma, gamma_pos) cases on `data/split`, print the grid, optionally write json and figure."""
    require_one_process("posacc")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_droppos(checkpoint, allow_pickle=allow_pickle).to(device)
    dataset = evenly_spaced(image_folder(data, split, eval_transform(model.config["img_size"][0])), images)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    log.info("position accuracy of %s on %d images of %s/%s, seed %d", checkpoint, len(dataset), data, split, seed)
    grid = position_accuracy_grid(model, loader, seed=seed, device=device,
                                  progress=lambda batches: tqdm(batches, desc="posacc", unit="batch"))
    print(format_grid(grid))
    if out is not None:
        write_json_atomic(out, dict(checkpoint=str(checkpoint), data=str(data), split=split, images=len(dataset),
                                    seed=seed, mask_ratios=MASK_RATIOS, pos_mask_ratios=POS_MASK_RATIOS,
                                    grid=grid.tolist(), average=grid.mean().item()))
        log.info("wrote %s", out)
    if figure is not None:
        first = torch.stack([dataset[i][0] for i in range(min(figure_images, len(dataset)))])
        reconstruction_figure(model, first, Path(figure), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, seed=seed)
        log.info("wrote %s", figure)
    return grid
