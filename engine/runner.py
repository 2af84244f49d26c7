"""Building mmengine's Runner the same way for every task: effective-batch semantics, iteration-based cosine
schedule with warmup, epoch seeding, sync-free logging to the terminal and TensorBoard, and atomic checkpoints
that load with torch's safe `weights_only=True` (for resume too).
"""
from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from mmengine.dist import master_only
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.hooks import Hook
from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseModel
from mmengine.runner import Runner, find_latest_checkpoint

from .config import check_gpu, load_config
from .errors import UserInputError
from .hooks import (
    BroadcastBuffersHook,
    DeviceLogHook,
    MetricsFileHook,
    PlainCheckpointHook,
    ReseedHook,
    SkippedImagesHook,
)
from .loops import EpochStepLoop, StreamIterLoop
from .optim import DeviceOptimWrapper
from .safe_io import atomic_path, check_output_dir, full_or_read_only_under, remove_stale_temporaries
from .seeding import torch_seeds_workers
from .stream import StreamSampler

# mmengine keys a Runner's logger, visualizer and message hub by '<experiment name>_<time to the second>' and
# reuses an existing one: a second Runner started within the same second in this process would log into the
# first one's folder. Runners after the first get a run number in their name.
_RUNNERS_BUILT = itertools.count()


def distributed_launcher() -> str:
    """'pytorch' under torchrun (it sets LOCAL_RANK), else 'none' (one process)."""
    return "pytorch" if "LOCAL_RANK" in os.environ else "none"


def require_one_process(command: str) -> None:
    """Stop an evaluation command started under torchrun: it runs in one process, and every copy would evaluate the
    whole split on the same GPU and write the same files (the training commands evaluate on all their processes)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        raise UserInputError(f"`droppos-bench {command}` evaluates in one process, not under torchrun with "
                             f"{world_size} processes: start it as `droppos-bench {command} ...` (training runs "
                             "evaluate on every process)")


def peak_lr(base_lr: float, effective_batch: int) -> float:
    """The linear scaling rule every recipe states its lr in: base_lr x effective_batch / 256."""
    return base_lr * effective_batch / 256


def default_work_dir(cfg: Config) -> str:
    """`cfg.work_dir`, or work_dirs/<config name>."""
    return cfg.work_dir or str(Path("work_dirs") / cfg.config_name)


def default_eval_dir(cfg: Config) -> Path:
    """`cfg.work_dir`, or work_dirs/<config name>_eval: where an evaluation command writes metrics.json."""
    return Path(cfg.work_dir or Path("work_dirs") / f"{cfg.config_name}_eval")


def batch_plan(effective_batch: int, batch_size: int, world_size: int) -> int:
    """Gradient-accumulation steps so that batch_size * world_size * steps == effective_batch, exactly."""
    per_step = batch_size * world_size
    if effective_batch % per_step:
        raise UserInputError(f"effective_batch={effective_batch} is not a multiple of batch_size={batch_size} x "
                             f"{world_size} processes = {per_step}; change batch_size or the number of processes")
    return effective_batch // per_step


class TrainRunner(Runner):
    """mmengine's Runner with atomic checkpoint files and, under torchrun, one log file per process."""

    def build_logger(self, log_level: int | str = "INFO", log_file: str | None = None, **kwargs: Any) -> MMLogger:
        """Every rank logs to <timestamp>_<host>_device<d>_rank<r>.log: a hang or an error on rank 3 of 16 is in
        rank 3's file (mmengine keeps only rank 0's by default)."""
        return super().build_logger(log_level, log_file, distributed=True, **kwargs)

    def _maybe_compile(self, target: str) -> None:
        """Compile nothing: each task compiles its own network when its config says `compile=True`. mmengine reads
        the same key and would also compile the whole train_step, whose optimizer-wrapper counters change every
        step: on an H200 dynamo recompiled it each step until its recompile limit, then ran it uncompiled."""

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
        """Write to a temporary file and rename it, so an interrupted save never leaves a broken checkpoint."""
        with atomic_path(Path(out_dir) / filename) as tmp:
            super().save_checkpoint(str(tmp.parent), tmp.name, *args, **kwargs)


