"""Frozen-encoder features for the fast protocols (kNN, linear heads): extracted once per checkpoint, split and
transform, kept on disk as float16 in one memory-mapped matrix, and reused by every protocol that reads them.

A row holds, side by side (D = the encoder's width), the last `last_layers` blocks' [CLS] and the mean patch token:

    ... | cls of block -3 | cls of block -2 | cls | avg

every part after the encoder's final norm, in the order of DINOv2's linear input (its create_linear_input), so each
feature a protocol uses is one contiguous column range, a view of the file, equal to the vector DINOv2's heads read:
`cls`, `avg`, `cls+avg`, `cls4` (the last four blocks' [CLS], DINOv2's n_last_blocks=4), `cls4+avg`.

The cache folder is named by a digest of what decides the numbers: the checkpoint file's bytes and format, the model
options, the transform, the split's files and labels and its folders' modification times (a dataset written again).
A changed checkpoint is a new folder; an interrupted extraction goes on from the last row it flushed. An image
rewritten in place under its old name is not seen: delete the cache folder then.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from backbone import VisionTransformer
from engine.errors import UserInputError
from engine.images import CheckedImageFolder
from engine.safe_io import write_json_atomic

log = logging.getLogger("droppos_bench")
META, ROWS, LABELS, PROGRESS = "meta.json", "features.f16", "labels.npy", "progress.json"
FEATURES = ("cls", "avg", "cls+avg", "cls4", "cls4+avg")
ROW_LAYOUT = "cls of blocks -n..-1 | avg"  # in every cache key: a cache of another layout is never read or continued


def file_digest(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """sha256 of a file's bytes, read in 16 MB chunks (a ViT-L checkpoint takes about a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """A short digest of everything that decides the features (JSON-serialisable parts) and of the row layout."""
    parts = dict(parts, row_layout=ROW_LAYOUT)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def layout(dim: int, last_layers: int) -> dict[str, tuple[int, int]]:
    """The column range of each feature in a row (see the module docstring)."""
    cls = ((last_layers - 1) * dim, last_layers * dim)
    ranges = {"cls": cls, "avg": (cls[1], cls[1] + dim), "cls+avg": (cls[0], cls[1] + dim)}
    if last_layers == 4:
        ranges.update({"cls4": (0, 4 * dim), "cls4+avg": (0, 5 * dim)})
    return ranges


