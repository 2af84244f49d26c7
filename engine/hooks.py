"""The Runner hooks of every task: reseeding per epoch (exact resume), device metrics read once per log
step, checkpoints loadable with weights_only=True and carrying how to rebuild the model, buffers in step before
evaluation, metrics.json after each evaluation, and a count of skipped unreadable images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.dist import all_reduce, broadcast, get_rank, is_distributed, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from .model import unwrap_model
from .safe_io import write_json_atomic
from .seeding import mixed_seed, reseed_globally


class ReseedHook(Hook):
    """Reseed torch, numpy and random from (seed, epoch, rank) at every epoch start of an epoch-based run
    (iteration-based runs reseed before every batch: engine/loops.py's StreamIterLoop).

    Masks, augmentations, data-loader worker seeds and the model's own sampling then depend only on the epoch, so
    a resumed run repeats exactly what the uninterrupted run did (mmengine itself reseeds from the run seed on
    resume, which would replay the first epoch's random stream).
    """

    priority = "VERY_HIGH"

    def __init__(self, seed: int):
        self.seed = seed

    def before_train_epoch(self, runner) -> None:
        reseed_globally(mixed_seed(self.seed, runner.epoch, get_rank()))


class DeviceLogHook(Hook):
    """At each log step, move the model's running means (and the mean gradient norm) into the message hub.

    The model keeps its per-batch losses and metrics on the device (`model.running_means`); this hook averages
    them over the processes and reads them with a single host sync on exactly the steps the LoggerHook writes
    (it runs just before it).
    """

    priority = "NORMAL"

    def __init__(self, interval: int):
        self.interval = interval

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not (self.every_n_inner_iters(batch_idx, self.interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            return
        values = unwrap_model(runner.model).running_means.pop()
        grad_norm = runner.optim_wrapper.pop_grad_norm()
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        if values:
            numbers = torch.stack(list(values.values()))
            all_reduce(numbers, op="mean")  # the whole batch's means, the same at any number of processes
            numbers = numbers.tolist()
            for key, number in zip(values, numbers, strict=True):
                runner.message_hub.update_scalar(f"train/{key}", number)


def _plain(value):
    """numpy scalars and arrays as Python numbers and lists, recursively through dicts and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value


class PlainCheckpointHook(Hook):
    """Keep checkpoints loadable with torch's `weights_only=True` and no allow-list.

    mmengine stores its log history as HistoryBuffer objects of numpy arrays, which the safe loader refuses;
    they are saved here as plain lists and rebuilt on load, before the Runner restores its message hub.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        hub = checkpoint["message_hub"]
        hub["log_scalars"] = {key: dict(history=buffer.data[0].tolist(), counts=buffer.data[1].tolist(),
                                        max_length=buffer.max_length)
                              for key, buffer in hub["log_scalars"].items()}
        hub["runtime_info"] = _plain(hub["runtime_info"])
        checkpoint["meta"] = _plain(checkpoint["meta"])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        hub = checkpoint.get("message_hub")
        if hub is not None:
            hub["log_scalars"] = {key: HistoryBuffer(value["history"], value["counts"], value["max_length"])
                                  if isinstance(value, dict) else value
                                  for key, value in hub["log_scalars"].items()}


class BroadcastBuffersHook(Hook):
    """Before every evaluation, hands rank 0's buffers (BatchNorm statistics) to every process. DDP does not keep
    them in step (mmengine turns broadcast_buffers off, and SyncBN does not run on CPUs) and checkpoints hold rank
    0's, so a distributed evaluation then equals a single-process evaluation of the saved checkpoint."""

    def before_val_epoch(self, runner) -> None:
        if is_distributed():
            for buffer in unwrap_model(runner.model).buffers():
                broadcast(buffer, src=0)


class ModelMetaHook(Hook):
    """Records where the network sits in the Runner model (`prefix`) and how to build it (`model_cfg`) in every
    checkpoint's meta, so `read_checkpoint`, `load_model` and `load_droppos` read run checkpoints unaided."""

    def __init__(self, prefix: str, model_cfg: dict):
        self.prefix, self.model_cfg = prefix, model_cfg

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["meta"]["droppos_bench"] = dict(model_prefix=self.prefix, model=self.model_cfg)


class MetricsFileHook(Hook):
    """After every evaluation, write its metrics and the best evaluation so far (by `best_metric`) to `path`, one
    row per epoch (or per evaluated optimizer step in an iteration-based run, `by_epoch=False`).

    Rows of earlier epochs already in the file are kept, so a resumed run still reports the best of all epochs.
    """

    priority = "LOW"

    def __init__(self, path: Path, best_metric: str, by_epoch: bool = True):
        self.path, self.best_metric = path, best_metric
        self.step_key = "epoch" if by_epoch else "iteration"

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        if not metrics or not is_main_process():
            return
        step = runner.epoch if self.step_key == "epoch" else runner.iter
        earlier = json.loads(self.path.read_text())["history"] if self.path.is_file() else []
        history = [row for row in earlier if row[self.step_key] < step] + [{self.step_key: step, **metrics}]
        best = max(history, key=lambda row: row[self.best_metric])
        write_json_atomic(self.path, dict(last=history[-1], best=best, history=history))


class SkippedImagesHook(Hook):
    """Logs after every epoch (and every `every_iters` optimizer steps, for iteration-based runs) how many invalid
    items (unreadable or missing images, invalid annotations) the training set (`dataset.skipped`, a shared counter)
    has skipped so far; silent while there are none."""

    def __init__(self, dataset: Any, every_iters: int | None = None):
        self.dataset, self.every_iters = dataset, every_iters

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_iters and self.every_n_train_iters(runner, self.every_iters):
            self.after_train_epoch(runner)

    def after_train_epoch(self, runner) -> None:
        skipped = self.dataset.skipped.value
        if skipped:
            runner.logger.warning(f"{skipped} invalid items (images or annotations) skipped so far (names in the log "
                                  "above)")