@dataclass
class TrainSpec:
    """What every task decides before building its Runner (the rest is shared); values come from its config.

    A run is epoch-based with warmup + cosine (`epochs`), or iteration-based with warmup, then steps
    (`lr_steps`, as detection recipes) or a polynomial decay to zero (`poly_power`, as segmentation recipes).
    Iterations, warmup, lr steps and the log, checkpoint and evaluation intervals count optimizer steps, whatever
    the gradient accumulation (so do the Runner's iterations: engine/loops.py).
    """

    work_dir: str
    epochs: int | None
    batch_size: int
    effective_batch: int
    warmup_epochs: float
    warmup_iters: int | None
    min_lr: float
    precision: str
    clip_grad: float | None
    num_workers: int
    log_interval: int
    checkpoint_interval: int
    max_keep_checkpoints: int
    seed: int
    resume: bool | str
    custom_hooks: list[Hook] = field(default_factory=list)
    iterations: int | None = None
    lr_steps: tuple[int, ...] = ()
    lr_step_factor: float = 0.1
    warmup_factor: float = 1e-6  # lr at the first warmup step, relative to the peak
    val_interval: int = 1
    poly_power: float | None = None
    clip_mode: str = "global"  # or "per_param" (the DropPos release)

    @property
    def by_epoch(self) -> bool:
        return self.iterations is None

    @classmethod
    def from_config(cls, cfg: Config, hooks: list[Hook] | None = None) -> TrainSpec:
        """The Runner settings every task's config holds under the same keys (see a shipped runtime config)."""
        schedule = cfg.schedule
        return cls(
            work_dir=default_work_dir(cfg), epochs=schedule.get("epochs"), batch_size=cfg.batch_size,
            effective_batch=cfg.effective_batch, warmup_epochs=schedule.get("warmup_epochs", 0),
            warmup_iters=schedule.warmup_iters, min_lr=schedule.get("min_lr", 0.0), precision=cfg.precision,
            clip_grad=cfg.optim.clip_grad, num_workers=cfg.data.num_workers, log_interval=cfg.log_interval,
            checkpoint_interval=cfg.checkpoint.interval, max_keep_checkpoints=cfg.checkpoint.max_keep,
            seed=cfg.seed, resume=cfg.resume, custom_hooks=list(hooks or []),
            iterations=schedule.get("iterations"), lr_steps=tuple(schedule.get("steps", ())),
            lr_step_factor=schedule.get("gamma", 0.1), warmup_factor=schedule.get("warmup_factor", 1e-6),
            val_interval=schedule.get("val_interval") or schedule.get("iterations") or 1,
            poly_power=schedule.get("poly_power"), clip_mode=cfg.optim.get("clip_mode", "global"),
        )


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int, accumulation: int = 1) -> int:
    """Optimizer steps per epoch: whole steps of `accumulation` whole batches per process (mmengine's
    DefaultSampler pads ranks to equal size)."""
    steps = math.ceil(num_samples / world_size) // batch_size // accumulation
    if steps == 0:
        raise UserInputError(f"the training set has {num_samples} images, fewer than one optimizer step of "
                             f"{batch_size} x {accumulation} accumulated batches per process ({world_size} "
                             "processes); lower effective_batch")
    return steps


class WholeStepsSampler(DefaultSampler):
    """mmengine's DefaultSampler cut to `per_epoch` samples of this process, whole optimizer steps: like drop_last
    for a partial batch, the images of a partial effective batch are left out of that epoch and never loaded
    (other ones each epoch: the order is reshuffled)."""

    def __init__(self, dataset: Sized, per_epoch: int, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.per_epoch = per_epoch

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.per_epoch)

    def __len__(self) -> int:
        return self.per_epoch


def lr_schedule(spec: TrainSpec, steps_per_epoch: int | None, peak_lr: float) -> list[dict]:
    """Linear warmup, then cosine (epoch-based runs) or steps or poly (iteration-based runs), per optimizer step.
    Warmup is given in epochs or in optimizer steps (`warmup_iters`). With cosine every parameter group ends at
    min_lr / peak_lr of its own peak, so layer-wise decay keeps its ratios (as MAE)."""
    total = spec.epochs * steps_per_epoch if spec.by_epoch else spec.iterations
    if spec.warmup_iters is not None:
        warmup = spec.warmup_iters
    else:
        warmup = round(spec.warmup_epochs * steps_per_epoch) if spec.by_epoch else 0
    if not 0 <= warmup < total:
        raise UserInputError(f"warmup of {warmup} steps must be shorter than the {total} training steps")
    schedule = []
    if warmup > 1:  # mmengine's ramp reaches the peak on its last iteration: a one-iteration warmup is that peak
        schedule.append(dict(type="LinearLR", start_factor=spec.warmup_factor, by_epoch=False, begin=0, end=warmup))
    if spec.by_epoch:
        schedule.append(dict(type="CosineAnnealingLR", T_max=total - warmup, eta_min_ratio=spec.min_lr / peak_lr,
                             by_epoch=False, begin=warmup, end=total))
    elif spec.lr_steps and spec.poly_power is not None:
        raise UserInputError("give either lr steps or poly_power, not both")
    elif spec.poly_power is not None:
        schedule.append(dict(type="PolyLR", power=spec.poly_power, eta_min=0.0, by_epoch=False, begin=warmup,
                             end=total))
    elif spec.lr_steps:
        steps = list(spec.lr_steps)
        if steps != sorted(steps) or not 0 < steps[0] or steps[-1] >= spec.iterations:
            raise UserInputError(f"lr steps {list(spec.lr_steps)} must increase and lie inside the "
                                 f"{spec.iterations} iterations")
        schedule.append(dict(type="MultiStepLR", milestones=list(spec.lr_steps), gamma=spec.lr_step_factor,
                             by_epoch=False, begin=0, end=total))
    return schedule