def encode_rows(net: VisionTransformer, images: torch.Tensor, last_layers: int) -> torch.Tensor:
    """One row per image (earlier blocks' cls | cls | avg), every token after the final norm."""
    x, grid = net.embed(images)
    depth = net.num_layers
    last, kept = net.run_blocks(x, grid, keep=range(depth - last_layers, depth - 1))
    tokens = net.norm(last)
    parts = [net.norm(block)[:, 0] for block in kept] + [tokens[:, 0], tokens[:, net.num_prefix_tokens:].mean(dim=1)]
    return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class CachedFeatures:
    """A finished cache folder: the rows (float16, memory-mapped, read-only), the labels and the layout."""

    folder: Path
    rows: np.ndarray
    labels: np.ndarray
    columns: dict[str, tuple[int, int]]
    classes: list[str]

    def feature(self, name: str) -> torch.Tensor:
        """The (N, width) float16 view of one feature, without a copy."""
        if name not in self.columns:
            raise KeyError(f"feature {name!r} is not cached in {self.folder}; cached: {sorted(self.columns)}")
        start, stop = self.columns[name]
        return torch.from_numpy(self.rows[:, start:stop])

    def features_on(self, names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Views of several features over one copy of the rows on `device` (on the CPU, the mapped file itself):
        overlapping features (cls, cls+avg, ...) never take their columns twice."""
        rows = torch.from_numpy(self.rows)
        rows = rows if device.type == "cpu" else rows.to(device)
        return {name: rows[:, slice(*self.columns[name])] for name in names}

    @property
    def targets(self) -> torch.Tensor:
        return torch.from_numpy(self.labels.astype(np.int64))


def open_cache(folder: Path) -> CachedFeatures | None:
    """The finished cache in `folder`, or None while there is none (or only a partial one)."""
    meta_path = folder / META
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if not meta.get("complete"):
        return None
    # copy-on-write: a writable view for torch, while the file itself is never written through it
    rows = np.memmap(folder / ROWS, dtype=np.float16, mode="c", shape=(meta["rows"], meta["width"]))
    columns = {name: tuple(span) for name, span in meta["columns"].items()}
    return CachedFeatures(folder, rows, np.load(folder / LABELS), columns, meta["classes"])


def _batches(dataset: Dataset, start: int, batch_size: int, num_workers: int,
             pin: bool) -> Iterator[torch.Tensor]:
    """The images of rows start.. in order."""
    rest = Subset(dataset, range(start, len(dataset)))
    loader = DataLoader(rest, batch_size=batch_size, num_workers=num_workers, pin_memory=pin,
                        persistent_workers=False)
    for images, _ in loader:
        yield images


def extract(net: VisionTransformer, dataset: CheckedImageFolder, folder: Path, *, batch_size: int, num_workers: int,
            last_layers: int, device: torch.device, bf16: bool, flush_every: int = 64,
            describe: dict[str, Any] | None = None) -> CachedFeatures:
    """The features of every image of `dataset` in `folder`: reused when complete, continued where a previous run
    stopped, computed otherwise. Rows stay on the device and are written every `flush_every` batches (the only host
    syncs, and the points a killed run resumes from)."""
    if last_layers not in (1, 4) or last_layers > net.num_layers:
        raise UserInputError(f"features.last_layers={last_layers}; expected 1 or 4 (DINOv2's n_last_blocks), at most "
                             f"the encoder's {net.num_layers} blocks")
    if cached := open_cache(folder):
        log.info("features: reusing %s (%d rows)", folder, len(cached.labels))
        return cached
    columns = layout(net.embed_dim, last_layers)
    width = net.embed_dim * (last_layers + 1)
    total = len(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    done = _resume_point(folder, total, width)
    mode = "r+" if done else "w+"
    rows = np.memmap(folder / ROWS, dtype=np.float16, mode=mode, shape=(total, width))
    if not done:
        np.save(folder / LABELS, np.asarray(dataset.targets, dtype=np.int32))
        write_json_atomic(folder / META, dict(describe or {}, rows=total, width=width, columns=columns,
                                              classes=list(dataset.classes), complete=False))
    net.eval().to(device)
    pending: list[torch.Tensor] = []
    written = done
    bar = tqdm(total=total, initial=done, desc=f"features {folder.name}", unit="img")
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for images in _batches(dataset, done, batch_size, num_workers, device.type == "cuda"):
            pending.append(encode_rows(net, images.to(device, non_blocking=True), last_layers).half())
            bar.update(len(images))
            if len(pending) == flush_every:
                written = _flush(rows, pending, written, folder)
        written = _flush(rows, pending, written, folder)
    bar.close()
    meta = json.loads((folder / META).read_text())
    write_json_atomic(folder / META, dict(meta, complete=True))
    log.info("features: %d rows of %s in %s", written, "/".join(columns), folder)
    return CachedFeatures(folder, rows, np.load(folder / LABELS), columns, list(dataset.classes))


def _resume_point(folder: Path, total: int, width: int) -> int:
    """Rows already written by an interrupted run of the same key (0 for a fresh folder)."""
    progress = folder / PROGRESS
    if not progress.is_file() or not (folder / ROWS).is_file():
        return 0
    meta = json.loads((folder / META).read_text())
    if (meta["rows"], meta["width"]) != (total, width):
        return 0
    done = int(json.loads(progress.read_text())["rows"])
    log.info("features: continuing %s from row %d of %d", folder, done, total)
    return done


def _flush(rows: np.memmap, pending: list[torch.Tensor], start: int, folder: Path) -> int:
    """Write the pending rows after `start` and record how far the file is good; returns the new row count."""
    if not pending:
        return start
    block = torch.cat(pending).cpu().numpy()
    pending.clear()
    rows[start:start + len(block)] = block
    rows.flush()
    write_json_atomic(folder / PROGRESS, {"rows": start + len(block)})
    return start + len(block)