@dataclass
class Validation:
    """What a training run evaluates on: `dataset` with `metric` (one loader of `batch_size` images, default: the
    training batch size), keeping the checkpoint with the highest `best_metric`."""

    dataset: torch.utils.data.Dataset
    metric: BaseMetric
    best_metric: str
    batch_size: int | None = None


def build_train_runner(spec: TrainSpec, model: BaseModel, dataset: torch.utils.data.Dataset,
                       optimizer: torch.optim.Optimizer, experiment_name: str, cfg: Any = None,
                       launcher: str | None = None, validation: Validation | None = None,
                       collate_fn: Any = "default_collate") -> TrainRunner:
    """A Runner for `model` on `dataset` with `optimizer` (whose lr already is the peak lr), epoch- or
    iteration-based as `spec` says; `collate_fn` batches both loaders (a function or an mmengine name).

    With `validation` it evaluates after every epoch (every `spec.val_interval` optimizer steps and at the end of an
    iteration-based run), keeps the checkpoint with the highest best metric as best_<metric>_*.pth and writes
    work_dir/metrics.json.
    """
    launcher = launcher or distributed_launcher()
    prepare_work_dir(spec.work_dir)
    if run := next(_RUNNERS_BUILT):
        experiment_name = f"{experiment_name}_run{run}"
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    accumulation = batch_plan(spec.effective_batch, spec.batch_size, world_size)
    epoch_steps = steps_per_epoch(len(dataset), spec.batch_size, world_size, accumulation) if spec.by_epoch else None
    cuda = torch.cuda.is_available()
    cfg = copy.deepcopy(cfg) if cfg is not None else Config()
    if launcher == "pytorch" and not cuda:
        # mmengine's launcher always selects a CUDA device; on CPUs (gloo) start the group here, DDP without devices
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    loader = dict(batch_size=spec.batch_size, num_workers=spec.num_workers, pin_memory=cuda,
                  collate_fn=dict(type=collate_fn))
    runner = TrainRunner(
        model=model, work_dir=spec.work_dir, experiment_name=experiment_name,
        train_dataloader=dict(loader, dataset=dataset, persistent_workers=False, drop_last=True,
                              sampler=training_sampler(spec, epoch_steps, accumulation),
                              worker_init_fn=dict(type=torch_seeds_workers)),
        train_cfg=training_loop(spec, accumulation),
        optim_wrapper=DeviceOptimWrapper(optimizer, precision=spec.precision, max_norm=spec.clip_grad,
                                         accumulative_counts=accumulation, clip_mode=spec.clip_mode),
        param_scheduler=lr_schedule(spec, epoch_steps, optimizer.defaults["lr"]),
        default_hooks=dict(
            logger=dict(type="LoggerHook", interval=spec.log_interval, ignore_last=False),
            checkpoint=dict(type="CheckpointHook", interval=spec.checkpoint_interval, by_epoch=spec.by_epoch,
                            max_keep_ckpts=spec.max_keep_checkpoints, save_last=True,
                            save_best=validation.best_metric if validation else None,
                            rule="greater" if validation else None),
        ),
        custom_hooks=runner_hooks(spec, dataset, validation), **validation_settings(validation, loader),
        launcher=launcher, resume=bool(spec.resume), load_from=spec.resume if isinstance(spec.resume, str) else None,
        randomness=dict(seed=spec.seed),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl" if cuda else "gloo")),
        log_processor=dict(by_epoch=spec.by_epoch, window_size=spec.log_interval,
                           mean_pattern=r".*(time|data_time).*"),
        visualizer=dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend"),
                                                         dict(type="TensorboardVisBackend")]),
        cfg=cfg,
    )
    if spec.resume is True and find_latest_checkpoint(spec.work_dir) is None:
        # mmengine then logs 'Auto resumed from the latest checkpoint None.' and starts afresh
        runner.logger.warning(f"resume=True, but {spec.work_dir} holds no checkpoint to resume (no last_checkpoint "
                              "file): the run starts from the beginning")
    return runner


def prepare_work_dir(work_dir: str) -> None:
    """Stop an unwritable work_dir before mmengine creates its folders and anything trains, and delete the temporary
    files of checkpoint writes that a kill interrupted (each can be a whole checkpoint)."""
    check_output_dir(work_dir)
    if int(os.environ.get("RANK", 0)) == 0:  # the checkpoint writer; pids of other hosts mean nothing here
        for stale in remove_stale_temporaries(work_dir):
            print_log(f"removed {stale}: the temporary file of a write that did not finish", logger="current")


def training_sampler(spec: TrainSpec, epoch_steps: int | None, accumulation: int) -> dict:
    """Whole optimizer steps of a reshuffled pass per epoch, or the endless position-indexed sample stream."""
    if spec.by_epoch:
        return dict(type=WholeStepsSampler, per_epoch=epoch_steps * accumulation * spec.batch_size, shuffle=True)
    return dict(type=StreamSampler)


def training_loop(spec: TrainSpec, accumulation: int) -> dict:
    """The loop whose iteration is one optimizer step of `accumulation` batches (engine/loops.py)."""
    if spec.by_epoch:
        return dict(type=EpochStepLoop, max_epochs=spec.epochs, val_interval=spec.val_interval,
                    accumulation=accumulation)
    return dict(type=StreamIterLoop, max_iters=spec.iterations, val_interval=spec.val_interval,
                accumulation=accumulation, seed=spec.seed)


def validation_settings(validation: Validation | None, loader: dict) -> dict:
    """The Runner's evaluation arguments (none without `validation`); its loader is configured like `loader`."""
    if validation is None:
        return {}
    # no padding to equal rank sizes: metrics that sum counts would count the padded images twice
    val_loader = dict(loader, dataset=validation.dataset, batch_size=validation.batch_size or loader["batch_size"],
                      sampler=dict(type="DefaultSampler", shuffle=False, round_up=False))
    return dict(val_dataloader=val_loader, val_cfg=dict(type="ValLoop"), val_evaluator=Evaluator(validation.metric))


def runner_hooks(spec: TrainSpec, dataset: torch.utils.data.Dataset, validation: Validation | None) -> list[Hook]:
    """Ours, beside mmengine's defaults: device-side logging, safe checkpoints, the task's own hooks, per-epoch
    reseeding, the count of skipped images, and with validation, buffers in step and metrics.json."""
    hooks = [DeviceLogHook(spec.log_interval), PlainCheckpointHook(), *spec.custom_hooks]
    if spec.by_epoch:
        hooks.append(ReseedHook(spec.seed))
    if hasattr(dataset, "skipped"):
        hooks.append(SkippedImagesHook(dataset, None if spec.by_epoch else spec.log_interval))
    if validation is not None:
        hooks.append(BroadcastBuffersHook())
        hooks.append(MetricsFileHook(Path(spec.work_dir) / "metrics.json", validation.best_metric, spec.by_epoch))
    return hooks


def trained_runner(build_runner: Callable[[Config], Runner], configs_dir: Path, config: str | Path,
                   overrides: dict[str, Any] | None = None) -> Runner:
    """Read `config` (a file, or a name shipped in `configs_dir`) with `key=value` overrides, check it against the
    machine, build its Runner with `build_runner` and train it; every training command starts here."""
    cfg = load_config(config, overrides, configs_dir=configs_dir)
    check_gpu(cfg)
    runner = build_runner(cfg)
    with full_or_read_only_under(Path(runner.work_dir)):
        runner.train()
    return runner


def train_from_config(build_runner: Callable[[Config], Runner], configs_dir: Path, config: str | Path,
                      overrides: dict[str, Any] | None = None) -> Path:
    """`trained_runner`, for the commands whose result is work_dir/metrics.json (its path is returned)."""
    return Path(trained_runner(build_runner, configs_dir, config, overrides).work_dir) / "metrics.json"
